"""The trivial program of each runtime, and how to run it on the host and in a container.

Every figure of the benchmark runs the same program, so that the ratios between
the service and its baselines compare paths, not programs.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

EXPECTED_STDOUT = "1"
# The directories of the sandbox's PATH (executions/runtimes.py BASE_ENV).
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Program:
    runtime: str
    code: str
    binary: str  # the interpreter's name, on the host and in the sandbox image
    flag: str  # the interpreter's "run this code" flag
    # A one-liner that prints the interpreter's real path, for one found only
    # on the user's PATH: version managers (pyenv, nodenv, volta) put shell
    # script shims there whose own start-up would be counted in the floor.
    real_path_code: str = ""

    def container_argv(self) -> list[str]:
        return [self.binary, self.flag, self.code]

    def host_argv(self) -> list[str] | None:
        """The host command, or None when the interpreter is not installed here.

        The interpreter is looked up on the sandbox's own PATH first: the
        distribution's interpreter is what the images run, while a user-level
        one (pyenv's, say) may carry start-up work of its own (``.pth`` hooks)
        that would make the floor say more about this machine than about the
        runtime.
        """
        system = shutil.which(self.binary, path=SYSTEM_PATH)
        if system is not None:
            return [system, self.flag, self.code]
        found = shutil.which(self.binary)
        if found is None:
            return None
        return [resolve_shim(found, self.flag, self.real_path_code), self.flag, self.code]


PROGRAMS: dict[str, Program] = {
    p.runtime: p
    for p in (
        Program("python", "print(1)", "python3", "-c", "import sys; print(sys.executable)"),
        Program("node", "console.log(1)", "node", "-e", "console.log(process.execPath)"),
        Program("bash", "echo 1", "bash", "-c"),
    )
}


def resolve_shim(path: str, flag: str, real_path_code: str) -> str:
    """Ask the interpreter for its own path; fall back to what PATH found."""
    if not real_path_code:
        return path
    try:
        done = subprocess.run(
            [path, flag, real_path_code], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return path
    real = done.stdout.strip()
    return real if real and shutil.which(real) else path
