"""kernel.py: a stateful session's cells through a real interpreter process, frames read back from a pipe.

The interpreter here is a small stand-in that speaks the kernel protocol
(a JSON cell per line on fd 3, events on fd 4) and runs each cell with
``exec`` in one namespace, so the launcher's side is tested on its own: the
end of a cell at ``done``, displays as ``d`` frames, the interrupt and its
grace, a kernel that dies, stateLost, restart. The real kernels have their
own tests (tests/unit/kernels) and the stack tests run both together.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import textwrap
import time
from typing import Any

import pytest
from isol8_launcher.kernel import Cells, EventReader
from isol8_launcher.procs import CodeUser
from isol8_launcher.run import Runner

from tests.unit.launcher.support import FramePipe, Programs, end_of_run, parse_frames, payloads

FAKE_KERNEL = textwrap.dedent(
    """
    import json, os, signal, sys, time
    events = os.fdopen(4, "w", buffering=1)
    cells = os.fdopen(3)
    state = {"__name__": "__main__"}
    running = [False]
    def on_sigint(sig, frame):
        if running[0] and not state.get("deaf"):
            raise KeyboardInterrupt
    signal.signal(signal.SIGINT, on_sigint)
    def display(obj):
        sys.stdout.flush()
        events.write(json.dumps({"type": "display", "data": {"text/plain": repr(obj)}, "ack": True}) + "\\n")
        assert os.read(5, 1) == b"\\n"  # the launcher read the output before the display
    state["display"] = display
    events.write('{"type": "ready"}\\n')
    while line := cells.readline():
        cell = json.loads(line)
        os.environ.update(cell["env"])
        value, exc = None, None
        running[0] = True
        try:
            *body, last = cell["code"].split("\\n")
            exec("\\n".join(body), state)
            result = eval(last, state) if last.strip() else None
            value = None if result is None else {"text/plain": repr(result)}
        except BaseException as e:
            exc = {"ename": type(e).__name__, "evalue": str(e), "traceback": []}
            print(type(e).__name__, file=sys.stderr)
        running[0] = False
        sys.stdout.flush(); sys.stderr.flush()
        events.write(json.dumps({"type": "done", "id": cell["id"], "status": "error" if exc else "ok",
                                 "value": value, "exception": exc}) + "\\n")
    """
)


class KernelProcesses:
    """The stand-in kernel started as this process's user; ``kill`` ends exactly the kernels it started."""

    def __init__(self) -> None:
        self.user = CodeUser(os.getuid(), os.getgid())
        self.pids: list[int] = []
        self.kills = 0

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str, fds: dict[int, int]) -> Any:
        proc = self.user.spawn(argv, env, cwd, None, pass_fds=fds)
        self.pids.append(proc.pid)
        return proc

    def kill(self) -> bool:
        self.kills += 1
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in self.pids:  # as kill_all does: back once nothing is alive (zombies are dead)
            while _alive(pid):
                time.sleep(0.005)
        return True


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def kernels() -> Any:
    procs = KernelProcesses()
    yield procs
    procs.kill()


@pytest.fixture
def cells(frames: FramePipe, control, roots, kernels: KernelProcesses, tmp_path) -> Cells:
    script = tmp_path / "kernel.py"
    script.write_text(FAKE_KERNEL)
    runner = Runner(writer=frames.writer, control_fd=control[0], pending=[], spawn=Programs().spawn,
                    kill=kernels.kill, as_code_user=lambda fn: fn(), roots=roots)
    made = Cells(runner=runner, spawn=kernels.spawn, kill=kernels.kill, as_code_user=lambda fn: fn(), roots=roots)
    made.configure({"runtime": "python", "argv": [sys.executable, "-I", "-S", str(script)],
                    "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}})
    return made


def run_cell(cells: Cells, frames: FramePipe, code: str, **fields: Any) -> tuple[dict[str, Any], list[Any]]:
    """One cell; (its outcome, the frames it wrote). The pipe's bytes so far are consumed."""
    start = len(frames.received)
    cells.run_cell({"op": "cell", "code": code, "timeoutMs": 10000, **fields})
    cells.ensure()  # what serve() does after each request
    while True:  # the reader thread may lag behind the writes a moment
        got = parse_frames_safe(bytes(frames.received[start:]))
        if got and got[-1].kind == "x":
            return end_of_run(got), got


def parse_frames_safe(data: bytes) -> list[Any]:
    try:
        return parse_frames(data)
    except (AssertionError, struct.error):
        return []


def test_state_survives_between_cells(cells: Cells, frames: FramePipe) -> None:
    first, _ = run_cell(cells, frames, "x = 42\n")
    assert first["exitCode"] == 0 and first["stateLost"] is False and first["value"] is None
    second, got = run_cell(cells, frames, "print('hi')\nx + 1")
    assert second["value"] == {"text/plain": "43"}
    assert second["exitCode"] == 0 and second["cell"] is True
    assert payloads(got, "o") == b"hi\n"


def test_displays_come_as_d_frames_in_order_with_the_output(cells: Cells, frames: FramePipe) -> None:
    outcome, got = run_cell(cells, frames, "print('a', flush=True); display(1); print('b', flush=True); display(2)\n")
    assert outcome["exitCode"] == 0
    shown = [json.loads(f.payload) for f in got if f.kind == "d"]
    assert shown == [{"text/plain": "1"}, {"text/plain": "2"}]
    # The kernel waited for the launcher after each display: "b" cannot overtake the first.
    order = [(f.kind, f.payload) for f in got if f.kind in ("o", "d")]
    assert order == [("o", b"a\n"), ("d", b'{"text/plain": "1"}'), ("o", b"b\n"), ("d", b'{"text/plain": "2"}')]


def test_an_exception_is_exit_code_1_with_the_kernels_exception(cells: Cells, frames: FramePipe) -> None:
    outcome, got = run_cell(cells, frames, "1 / 0\n")
    assert outcome["exitCode"] == 1
    assert outcome["exception"]["ename"] == "ZeroDivisionError"
    assert b"ZeroDivisionError" in payloads(got, "e")


def test_a_timed_out_cell_is_interrupted_and_the_state_kept(cells: Cells, frames: FramePipe) -> None:
    run_cell(cells, frames, "x = 7\n")
    acting: list[str] = []

    def as_code_user(fn: Any) -> Any:
        acting.append(fn.__name__)
        return fn()

    cells.as_code_user = as_code_user
    outcome, _ = run_cell(cells, frames, "while True: pass\n", timeoutMs=300)
    assert acting == ["interrupt"]  # as the code user: in a sandbox the launcher may not signal it otherwise
    assert outcome["timedOut"] is True and outcome["exitCode"] == 137
    assert outcome["stateLost"] is False
    assert outcome["exception"]["ename"] == "KeyboardInterrupt"
    after, _ = run_cell(cells, frames, "\nx")
    assert after["value"] == {"text/plain": "7"} and after["stateLost"] is False


def test_a_cell_that_ignores_the_interrupt_is_killed_after_the_grace_and_the_state_lost(
    cells: Cells, frames: FramePipe, kernels: KernelProcesses
) -> None:
    run_cell(cells, frames, "x = 7\n")
    outcome, _ = run_cell(cells, frames, "deaf = True\nwhile True: pass\n", timeoutMs=200, interruptGraceMs=300)
    assert outcome["timedOut"] is True and outcome["killed"] is True
    assert outcome["stateLost"] is True and outcome["durationMs"] < 3000
    after, _ = run_cell(cells, frames, "\n'x' in globals()")
    assert after["value"] == {"text/plain": "False"}  # a new interpreter
    assert after["stateLost"] is False  # already said, once


def test_a_kernel_that_exits_in_a_cell_reports_state_lost(cells: Cells, frames: FramePipe) -> None:
    outcome, _ = run_cell(cells, frames, "import os\nos._exit(3)")
    assert outcome["stateLost"] is True and outcome["exitCode"] == 137
    after, _ = run_cell(cells, frames, "\n1 + 1")
    assert after["value"] == {"text/plain": "2"}


def test_a_kernel_killed_between_cells_makes_the_next_cell_say_state_lost(
    cells: Cells, frames: FramePipe, kernels: KernelProcesses
) -> None:
    run_cell(cells, frames, "x = 1\n")
    kernels.kill()  # what the "kill" op does to every process of the code user
    outcome, _ = run_cell(cells, frames, "\n2")
    assert outcome["stateLost"] is True and outcome["value"] == {"text/plain": "2"}


def test_restart_gives_a_fresh_interpreter_without_state_lost(cells: Cells, frames: FramePipe) -> None:
    run_cell(cells, frames, "x = 1\n")
    assert cells.restart({}) == {"restarted": True}
    outcome, _ = run_cell(cells, frames, "\n'x' in globals()")
    assert outcome["value"] == {"text/plain": "False"} and outcome["stateLost"] is False


def test_env_reaches_the_interpreter(cells: Cells, frames: FramePipe) -> None:
    outcome, _ = run_cell(cells, frames, "import os\nos.environ['GREETING']", env={"GREETING": "hej"})
    assert outcome["value"] == {"text/plain": "'hej'"}


def test_a_cell_is_refused_without_a_kernel_configured(frames: FramePipe, control, roots) -> None:
    runner = Runner(writer=frames.writer, control_fd=control[0], pending=[], spawn=Programs().spawn,
                    kill=lambda: True, as_code_user=lambda fn: fn(), roots=roots)
    bare = Cells(runner=runner, spawn=lambda *a: None, kill=lambda: True, as_code_user=lambda fn: fn())  # type: ignore[arg-type]
    bare.run_cell({"op": "cell", "code": "1"})
    assert end_of_run(frames.frames())["code"] == "bad_request"


def test_event_lines_are_bounded_and_malformed_ones_dropped() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    reader = EventReader(read_fd, max_line=100)
    os.write(write_fd, b"not json\n" + b'{"type": "ready"}\n' + b"[1]\n" + b"x" * 300)
    assert reader.read() == [{"type": "ready"}]
    os.write(write_fd, b"still the long line\n" + b'{"type": "done"}\n')
    assert reader.read() == [{"type": "done"}]
    os.close(write_fd)
    assert reader.read() == [] and reader.closed
    os.close(read_fd)
