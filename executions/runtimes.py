"""What each runtime runs, in isol8's terms (file name, command, environment)."""

from __future__ import annotations

from dataclasses import dataclass

SANDBOX = "/sandbox"
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


@dataclass(frozen=True)
class Runtime:
    name: str
    extension: str
    command: tuple[str, ...]  # the program file's path is appended
    env: tuple[tuple[str, str], ...] = ()  # added to BASE_ENV for this runtime

    def argv(self, path: str) -> list[str]:
        return [*self.command, path]


RUNTIMES: dict[str, Runtime] = {
    rt.name: rt
    for rt in (
        Runtime("python", ".py", ("python3",)),
        Runtime("node", ".mjs", ("node",)),
        Runtime("bash", ".sh", ("bash",)),
        Runtime("bun", ".ts", ("bun", "run")),
        Runtime(
            "deno",
            ".mts",
            (
                "deno", "run", "--allow-read=/sandbox,/tmp", "--allow-write=/sandbox,/tmp",
                "--allow-env", "--allow-net",
            ),
            # Deno colours its stderr even into a pipe; results are text, not a terminal.
            env=(("NO_COLOR", "1"),),
        ),
    )
}
