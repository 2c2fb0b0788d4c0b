"""run.py's interactive runs: live stdin, its eof and credit, signals, a terminal and its size.

Each run is served in a thread while the test plays the worker: it writes
control messages to the launcher's control pipe during the run and reads the
frames back as they come. The programs are real processes of this user
(support.Programs); the terminal runs use the real CodeUser.spawn as this
process's own user, which switches no uid (CodeUser.is_current()).
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from isol8_launcher.ops import Launcher
from isol8_launcher.procs import CodeUser, Process
from isol8_launcher.protocol import FRAME_HEADER
from isol8_launcher.run import Runner

from sandbox.protocol import encode_request
from tests.unit.launcher.support import Frame, FramePipe, Programs, end_of_run, payloads, python
from tests.unit.launcher.test_ops import HostSafeCodeUser

WAIT_SECONDS = 5.0
ECHO = (
    "import sys\n"
    "while line := sys.stdin.readline():\n"
    "    print('echo:' + line.strip(), flush=True)\n"
)


def program(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed"
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def whole_frames(data: bytes) -> list[Frame]:
    """The complete frames at the start of ``data`` (a frame still being written is left out)."""
    found = []
    offset = 0
    while offset + FRAME_HEADER.size <= len(data):
        length, kind = FRAME_HEADER.unpack_from(data, offset)
        start = offset + FRAME_HEADER.size
        if start + length > len(data):
            break
        found.append(Frame(chr(kind), data[start : start + length]))
        offset = start + length
    return found


class LiveRun:
    """One run request served in a thread; the test sends control messages and watches the frames meanwhile."""

    def __init__(self, runner: Runner, frames: FramePipe, control_w: int, request: dict[str, Any]) -> None:
        self.frames = frames
        self.control_w = control_w
        self.thread = threading.Thread(target=runner.run_request, args=(request,), daemon=True)
        self.thread.start()

    def send(self, message: dict[str, Any]) -> None:
        os.write(self.control_w, encode_request(message))

    def stdin(self, data: bytes) -> None:
        self.send({"op": "stdin", "data": b64(data)})

    def eof(self) -> None:
        self.send({"op": "stdin", "eof": True})

    def so_far(self) -> list[Frame]:
        return whole_frames(bytes(self.frames.received))

    def wait_for(self, text: bytes) -> None:
        """Until the program's stdout holds ``text``."""
        deadline = time.monotonic() + WAIT_SECONDS
        while text not in payloads(self.so_far(), "o"):
            assert time.monotonic() < deadline, f"no {text!r} in stdout: {payloads(self.so_far(), 'o')!r}"
            time.sleep(0.005)

    def finish(self) -> tuple[dict[str, Any], list[Frame]]:
        """The outcome (x frame) and every frame, once the run ended."""
        self.thread.join(WAIT_SECONDS * 2)
        assert not self.thread.is_alive(), "the run did not end"
        got = self.frames.frames()
        return end_of_run(got), got


class CodeUserCalls:
    """``as_code_user`` for the Runner: runs the function here, counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fn: Callable[[], Any]) -> Any:
        self.calls += 1
        return fn()


@pytest.fixture
def as_code_user() -> CodeUserCalls:
    return CodeUserCalls()


def make_runner(frames: FramePipe, control: tuple[int, int], spawn: Any, programs: Programs,
                roots: tuple[str, str], as_code_user: CodeUserCalls) -> Runner:
    return Runner(writer=frames.writer, control_fd=control[0], pending=[], spawn=spawn, kill=programs.kill,
                  as_code_user=as_code_user, roots=roots)


@pytest.fixture
def runner(frames, control, programs, roots, as_code_user) -> Runner:
    return make_runner(frames, control, programs.spawn, programs, roots, as_code_user)


@pytest.fixture
def tty_runner(frames, control, programs, roots, as_code_user) -> Runner:
    """A Runner whose programs start on a terminal from the real CodeUser.spawn, as this process's user."""
    user = CodeUser(os.getuid(), os.getgid())
    assert user.is_current()  # no uid switch: spawn only forks, opens a pty and execs

    def spawn(argv: list[str], env: dict[str, str], cwd: str, prepare: Callable[[], None] | None,
              tty: tuple[int, int] | None = None) -> Process:
        proc = user.spawn(argv, env, cwd, prepare, tty)
        programs.groups.append(proc.pid)  # the program leads its own session: killed and reaped afterwards
        return proc

    return make_runner(frames, control, spawn, programs, roots, as_code_user)


Start = Callable[..., LiveRun]


@pytest.fixture
def start(frames: FramePipe, control: tuple[int, int], programs: Programs) -> Iterator[Start]:
    """``start(runner, argv, **fields)``: an interactive run request served in a thread.

    A run still going when the test ends (it failed) is ended before the pipes close.
    """
    started: list[LiveRun] = []

    def start_run(runner: Runner, argv: list[str], **fields: Any) -> LiveRun:
        request = {"op": "run", "argv": argv, "timeoutMs": 10000, "interactive": True, **fields}
        started.append(LiveRun(runner, frames, control[1], request))
        return started[-1]

    yield start_run
    programs.kill_groups()
    for live in started:
        live.thread.join(WAIT_SECONDS)


# ------------------------------------------------------------------ live stdin


def test_each_stdin_message_reaches_the_program_while_it_runs(runner, start):
    live = start(runner, python(ECHO))
    live.stdin(b"one\n")
    live.wait_for(b"echo:one\n")
    live.stdin(b"two\n")
    live.wait_for(b"echo:two\n")
    live.eof()
    outcome, got = live.finish()
    assert payloads(got, "o") == b"echo:one\necho:two\n"
    assert (outcome["exitCode"], outcome["timedOut"]) == (0, False)


def test_the_request_stdin_comes_first_and_stdin_stays_open_after_it(runner, start):
    live = start(runner, python(ECHO), stdin=b64(b"given\n"))
    live.wait_for(b"echo:given\n")
    live.stdin(b"live\n")
    live.wait_for(b"echo:live\n")
    live.eof()
    outcome, got = live.finish()
    assert payloads(got, "o") == b"echo:given\necho:live\n" and outcome["exitCode"] == 0


def test_eof_ends_cat_after_what_was_sent(runner, start):
    live = start(runner, [program("cat")])
    live.stdin(b"abc")
    live.stdin(b"def\n")
    live.eof()
    outcome, got = live.finish()
    assert payloads(got, "o") == b"abcdef\n"
    assert (outcome["exitCode"], outcome["timedOut"]) == (0, False)


def test_eof_with_data_in_the_same_message_ends_wc_after_counting_it(runner, start):
    live = start(runner, [program("wc"), "-c"])
    live.stdin(b"12345")
    live.send({"op": "stdin", "data": b64(b"678"), "eof": True})
    outcome, got = live.finish()
    assert payloads(got, "o").strip() == b"8" and outcome["exitCode"] == 0


def test_without_eof_an_interactive_program_keeps_waiting_for_input(runner, start):
    live = start(runner, [program("cat")], timeoutMs=300)
    outcome, _ = live.finish()
    assert outcome["timedOut"] is True


def test_credit_frames_add_up_to_the_stdin_bytes_written(runner, start):
    sent = [b"x" * 10, b"y" * 1000, os.urandom(100 * 1024)]  # the last more than a pipe holds
    live = start(runner, [program("wc"), "-c"])
    for data in sent:
        live.stdin(data)
    live.eof()
    _, got = live.finish()
    total = sum(len(data) for data in sent)
    assert payloads(got, "o").strip() == str(total).encode()
    credits = [f.json()["bytes"] for f in got if f.kind == "i"]
    assert credits and all(n > 0 for n in credits)
    assert sum(credits) == total


def test_stdin_sent_after_eof_is_dropped_and_still_credited(runner, start):
    # Otherwise the worker's window would stay taken by bytes that never come back
    # and hold up the messages queued after them (a signal behind a stdin message).
    code = (
        "import signal, sys\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "print(len(sys.stdin.buffer.read()), flush=True)\n"
        "signal.pause()\n"
    )
    live = start(runner, python(code))
    live.stdin(b"abc")
    live.eof()
    live.wait_for(b"3\n")
    live.stdin(b"late bytes")
    live.send({"op": "signal", "signal": "SIGTERM"})  # messages are taken in order: the late bytes came first
    outcome, got = live.finish()
    assert payloads(got, "o") == b"3\n" and outcome["exitCode"] == 0
    assert sum(f.json()["bytes"] for f in got if f.kind == "i") == len(b"abc") + len(b"late bytes")


def test_a_non_interactive_run_ignores_stdin_messages(runner, start):
    given = b"g" * (200 * 1024)  # more than a pipe holds: still being fed when the messages come
    code = "import sys, time; time.sleep(0.2); print(len(sys.stdin.buffer.read()))"
    live = start(runner, python(code), interactive=False, stdin=b64(given))
    live.stdin(b"not for this run\n")
    live.eof()
    outcome, got = live.finish()
    assert payloads(got, "o") == str(len(given)).encode() + b"\n" and outcome["exitCode"] == 0
    assert not [f for f in got if f.kind == "i"]
    assert runner.pending == []  # dropped, not held back as a request for after the run


def test_a_setup_script_is_never_interactive(runner, start):
    # Were its stdin left open, ``cat`` would wait for input until the deadline.
    setup = [program("sh"), "-c", "cat; echo setup done"]
    live = start(runner, python("print('code')"), setup=setup, timeoutMs=5000)
    outcome, got = live.finish()
    assert (payloads(got, "O"), payloads(got, "o")) == (b"setup done\n", b"code\n")
    assert (outcome["phase"], outcome["exitCode"], outcome["timedOut"]) == ("code", 0, False)


def test_input_sent_during_the_setup_script_is_kept_for_the_code(runner, start):
    # The worker lets input through once the run request is on its way, before the setup ends.
    setup = [program("sh"), "-c", "sleep 0.3; echo setup done"]
    live = start(runner, [program("cat")], setup=setup, timeoutMs=5000)
    live.stdin(b"typed early\n")
    live.eof()
    outcome, got = live.finish()
    assert (payloads(got, "O"), payloads(got, "o")) == (b"setup done\n", b"typed early\n")
    assert (outcome["phase"], outcome["exitCode"], outcome["timedOut"]) == ("code", 0, False)
    assert sum(f.json()["bytes"] for f in got if f.kind == "i") == len(b"typed early\n")


# ------------------------------------------------------------------ signals

# The programs that wait for a signal say they are ready with os.write: a signal
# that came while print() still held stdout's buffer would make the handler's
# own print() fail (a reentrant call).
INTERRUPTIBLE = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # even where SIGINT came ignored
    "try:\n"
    "    os.write(1, b'ready\\n')\n"
    "    time.sleep(10)\n"
    "except KeyboardInterrupt:\n"
    "    print('interrupted', flush=True)\n"
    "    sys.exit(3)\n"
)


def test_sigint_runs_the_programs_keyboard_interrupt_handler(runner, start, as_code_user):
    live = start(runner, python(INTERRUPTIBLE))
    live.wait_for(b"ready\n")
    live.send({"op": "signal", "signal": "SIGINT"})
    outcome, got = live.finish()
    assert payloads(got, "o") == b"ready\ninterrupted\n"
    assert (outcome["exitCode"], outcome["cancelled"]) == (3, False)
    assert as_code_user.calls == 1  # sent acting as the code user


CHILD_TRAPS_TERM = (
    "import os, signal, sys, time\n"
    "def stop(*_):\n"
    "    print('child got TERM', flush=True)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "os.write(1, b'ready\\n')\n"
    "time.sleep(10)\n"
)
PARENT_OUTLIVES_TERM = (
    "import signal, subprocess, sys\n"
    "signal.signal(signal.SIGTERM, lambda *_: None)\n"
    f"child = subprocess.Popen([sys.executable, '-I', '-S', '-c', {CHILD_TRAPS_TERM!r}])\n"
    "child.wait()\n"
    "print('parent done', flush=True)\n"
)


def test_a_signal_reaches_the_programs_whole_process_group(runner, start):
    # Sent to the parent alone, it would leave the child sleeping until the deadline.
    live = start(runner, python(PARENT_OUTLIVES_TERM), timeoutMs=5000)
    live.wait_for(b"ready\n")
    live.send({"op": "signal", "signal": "SIGTERM"})
    outcome, got = live.finish()
    assert payloads(got, "o") == b"ready\nchild got TERM\nparent done\n"
    assert (outcome["exitCode"], outcome["timedOut"]) == (0, False)


def test_a_signal_outside_the_allowed_three_is_not_sent(runner, start, as_code_user):
    live = start(runner, python(INTERRUPTIBLE))
    live.wait_for(b"ready\n")
    live.send({"op": "signal", "signal": "SIGHUP"})  # would end the program (exit 129)
    live.send({"op": "signal", "signal": "SIGINT"})
    outcome, got = live.finish()
    assert payloads(got, "o") == b"ready\ninterrupted\n" and outcome["exitCode"] == 3
    assert as_code_user.calls == 1


# ------------------------------------------------------------------ a terminal

SIZES = (
    "import subprocess, sys\n"
    "subprocess.run(['stty', 'size'])\n"
    "sys.stdin.readline()\n"
    "subprocess.run(['stty', 'size'])\n"
)


def test_a_tty_run_has_a_terminal_for_stdin_and_stdout(tty_runner, start):
    live = start(tty_runner, python("import os; print(os.isatty(0), os.isatty(1))"),
                 tty=[80, 24])
    outcome, got = live.finish()
    assert payloads(got, "o") == b"True True\r\n" and outcome["exitCode"] == 0


def test_a_resize_changes_what_stty_size_reports(tty_runner, start):
    live = start(tty_runner, python(SIZES), tty=[80, 24])
    live.wait_for(b"24 80\r\n")
    live.send({"op": "resize", "cols": 100, "rows": 30})
    live.stdin(b"go\n")
    live.wait_for(b"30 100\r\n")
    outcome, _ = live.finish()
    assert outcome["exitCode"] == 0


def test_a_resize_is_ignored_without_a_terminal(runner, start):
    live = start(runner, python(ECHO))
    live.send({"op": "resize", "cols": 100, "rows": 30})
    live.stdin(b"still here\n")
    live.wait_for(b"echo:still here\n")
    live.eof()
    outcome, _ = live.finish()
    assert outcome["exitCode"] == 0


def test_eof_on_a_terminal_ends_the_input_at_the_start_of_a_line(tty_runner, start):
    live = start(tty_runner, [program("wc"), "-c"], tty=[80, 24])
    live.stdin(b"abc\n")
    live.eof()
    outcome, got = live.finish()
    assert payloads(got, "o").split()[-1] == b"4"  # after the terminal's echo of the line
    assert (outcome["exitCode"], outcome["timedOut"]) == (0, False)


FOREGROUND_JOB = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # the program itself ignores Ctrl-C, as a shell does
    "signal.signal(signal.SIGTTOU, signal.SIG_IGN)\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.setpgid(0, 0)\n"
    "    signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "    try:\n"
    "        os.write(1, b'job ready\\n')\n"
    "        time.sleep(10)\n"
    "    except KeyboardInterrupt:\n"
    "        print('job interrupted', flush=True)\n"
    "        os._exit(3)\n"
    "    os._exit(0)\n"
    "os.setpgid(pid, pid)\n"
    "os.tcsetpgrp(0, pid)\n"
    "print('job in the foreground', flush=True)\n"
    "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
)


def test_sigint_on_a_terminal_reaches_its_foreground_job(tty_runner, start):
    # Sent to the program's own group, it would be ignored and the job sleep until the deadline.
    live = start(tty_runner, python(FOREGROUND_JOB), tty=[80, 24], timeoutMs=5000)
    live.wait_for(b"job ready\r\n")
    live.wait_for(b"job in the foreground\r\n")
    live.send({"op": "signal", "signal": "SIGINT"})
    outcome, got = live.finish()
    assert b"job interrupted\r\n" in payloads(got, "o")
    assert (outcome["exitCode"], outcome["timedOut"]) == (3, False)


# ------------------------------------------------------------------ outside a run


@pytest.mark.parametrize("message", [
    {"op": "stdin", "data": b64(b"late\n")},
    {"op": "stdin", "eof": True},
    {"op": "signal", "signal": "SIGINT"},
    {"op": "resize", "cols": 100, "rows": 30},
])
def test_the_launcher_drops_live_input_that_arrives_outside_a_run(message, frames, control, programs, roots):
    launcher = Launcher(HostSafeCodeUser(programs), writer=frames.writer, requests_fd=control[0],
                        spawn=programs.spawn, sandbox=roots[0], run_roots=roots, scratch_dirs=roots)
    launcher.handle(message)
    launcher.handle({"op": "ping", "nonce": "n1"})  # the next reply is the ping's: nothing came in between
    (frame,) = frames.frames()
    assert frame.kind == "r" and frame.json() == {"pong": "n1", "ok": True}
