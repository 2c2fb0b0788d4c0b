"""The runtimes, in one list: file name, command, environment, package installer, prebuilt support.

Everything that names runtimes (validation, tenants' defaults, the config
file's prebuiltImages, image builds, installs) reads them from here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

SANDBOX = "/sandbox"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Environment every program gets (isol8's buildEnv), before secrets and `env`.
BASE_ENV = {
    "PYTHONUNBUFFERED": "1",
    "PYTHONUSERBASE": "/sandbox/.local",
    "NPM_CONFIG_PREFIX": "/sandbox/.npm-global",
    "DENO_DIR": "/sandbox/.deno",
    "PATH": "/sandbox/.local/bin:/sandbox/.npm-global/bin:/sandbox/.bun-global/bin:"
    "/usr/local/bin:/usr/bin:/bin",
    "NODE_PATH": "/usr/local/lib/node_modules:/sandbox/.npm-global/lib/node_modules:"
    "/sandbox/node_modules",
    "HOME": "/sandbox",
    "USER": "sandbox",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
}
SETUP_ENV = {
    "PATH": "/sandbox/.local/bin:/sandbox/.npm-global/bin:/sandbox/.bun-global/bin:"
    "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
    "HOME": "/sandbox",
    "LANG": "C.UTF-8",
}

PYTHON_PACKAGE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?"
    r"((==|!=|<=|>=|~=|<|>)[A-Za-z0-9.*+!_-]+(,(==|!=|<=|>=|~=|<|>)[A-Za-z0-9.*+!_-]+)*)?$"
)
NPM_PACKAGE = re.compile(r"^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*(@[A-Za-z0-9.^~<>=*+_-]+)?$")
DENO_PACKAGE = re.compile(r"^(npm:|jsr:)(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*(@[A-Za-z0-9.^~<>=*+_-]+)?$")


@dataclass(frozen=True)
class Installer:
    """How one runtime installs packages into /sandbox, and what it leaves there."""

    name_pattern: re.Pattern[str]  # what a package name (with its version spec) may look like
    argv: Callable[[list[str]], list[str]]
    env: dict[str, str]
    keeps: tuple[str, ...]  # paths under /sandbox that hold the installed packages


@dataclass(frozen=True)
class Runtime:
    name: str
    extension: str
    command: tuple[str, ...]  # the program file's path is appended
    env: tuple[tuple[str, str], ...] = ()  # added to BASE_ENV for this runtime
    installer: Installer | None = None  # installPackages, when the runtime has them
    # prebuiltImages: the build-time install command (as root, into the image), if supported.
    prebuilt_install: tuple[str, ...] = field(default=())

    def argv(self, path: str) -> list[str]:
        return [*self.command, path]


RUNTIMES: dict[str, Runtime] = {
    rt.name: rt
    for rt in (
        Runtime(
            "python", ".py", ("python3",),
            installer=Installer(
                name_pattern=PYTHON_PACKAGE,
                argv=lambda pkgs: [
                    "python3", "-m", "pip", "install", "--user", "--no-cache-dir", "--disable-pip-version-check",
                    "--no-warn-script-location", "--break-system-packages", "--progress-bar", "off", *pkgs,
                ],
                env={"PIP_DEFAULT_TIMEOUT": "30"},
                keeps=(".local",),
            ),
            prebuilt_install=("python3", "-m", "pip", "install", "--no-cache-dir", "--break-system-packages",
                              "--disable-pip-version-check"),
        ),
        Runtime(
            "node", ".mjs", ("node",),
            installer=Installer(
                name_pattern=NPM_PACKAGE,
                argv=lambda pkgs: ["npm", "install", "--no-audit", "--no-fund", "--prefix", "/sandbox", *pkgs],
                env={"NPM_CONFIG_CACHE": "/tmp/.npm", "NODE_EXTRA_CA_CERTS": CA_BUNDLE,
                     "NPM_CONFIG_UPDATE_NOTIFIER": "false"},
                keeps=("node_modules", "package.json", "package-lock.json"),
            ),
            prebuilt_install=("npm", "install", "--global", "--no-audit", "--no-fund"),
        ),
        Runtime("bash", ".sh", ("bash",)),
        Runtime(
            "bun", ".ts", ("bun", "run"),
            installer=Installer(
                name_pattern=NPM_PACKAGE,
                argv=lambda pkgs: ["bun", "add", "--cwd", "/sandbox", *pkgs],
                env={"BUN_INSTALL_CACHE_DIR": "/tmp/.bun-cache", "NODE_EXTRA_CA_CERTS": CA_BUNDLE},
                keeps=("node_modules", "package.json", "bun.lockb", "bun.lock"),
            ),
        ),
        Runtime(
            "deno",
            ".mts",
            (
                "deno", "run", "--allow-read=/sandbox,/tmp", "--allow-write=/sandbox,/tmp",
                "--allow-env", "--allow-net",
            ),
            # Deno colours its stderr even into a pipe; results are text, not a terminal.
            env=(("NO_COLOR", "1"),),
            installer=Installer(
                name_pattern=DENO_PACKAGE,
                argv=lambda pkgs: ["deno", "cache", "--allow-scripts", *pkgs],
                env={"DENO_TLS_CA_STORE": "system,mozilla", "DENO_NO_UPDATE_CHECK": "1"},
                keeps=(".deno",),
            ),
        ),
    )
}
RUNTIME_NAMES = tuple(RUNTIMES)

# network "filtered": TLS clients that bring their own roots trust the system's store
# too (where build_images put a local CA, for machines whose TLS is intercepted).
SYSTEM_TRUST_ENV = {"NODE_EXTRA_CA_CERTS": CA_BUNDLE, "DENO_TLS_CA_STORE": "system,mozilla"}
PREBUILT_RUNTIMES = tuple(name for name, rt in RUNTIMES.items() if rt.prebuilt_install)
# The runtimes whose sessions may be stateful: a live interpreter each (the launcher's kernel.py).
STATEFUL_RUNTIMES = ("python", "node", "bash")
