"""SandboxConfig: everything the engine needs to know, given to it once by its host application.

The engine is a plain library (no Django): ``isol8_site/settings.py`` builds a
SandboxConfig from the environment, and whoever drives the engine (the worker,
its management commands, the tests) calls ``configure()`` with it before the
first container is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sandbox.spec import Limits


@dataclass(frozen=True)
class PrebuiltImage:
    """isol8's prebuiltImages entry: a runtime with packages baked in at build time."""

    tag: str
    runtime: str
    packages: tuple[str, ...]
    setup_script: str = ""


@dataclass(frozen=True)
class SandboxConfig:
    host: str  # the worker host: every container's `isol8.host` label
    mode: str  # "launcher" (in-container launcher) or "exec" (docker exec per run)
    runtimes: tuple[str, ...]  # the runtimes served
    default_limits: Limits
    images_dir: Path
    base_image: str
    image_prefix: str
    debian_mirror: str
    extra_ca_dir: Path
    python_fork_server: bool = True
    inodes: int = 16384
    nofile: int = 1024
    fsize: int = 128 * 1024 * 1024
    shm_size: int = 16 * 1024 * 1024
    msgqueue: int = 256 * 1024
    uid_base: int = 2_000_000
    uid_count: int = 65_536
    file_max_bytes: int = 10 * 1024 * 1024  # one file a run returns or the file API moves
    output_files_max: int = 10 * 1024 * 1024  # all of a run's outputPaths together
    display_max_bytes: int = 16 * 1024 * 1024  # a stateful cell's displays together (images, HTML)
    science_image: bool = True  # build python-science (numpy, pandas, matplotlib) for stateful python
    pool_size: int = 2  # warm containers per runtime
    idle_per_tenant: int = 4  # reset containers kept per tenant and key
    idle_seconds: float = 60.0
    package_cache: Path = Path("var/packages")
    install_timeout_ms: int = 300_000
    egress_allow: tuple[str, ...] = ()
    # network "filtered": a directory per sandbox holding its egress gateway socket
    # (bind-mounted into it; the Docker engine must see the same path).
    egress_dir: Path = Path("var/egress")
    # Networks the gateway may reach although they are private (an internal mirror).
    egress_permit_networks: tuple[str, ...] = ()
    prebuilt_images: tuple[PrebuiltImage, ...] = field(default=())


_current: SandboxConfig | None = None


class NotConfiguredError(RuntimeError):
    pass


def configure(config: SandboxConfig) -> None:
    """Give the engine its configuration (once per process; a later call replaces it)."""
    global _current
    _current = config


def current() -> SandboxConfig:
    if _current is None:
        raise NotConfiguredError("sandbox.configure() was not called in this process")
    return _current
