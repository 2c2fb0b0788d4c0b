"""Helpers of the client's stack tests: the real `isol8` command run against the ``stack`` fixture."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ISOL8 = Path(sys.executable).parent / "isol8"
ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Run:
    """The outcome of one `isol8` command."""

    returncode: int
    stdout: str
    stderr: str


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for the `isol8` subprocess, without the test run's own ISOL8_* settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("ISOL8_API_KEY", "ISOL8_HOST")}
    return env | extra


def isol8(*args: str, env: dict[str, str] | None = None, input: str | None = None,
          cwd: Path | None = None, timeout: float = 120) -> Run:
    """Run the installed `isol8` console script and capture what it printed."""
    proc = subprocess.run(
        [str(ISOL8), *args], env=env if env is not None else cli_env(), input=input,
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)
