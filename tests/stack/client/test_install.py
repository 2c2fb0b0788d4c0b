"""`pip install ./client` into a fresh virtualenv gives a working `isol8` command.

It needs PyPI (setuptools for the build, httpx); set ISOL8_TEST_OFFLINE=1 to
skip it on a machine without network access.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.stack.client.conftest import ROOT, cli_env

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(os.environ.get("ISOL8_TEST_OFFLINE") == "1", reason="ISOL8_TEST_OFFLINE=1: no PyPI"),
]


def test_pip_install_of_the_client_gives_a_working_isol8_command(tmp_path: Path) -> None:
    # Installed from a copy: setuptools builds in the source tree, and a build/
    # directory left in client/ would give mypy the package twice.
    source = tmp_path / "client"
    shutil.copytree(ROOT / "client", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, isol8 = venv / "bin" / "python", venv / "bin" / "isol8"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=240,
    )
    assert install.returncode == 0, install.stderr

    helped = subprocess.run([str(isol8), "--help"], capture_output=True, text=True, env=cli_env())
    assert helped.returncode == 0, helped.stderr
    for command in ("run", "sessions", "file", "serve"):
        assert command in helped.stdout

    # httpx came along: a real request fails with the CLI's own one-line message.
    url = f"http://127.0.0.1:{free_port()}"
    run = subprocess.run([str(isol8), "run", "-e", "print(1)", "--host", url, "--key", "k"],
                         capture_output=True, text=True, env=cli_env(), cwd=tmp_path)
    assert run.returncode == 1
    assert run.stderr.startswith(f"[ERR] Cannot connect to the isol8 server at {url}")
