"""The local end of an interactive run: this process's stdin into the run, Ctrl-C, the terminal's size.

Used by ``isol8 run -i`` (the program reads what is typed or piped, line by
line as it comes; Ctrl-C sends it SIGINT) and ``isol8 shell`` (the program
runs on a pseudo-terminal in the sandbox; the local terminal is put in raw
mode, so every key, Ctrl-C included, goes to the remote terminal, which turns
it into a signal as a local one would; a window resize is sent along).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from types import FrameType

from isol8_client.interactive import InteractiveRun

READ_SIZE = 4096


def pump_stdin(run: InteractiveRun, fd: int = 0) -> threading.Thread:
    """Start a thread that copies ``fd`` into the run's stdin as it arrives, then closes it at EOF.

    The run decodes the bytes as one UTF-8 stream, so a character split
    between two reads is sent whole.
    """

    def copy() -> None:
        while True:
            try:
                chunk = os.read(fd, READ_SIZE)
            except OSError:
                chunk = b""
            if not chunk:
                run.close_stdin()
                return
            run.send(chunk)

    thread = threading.Thread(target=copy, name="isol8-stdin", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def interrupts_go_to(run: InteractiveRun) -> Iterator[None]:
    """While inside: Ctrl-C (SIGINT to this process) sends SIGINT to the program instead of ending us."""

    def forward(signum: int, frame: FrameType | None) -> None:
        run.signal("SIGINT")

    previous = signal.signal(signal.SIGINT, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def raw_terminal(run: InteractiveRun, fd: int = 0) -> Iterator[None]:
    """While inside: ``fd``'s terminal in raw mode and its size followed; nothing happens if it is no terminal."""
    if not os.isatty(fd):
        yield
        return

    def send_size(signum: int | None = None, frame: FrameType | None = None) -> None:
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            return
        run.resize(size.columns, size.lines)

    saved = termios.tcgetattr(fd)
    previous = signal.signal(signal.SIGWINCH, send_size)
    send_size()
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)


def copy_output(run: InteractiveRun) -> int | None:
    """Write the run's output here as it comes (a terminal's bytes unchanged); return its exit code."""
    for event in run:
        if event.type == "stdout":
            _write(sys.stdout, event.text)
        elif event.type == "stderr":
            _write(sys.stderr, event.text)
        elif event.type == "error":
            _write(sys.stderr, f"\r\n[ERR] {event.text}\r\n")
        elif event.type == "exit":
            return event.exit_code
    return None


def _write(stream: object, data: str) -> None:
    out = getattr(stream, "buffer", None)
    if out is not None:
        out.write(data.encode("utf-8", errors="replace"))
        out.flush()
    else:  # a text stream without bytes underneath (tests' StringIO)
        stream.write(data)  # type: ignore[attr-defined]
        stream.flush()  # type: ignore[attr-defined]
