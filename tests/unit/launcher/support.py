"""Helpers of the launcher tests: frames read back from a pipe, programs started as this process's user.

Imported by conftest.py once images/common is on sys.path.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from isol8_launcher.procs import Process
from isol8_launcher.protocol import FRAME_HEADER, FrameWriter

# A python that starts fast and ignores the environment: the programs of the tests.
PYTHON = [sys.executable, "-I", "-S", "-c"]


def python(code: str) -> list[str]:
    """The argv of a python program."""
    return [*PYTHON, code]


class Frame(NamedTuple):
    kind: str
    payload: bytes

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.payload))


def parse_frames(data: bytes) -> list[Frame]:
    """Split bytes written by a FrameWriter into frames; the bytes must end with a whole frame."""
    found = []
    offset = 0
    while offset < len(data):
        length, kind = FRAME_HEADER.unpack_from(data, offset)
        start = offset + FRAME_HEADER.size
        payload = data[start : start + length]
        assert len(payload) == length, "the bytes end in the middle of a frame"
        found.append(Frame(chr(kind), payload))
        offset = start + length
    return found


class FramePipe:
    """A FrameWriter on a pipe's write end; a thread reads the other end, so no write ever blocks."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.writer = FrameWriter(self.write_fd)
        self.received = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := os.read(self.read_fd, 65536):
            self.received += chunk

    def frames(self) -> list[Frame]:
        """Every frame written: closes the write end, so call it once the writing is done."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        self.reader.join(5)
        assert not self.reader.is_alive(), "the pipe's write end is still open somewhere"
        return parse_frames(bytes(self.received))

    def close(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        self.reader.join(5)
        os.close(self.read_fd)


def payloads(frames: list[Frame], kind: str) -> bytes:
    """All the bytes of one kind of frame, in order."""
    return b"".join(f.payload for f in frames if f.kind == kind)


def kinds(frames: list[Frame]) -> list[str]:
    return [f.kind for f in frames]


def end_of_run(frames: list[Frame]) -> dict[str, Any]:
    """The outcome of a run: its ``x`` frame, which must be the last frame."""
    assert frames, "no frame at all"
    assert frames[-1].kind == "x", kinds(frames)
    assert kinds(frames).count("x") == 1
    return frames[-1].json()


class Programs:
    """``spawn`` and ``kill`` for a Runner: real programs, as this process's user, each in a session of its own.

    ``spawn`` keeps CodeUser.spawn's contract (``prepare`` before the program
    starts, the program's stdin/stdout/stderr on pipes, a pidfd, the pid to be
    reaped by the caller), except that ``prepare`` runs here rather than in the
    child. ``kill`` SIGKILLs the process groups of the programs it started, and
    nothing else.
    """

    def __init__(self) -> None:
        self.started: list[tuple[list[str], dict[str, str], str]] = []
        self.groups: list[int] = []
        self.kills = 0

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str, prepare: Callable[[], None] | None) -> Process:
        if prepare is not None:
            prepare()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: only system calls, then the program
            try:
                os.setsid()
                os.dup2(in_r, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        self.started.append((argv, env, cwd))
        self.groups.append(pid)
        return Process(pid, in_w, out_r, err_r, os.pidfd_open(pid))

    def kill(self) -> bool:
        self.kills += 1
        self.kill_groups()
        return True

    def kill_groups(self) -> None:
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def cleanup(self) -> None:
        """Kill what is left (background processes the programs started) and reap what was not reaped."""
        self.kill_groups()
        for pid in self.groups:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
