"""The launcher package (images/common/isol8_launcher/) tested on the host: no Docker, no code user.

The package is copied into the images as /opt/isol8/isol8_launcher/; here it
is imported from the repository, with images/common put on sys.path before
any test module imports it. Nothing here signals a process the tests did not
start or touches a file outside the test's tmp_path: the programs run as this
process's user and are killed by their process group (support.Programs).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "images" / "common"))

from tests.unit.launcher.support import FramePipe, Programs  # noqa: E402


@pytest.fixture
def frames() -> Iterator[FramePipe]:
    """A FrameWriter on a pipe, and the frames it wrote read back from the other end."""
    pipe = FramePipe()
    yield pipe
    pipe.close()


@pytest.fixture
def control() -> Iterator[tuple[int, int]]:
    """The launcher's control/request pipe: (the end the launcher reads, the end the worker writes)."""
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        try:
            os.close(fd)
        except OSError:
            pass  # a test closed its end already


@pytest.fixture
def programs() -> Iterator[Programs]:
    """A spawn that starts real programs as this process's user; what is left of them is killed afterwards."""
    started = Programs()
    yield started
    started.cleanup()


@pytest.fixture
def roots(tmp_path: Path) -> tuple[str, str]:
    """A run's file roots, as /sandbox and /tmp are in a container: two directories in tmp_path."""
    sandbox, tmp = tmp_path / "sandbox", tmp_path / "tmp"
    sandbox.mkdir()
    tmp.mkdir()
    return str(sandbox), str(tmp)
