"""The isol8 server config file (``isol8.config.json``), in isol8's own format.

It is read once, when settings load, from ``--config`` (``manage.py serve`` puts
it in ``ISOL8_CONFIG``), ``ISOL8_CONFIG`` or ``./isol8.config.json``. A missing
file means the defaults below; an unknown key or a bad value stops startup with a
message naming the key, because a typo that is silently ignored would run the
service with limits nobody chose.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.config import PrebuiltImage
from sandbox.runtimes import PREBUILT_RUNTIMES
from sandbox.spec import NETWORK_MODES

SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)b?$", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# No container size anywhere is near this; above it a number is a mistake (or an attack).
MAX_SIZE = 2**50


class ConfigError(ValueError):
    """The config file is unusable; the message names the offending key."""


def shown(value: object, limit: int = 40) -> str:
    """A client's value quoted in an error message, as JSON (never a Python repr), cut to ``limit``."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:
        text = json.dumps(str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_size(value: object, *, name: str) -> int:
    """Parse a Docker-style size ("512m", "1g", "65536") into bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a size like \"512m\", got {shown(value)}")
    if isinstance(value, int):
        if not 0 < value <= MAX_SIZE:
            raise ConfigError(f"{name}: must be between 1 and {MAX_SIZE} bytes, got {shown(value)}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a size like \"512m\", got {shown(value)}")
    match = SIZE_RE.match(value) if len(value) <= 40 else None
    if not match:
        raise ConfigError(f"{name}: expected a size like \"512m\", got {shown(value)}")
    number = float(match.group(1)) * SIZE_UNITS[match.group(2).lower()]
    if not 1 <= number <= MAX_SIZE:
        raise ConfigError(f"{name}: must be between 1 and {MAX_SIZE} bytes, got {shown(value)}")
    return int(number)


@dataclass(frozen=True)
class Defaults:
    timeout_ms: int = 30_000
    memory_limit: int = 512 * 1024**2
    cpu_limit: float = 1.0
    pids_limit: int = 64
    network: str = "none"
    sandbox_size: int = 128 * 1024**2
    tmp_size: int = 64 * 1024**2
    max_output_size: int = 1024**2


@dataclass(frozen=True)
class Cleanup:
    auto_prune: bool = True
    max_container_age_ms: int = 3_600_000


@dataclass(frozen=True)
class ServerConfig:
    max_concurrent: int = 10
    pool_size: int = 2
    defaults: Defaults = field(default_factory=Defaults)
    cleanup: Cleanup = field(default_factory=Cleanup)
    prebuilt_images: tuple[PrebuiltImage, ...] = ()
    source: str = "(built-in defaults)"


def _int(obj: dict[str, Any], key: str, name: str, *, minimum: int, maximum: int) -> int | None:
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {shown(value)}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}: must be between {minimum} and {maximum}, got {value}")
    return value


def _check_keys(obj: object, allowed: set[str], name: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ConfigError(f"{name}: expected an object")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        prefix = f"{name}." if name != "config" else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (allowed: {', '.join(sorted(allowed))})")
    return obj


def parse_config(raw: object, *, source: str) -> ServerConfig:
    """Validate an already-decoded config object."""
    top = _check_keys(
        raw, {"$schema", "maxConcurrent", "defaults", "cleanup", "poolSize", "port", "prebuiltImages"}, "config"
    )
    max_concurrent = _int(top, "maxConcurrent", "maxConcurrent", minimum=1, maximum=10_000)
    pool_size = _int(top, "poolSize", "poolSize", minimum=0, maximum=100)

    d = _check_keys(
        top.get("defaults", {}),
        {"timeoutMs", "memoryLimit", "cpuLimit", "pidsLimit", "network", "sandboxSize", "tmpSize",
         "maxOutputSize"},
        "defaults",
    )
    base = Defaults()
    timeout = _int(d, "timeoutMs", "defaults.timeoutMs", minimum=1, maximum=24 * 3_600_000)
    pids = _int(d, "pidsLimit", "defaults.pidsLimit", minimum=8, maximum=65_536)
    max_output = _int(d, "maxOutputSize", "defaults.maxOutputSize", minimum=1, maximum=1024**3)
    cpu: float | None = None
    if "cpuLimit" in d:
        value = d["cpuLimit"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.01 <= value <= 64:
            raise ConfigError(f"defaults.cpuLimit: expected a number between 0.01 and 64, got {shown(value)}")
        cpu = float(value)
    network = d.get("network", base.network)
    if network not in NETWORK_MODES:
        raise ConfigError(f"defaults.network: expected one of {', '.join(NETWORK_MODES)}, got {shown(network)}")
    defaults = Defaults(
        timeout_ms=timeout or base.timeout_ms,
        memory_limit=parse_size(d["memoryLimit"], name="defaults.memoryLimit")
        if "memoryLimit" in d
        else base.memory_limit,
        cpu_limit=cpu or base.cpu_limit,
        pids_limit=pids or base.pids_limit,
        network=network,
        sandbox_size=parse_size(d["sandboxSize"], name="defaults.sandboxSize")
        if "sandboxSize" in d
        else base.sandbox_size,
        tmp_size=parse_size(d["tmpSize"], name="defaults.tmpSize") if "tmpSize" in d else base.tmp_size,
        max_output_size=max_output or base.max_output_size,
    )
    if defaults.sandbox_size + defaults.tmp_size >= defaults.memory_limit:
        raise ConfigError(
            "defaults.memoryLimit: must exceed sandboxSize + tmpSize, because tmpfs pages count "
            "against the container's memory"
        )

    c = _check_keys(top.get("cleanup", {}), {"autoPrune", "maxContainerAgeMs"}, "cleanup")
    auto_prune = c.get("autoPrune", True)
    if not isinstance(auto_prune, bool):
        raise ConfigError(f"cleanup.autoPrune: expected true or false, got {shown(auto_prune)}")
    age = _int(c, "maxContainerAgeMs", "cleanup.maxContainerAgeMs", minimum=1000, maximum=30 * 86_400_000)
    cleanup = Cleanup(auto_prune=auto_prune, max_container_age_ms=age or Cleanup.max_container_age_ms)

    return ServerConfig(
        max_concurrent=max_concurrent or ServerConfig.max_concurrent,
        pool_size=ServerConfig.pool_size if pool_size is None else pool_size,
        defaults=defaults,
        cleanup=cleanup,
        prebuilt_images=_prebuilt(top.get("prebuiltImages", [])),
        source=source,
    )


TAG_RE = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$")


def _prebuilt(raw: object) -> tuple[PrebuiltImage, ...]:
    if not isinstance(raw, list):
        raise ConfigError("prebuiltImages: expected a list")
    images = []
    for index, item in enumerate(raw):
        name = f"prebuiltImages[{index}]"
        entry = _check_keys(item, {"tag", "runtime", "installPackages", "setupScript"}, name)
        tag = entry.get("tag")
        if not isinstance(tag, str) or not TAG_RE.match(tag):
            raise ConfigError(f"{name}.tag: expected an image tag like \"isol8-py-data:1\", got {tag!r}")
        runtime = entry.get("runtime")
        if runtime not in PREBUILT_RUNTIMES:
            raise ConfigError(f"{name}.runtime: expected one of {', '.join(PREBUILT_RUNTIMES)}, got {runtime!r}")
        packages = entry.get("installPackages", [])
        if not isinstance(packages, list) or not all(isinstance(p, str) and p for p in packages):
            raise ConfigError(f"{name}.installPackages: expected a list of package names")
        setup = entry.get("setupScript", "")
        if not isinstance(setup, str):
            raise ConfigError(f"{name}.setupScript: expected a string")
        images.append(PrebuiltImage(tag=tag, runtime=runtime, packages=tuple(packages), setup_script=setup))
    return tuple(images)


def load_config(path: str | None = None) -> ServerConfig:
    """Find and load the config file; raise ConfigError naming what is wrong."""
    explicit = path or os.environ.get("ISOL8_CONFIG")
    candidate = Path(explicit) if explicit else Path.cwd() / "isol8.config.json"
    if not candidate.exists():
        if explicit:
            raise ConfigError(f"config file not found: {candidate}")
        return ServerConfig()
    try:
        raw = json.loads(candidate.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{candidate}: not valid JSON ({exc})") from exc
    try:
        return parse_config(raw, source=str(candidate))
    except ConfigError as exc:
        raise ConfigError(f"{candidate}: {exc}") from exc
