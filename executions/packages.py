"""installPackages: validated names, installs behind the egress proxy, a per-tenant cache.

An install never happens in the sandbox that runs the code (that one has no
network). A separate, equally hardened installer container on the internal
egress network runs the runtime's installer as the code user, reaching only the
registries the allow-list proxy lets through; its result (the files the
installer wrote under /sandbox) is packed into a tarball, cached per tenant and
package set, and unpacked into the run's sandbox before the code starts.

``prebuiltImages`` (isol8's config) bake package sets into images at build time;
a request whose packages they cover runs in such an image and installs nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from executions import sandbox
from executions.runtimes import BASE_ENV
from executions.sandbox import SandboxError
from executions.spec import Limits
from isol8_site.config import PrebuiltImage
from isol8_site.errors import ApiError, validation_error

PYTHON_NAME = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?"
    r"((==|!=|<=|>=|~=|<|>)[A-Za-z0-9.*+!_-]+(,(==|!=|<=|>=|~=|<|>)[A-Za-z0-9.*+!_-]+)*)?$"
)
NPM_NAME = re.compile(r"^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*(@[A-Za-z0-9.^~<>=*+_-]+)?$")
DENO_NAME = re.compile(r"^(npm:|jsr:)(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*(@[A-Za-z0-9.^~<>=*+_-]+)?$")
NAME_RULES = {"python": PYTHON_NAME, "node": NPM_NAME, "bun": NPM_NAME, "deno": DENO_NAME}
MAX_NAME = 200


@dataclass(frozen=True)
class Installer:
    """How one runtime installs packages into /sandbox, and what it leaves there."""

    argv: Callable[[list[str]], list[str]]
    env: dict[str, str]
    keeps: tuple[str, ...]  # paths under /sandbox that hold the installed packages


CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
INSTALLERS = {
    "python": Installer(
        argv=lambda pkgs: [
            "python3", "-m", "pip", "install", "--user", "--no-cache-dir", "--disable-pip-version-check",
            "--no-warn-script-location", "--break-system-packages", "--progress-bar", "off", *pkgs,
        ],
        env={"PIP_DEFAULT_TIMEOUT": "30"},
        keeps=(".local",),
    ),
    "node": Installer(
        argv=lambda pkgs: ["npm", "install", "--no-audit", "--no-fund", "--prefix", "/sandbox", *pkgs],
        env={"NPM_CONFIG_CACHE": "/tmp/.npm", "NODE_EXTRA_CA_CERTS": CA_BUNDLE, "NPM_CONFIG_UPDATE_NOTIFIER": "false"},
        keeps=("node_modules", "package.json", "package-lock.json"),
    ),
    "bun": Installer(
        argv=lambda pkgs: ["bun", "add", "--cwd", "/sandbox", *pkgs],
        env={"BUN_INSTALL_CACHE_DIR": "/tmp/.bun-cache", "NODE_EXTRA_CA_CERTS": CA_BUNDLE},
        keeps=("node_modules", "package.json", "bun.lockb", "bun.lock"),
    ),
    "deno": Installer(
        argv=lambda pkgs: ["deno", "cache", "--allow-scripts", *pkgs],
        env={"DENO_TLS_CA_STORE": "system,mozilla", "DENO_NO_UPDATE_CHECK": "1"},
        keeps=(".deno",),
    ),
}


def validate_packages(*, runtime: str, packages: list[str]) -> list[str]:
    """Check names before anything runs: 400 naming the first bad one."""
    if not packages:
        return []
    rule = NAME_RULES.get(runtime)
    if rule is None:
        raise validation_error(f"request.installPackages: not supported for the {runtime} runtime")
    if len(packages) > settings.ISOL8_MAX_PACKAGES:
        raise validation_error(f"request.installPackages: at most {settings.ISOL8_MAX_PACKAGES} packages")
    for name in packages:
        if len(name) > MAX_NAME or not rule.match(name):
            raise validation_error(f"request.installPackages: {name!r} is not a valid {runtime} package name")
    return sorted(set(packages))


def check_allowed(*, allowed: bool, packages: list[str]) -> None:
    if packages and not allowed:
        raise ApiError(403, "policy_denied", "installPackages is not allowed for this tenant")


# ---------------------------------------------------------------- prebuilt


def covering_image(*, runtime: str, packages: list[str]) -> PrebuiltImage | None:
    """A prebuilt image whose packages include all of these, if any (none without packages)."""
    if not packages:
        return None
    wanted = {p.lower() for p in packages}
    for image in settings.ISOL8_CONFIG.prebuilt_images:
        if image.runtime == runtime and wanted <= {p.lower() for p in image.packages}:
            return image
    return None


# ------------------------------------------------------------------ install


class InstallError(Exception):
    """The installer failed: the message is isol8's "Package install failed (...)"."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def set_key(*, runtime: str, packages: list[str]) -> str:
    digest = hashlib.sha256(json.dumps([runtime, sandbox.image_hash(runtime), packages]).encode())
    return digest.hexdigest()[:24]


def install_limits() -> Limits:
    """Installers get room to work (pip and npm are hungry); they never run user code."""
    return Limits(
        timeout_ms=settings.ISOL8_INSTALL_TIMEOUT_MS,
        memory=1024**3,
        cpu=1.0,
        pids=256,
        max_output=256 * 1024,
        sandbox_size=512 * 1024**2,
        tmp_size=256 * 1024**2,
    )


def package_archive(
    *, tenant: str, runtime: str, packages: list[str], on_output: Callable[[str, str], None] | None = None
) -> tuple[bytes, bool]:
    """The tarball of ``packages`` for ``tenant``: (archive, True when it came from the cache).

    The first request for a set installs it (concurrent ones for the same set
    wait for that install rather than repeating it).
    """
    key = set_key(runtime=runtime, packages=packages)
    path = Path(settings.ISOL8_PACKAGE_CACHE) / tenant / f"{key}.tar.gz"
    if path.exists():
        return path.read_bytes(), True
    with _lock(f"{tenant}/{key}"):
        if path.exists():
            return path.read_bytes(), True
        archive = _install(tenant=tenant, runtime=runtime, packages=packages, on_output=on_output)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(archive)
        partial.rename(path)
        return archive, False


def _install(
    *, tenant: str, runtime: str, packages: list[str], on_output: Callable[[str, str], None] | None
) -> bytes:
    from executions.runner import OutputCollector  # the runner imports this module

    installer = INSTALLERS[runtime]
    sandbox.ensure_egress()
    limits = install_limits()
    box = sandbox.create_sandbox(
        runtime=runtime,
        limits=limits,
        labels={sandbox.LABEL_TENANT: tenant, sandbox.LABEL_ROLE: "installer"},
        egress=True,
    )
    proxy = sandbox.egress_proxy_url()
    env = {
        **BASE_ENV,
        **installer.env,
        "HTTPS_PROXY": proxy, "https_proxy": proxy, "HTTP_PROXY": proxy, "http_proxy": proxy,
        "NO_PROXY": "", "no_proxy": "",
    }
    collector = OutputCollector(
        secrets=[],
        history_max=limits.max_output,
        publish=(lambda name, text, phase: on_output(name, text)) if on_output else None,
    )
    try:
        outcome: dict[str, object] = {}
        request = {
            "op": "run",
            "argv": installer.argv(packages),
            "env": env,
            "cwd": "/sandbox",
            "timeoutMs": limits.timeout_ms,
            "maxOutput": limits.max_output,
            "killLeftovers": True,
        }
        for frame in box.call(request, limits.timeout_ms / 1000 + 30):
            if frame.kind in ("o", "e"):
                collector.feed(frame.kind, frame.payload)
            elif frame.kind == "x":
                outcome = frame.json()
        collector.finish()
        code = int(str(outcome.get("exitCode", 1)))
        if outcome.get("timedOut"):
            raise InstallError("Package install failed (timed out)", 137)
        if code != 0 or "error" in outcome:
            detail = collector.text("e").strip() or str(outcome.get("error", ""))
            raise InstallError(f"Package install failed (exit code {code}): {detail}", code)
        reply = box.request({"op": "get_tar", "paths": list(installer.keeps)}, timeout=120)
        if not reply.get("ok"):
            raise InstallError(f"Package install failed: {reply.get('error')}", 1)
        return base64.b64decode(str(reply["content"]))
    except SandboxError as exc:
        raise InstallError(f"Package install failed: {exc}", 1) from exc
    finally:
        box.destroy()


def build_prebuilt_images(log: Callable[[str], None]) -> None:
    """Build the config's prebuiltImages that are missing or out of date."""
    for image in settings.ISOL8_CONFIG.prebuilt_images:
        names = validate_packages(runtime=image.runtime, packages=list(image.packages))
        sandbox.build_prebuilt(tag=image.tag, runtime=image.runtime, packages=names, log=log)
