"""Stateful sessions: the session's interpreter (a *kernel*) and the cells run in it.

A stateful session keeps one interpreter alive in its container, as the code
user: python, node or bash (the kernels are in /opt/isol8/kernels/, see
their docstrings). Each execute is a *cell* sent to it; variables, imports
and functions of earlier cells are still there.

The kernel gets four descriptors besides its stdin (at EOF):

    1, 2   its stdout and stderr: pipes this launcher reads during a cell
    3      cells, from us: a JSON line ``{"id", "code", "env"}`` each (bash: the
           code, ``local -x`` lines first, ending in a NUL byte); a request's
           variables and secrets are the cell's only, later cells do not see them
    4      events, to us: JSON lines ``ready``, ``display`` (a MIME bundle) and
           one ``done`` per cell (its value, its exception), written after the
           cell's output was flushed
    5      acknowledgements, from us: after a display with ``"ack": true`` the
           kernel waits for one byte here, sent once the output written before
           the display was read: the stream keeps the cell's order although
           output and displays come through separate pipes

What comes on 4 is the code user's to write, so it is parsed as untrusted
input: bounded lines, unknown or malformed ones dropped. A display becomes a
``d`` frame at once (the stream's ``display`` event); ``done`` ends the cell.

The edges (issue 18): a cell past its deadline, or cancelled, gets SIGINT
(python's KeyboardInterrupt, node's breakOnSigint); if the kernel does not
report the cell done within the grace period it is killed with everything
else of the code user and started again, and the answer says ``stateLost``.
So does any other end of the kernel: OOM, the cell exiting the interpreter,
a ``kill`` between cells. ``kernel_restart`` restarts it on request (files
stay; ``stateLost`` is not reported then, since the client asked).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

from isol8_launcher.paths import RUN_FILE_ROOTS, read_output_files, write_files
from isol8_launcher.procs import OOM_FILES, PIDS_FILES, Process, cgroup_counter
from isol8_launcher.protocol import READ_CHUNK, FrameWriter, OpError
from isol8_launcher.run import OutputPump, ProgramRun, RunLimits, Runner

KERNELS_DIR = "/opt/isol8/kernels"
KERNEL_ARGV = {
    "python": ["python3", f"{KERNELS_DIR}/python_kernel.py"],
    "node": ["node", f"{KERNELS_DIR}/node_kernel.js"],
    "bash": ["bash", f"{KERNELS_DIR}/bash_kernel.sh"],
}
CELL_FD, EVENTS_FD, ACK_FD = 3, 4, 5
# One event line (a display with a large image) may be this long; longer ones are dropped.
MAX_EVENT_BYTES = 32 * 1024 * 1024
INTERRUPT_GRACE_SECONDS = 2.0
READY_TIMEOUT_SECONDS = 20.0

# spawn_kernel(argv, env, cwd, pass_fds): the kernel as the code user (CodeUser.spawn).
SpawnKernel = Callable[[list[str], dict[str, str], str, dict[int, int]], Process]


class EventReader:
    """The kernel's event lines, read in chunks: whole JSON objects out, bounded, never trusted."""

    def __init__(self, fd: int, max_line: int = MAX_EVENT_BYTES) -> None:
        self.fd = fd
        self.max_line = max_line
        self.buf = bytearray()
        self.skipping = False  # inside a line that was already too long
        self.closed = False

    def read(self) -> list[dict[str, Any]]:
        """The events that are complete after one read (the pipe is readable); [] at EOF (``closed``)."""
        try:
            chunk = os.read(self.fd, READ_CHUNK * 4)
        except BlockingIOError:
            return []
        if not chunk:
            self.closed = True
            return []
        self.buf += chunk
        events = []
        while (end := self.buf.find(b"\n")) >= 0:
            line = bytes(self.buf[:end])
            del self.buf[: end + 1]
            if self.skipping:
                self.skipping = False
                continue
            event = _parse_event(line)
            if event is not None:
                events.append(event)
        if len(self.buf) > self.max_line:
            self.buf.clear()
            self.skipping = True
        return events


def _parse_event(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


class Kernel:
    """One started interpreter: its process, its cell pipe, its event pipe, and how many cells it ran."""

    def __init__(self, runtime: str, proc: Process, cells_w: int, events: EventReader, acks_w: int = -1) -> None:
        self.runtime = runtime
        self.proc = proc
        self.cells_w = cells_w
        self.acks_w = acks_w
        self.events = events
        self.cells = 0
        self.ready = False
        self.status: int | None = None  # its wait status, once it ended

    def alive(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.proc.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is None

    def send(self, cell_id: int, code: str, env: dict[str, str]) -> None:
        """Hand the kernel a cell; raises OSError when it is gone."""
        if self.runtime == "bash":
            # The kernel evals the cell inside a function: `local -x` scopes them to this cell.
            exports = "".join(f"local -x {name}={_shell_quote(value)}\n" for name, value in env.items())
            data = (exports + code).replace("\0", "").encode() + b"\0"
        else:
            data = (json.dumps({"id": cell_id, "code": code, "env": env}) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self.cells_w, view) :]

    def interrupt(self) -> None:
        """SIGINT to the kernel's process group (the cell's children with it); call it as the code user."""
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        """Our ends of its pipes (the process must have been killed and is reaped here)."""
        if self.status is None:
            try:
                self.status = os.waitpid(self.proc.pid, 0)[1]
            except ChildProcessError:
                self.status = 0
        for fd in (self.cells_w, self.acks_w, self.events.fd, self.proc.stdout, self.proc.stderr, self.proc.pidfd):
            try:
                os.close(fd)
            except OSError:
                pass


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


class Cells:
    """The launcher's stateful side: the kernel configuration, the live kernel, the cells.

    ``spawn`` starts a kernel as the code user, ``kill`` kills every process
    of the code user (True when none is left), ``as_code_user`` runs a
    function with the code user's identity (a cell's files).
    """

    def __init__(
        self,
        *,
        runner: Runner,
        spawn: SpawnKernel,
        kill: Callable[[], bool],
        as_code_user: Callable[[Callable[[], Any]], Any],
        roots: tuple[str, ...] = RUN_FILE_ROOTS,
    ) -> None:
        self.runner = runner
        self.writer: FrameWriter = runner.writer
        self.spawn = spawn
        self.kill = kill
        self.as_code_user = as_code_user
        self.roots = roots
        self.config: dict[str, Any] | None = None  # {"runtime", "argv", "env"}: set by the "kernel" op
        self.kernel: Kernel | None = None
        # The kernel that ran cells ended outside of a cell and outside a restart:
        # the next cell says stateLost.
        self.lost = False

    # ------------------------------------------------------------------ lifecycle

    def configure(self, req: dict[str, Any]) -> dict[str, Any]:
        """The "kernel" op: this session is stateful, with this runtime's interpreter."""
        runtime = str(req.get("runtime"))
        if runtime not in KERNEL_ARGV:
            raise OpError("bad_request", f"no stateful interpreter for {runtime!r}")
        argv = [str(a) for a in req.get("argv") or KERNEL_ARGV[runtime]]
        self.config = {"runtime": runtime, "argv": argv, "env": dict(req.get("env") or {})}
        return {}

    def ensure(self) -> None:
        """Have a live kernel when the session is stateful (after each request, while nothing else runs)."""
        if self.config is None:
            return
        if self.kernel is not None and not self.kernel.alive():
            self.lost = self.lost or self.kernel.cells > 0
            self._discard()
        if self.kernel is None:
            try:
                self.kernel = self._start()
            except OpError:
                pass  # no process slot left, say: the next cell tries again and says why

    def _start(self) -> Kernel:
        assert self.config is not None
        cells_r, cells_w = os.pipe2(os.O_CLOEXEC)
        events_r, events_w = os.pipe2(os.O_CLOEXEC)
        acks_r, acks_w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = self.spawn(self.config["argv"], self.config["env"], self.runner.home,
                              {CELL_FD: cells_r, EVENTS_FD: events_w, ACK_FD: acks_r})
        except BaseException:
            os.close(cells_w)
            os.close(events_r)
            os.close(acks_w)
            raise
        finally:
            os.close(cells_r)
            os.close(events_w)
            os.close(acks_r)
        os.close(proc.stdin)  # the kernel's stdin is at EOF: cells have none
        for fd in (proc.stdout, proc.stderr, events_r):
            os.set_blocking(fd, False)
        return Kernel(self.config["runtime"], proc._replace(stdin=-1), cells_w, EventReader(events_r), acks_w)

    def _discard(self) -> None:
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None

    def _kill_kernel(self) -> None:
        """Kill the kernel and everything else of the code user (what a lost cell left behind)."""
        self.kill()
        if self.kernel is not None:
            try:
                os.kill(self.kernel.proc.pid, signal.SIGKILL)  # in tests, kill() may not reach it
            except (ProcessLookupError, PermissionError):
                pass
        self._discard()

    def restart(self, _: dict[str, Any]) -> dict[str, Any]:
        """The "kernel_restart" op: a new interpreter, files kept; waits until it is ready."""
        if self.config is None:
            raise OpError("validation_error", "this session is not stateful")
        self._kill_kernel()
        self.lost = False
        self.kernel = self._start()
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        sel = selectors.DefaultSelector()
        sel.register(self.kernel.events.fd, selectors.EVENT_READ)
        try:
            while not self.kernel.ready and time.monotonic() < deadline:
                if sel.select(deadline - time.monotonic()):
                    events = self.kernel.events.read()
                    self.kernel.ready = any(e["type"] == "ready" for e in events) or self.kernel.events.closed
        finally:
            sel.close()
        if not self.kernel.ready or self.kernel.events.closed:
            raise OpError("kernel_failed", "the session's interpreter did not start")
        return {"restarted": True}

    def stop(self) -> None:
        """A kill or reset of the code user: the kernel goes with it (noticed by ``ensure``)."""
        if self.kernel is not None:
            self.kernel.alive()

    # ---------------------------------------------------------------------- cells

    def run_cell(self, req: dict[str, Any]) -> None:
        """The "cell" op: files, then the cell in the kernel; its outcome as the ``x`` frame."""
        if self.config is None:
            self.writer.send_json(b"x", {"error": "this session is not stateful", "code": "bad_request"})
            return
        started = time.monotonic()
        timeout = max(0.001, float(req.get("timeoutMs", 30000)) / 1000.0)
        limits = RunLimits(deadline=started + timeout, max_output=int(req.get("maxOutput", 1024 * 1024)),
                           kill_leftovers=False)
        oom_before = cgroup_counter(OOM_FILES)
        pids_before = cgroup_counter(PIDS_FILES)
        try:
            files = req.get("files") or []
            if files:
                self.as_code_user(lambda: write_files(files, self.roots))
            self.ensure()
            if self.kernel is None:
                self.kernel = self._start()  # raises the reason (no process slot, no interpreter)
        except OpError as exc:
            self.writer.send_json(b"x", {"error": exc.message, "code": exc.code})
            return
        kernel = self.kernel
        lost_before, self.lost = self.lost, False
        kernel.cells += 1
        grace = float(req.get("interruptGraceMs", INTERRUPT_GRACE_SECONDS * 1000)) / 1000.0
        cell = CellRun(self, kernel, limits, started=started, grace=grace,
                       max_display=int(req.get("maxDisplayBytes", 16 * 1024 * 1024)))
        cell.skip_old_output()
        env = {str(k): str(v) for k, v in (req.get("env") or {}).items()}
        try:
            kernel.send(kernel.cells, str(req.get("code", "")), env)
        except OSError:
            cell.died = True  # gone before it read the cell: its end is found by the loop
        outcome = cell.run()
        outcome["oom"] = cgroup_counter(OOM_FILES) > oom_before
        outcome["pidsExhausted"] = cgroup_counter(PIDS_FILES) > pids_before
        if cell.died or outcome["pidsExhausted"]:
            # Whatever the cell left (a fork bomb's processes) goes with the kernel.
            self._kill_kernel()
        outcome["stateLost"] = lost_before or self.kernel is None
        paths = req.get("outputPaths") or []
        if paths and not outcome["timedOut"] and not outcome["cancelled"]:
            max_file = int(req.get("maxFileBytes", 10 * 1024 * 1024))
            max_total = int(req.get("maxOutputFilesBytes", max_file))
            try:
                outcome["files"] = self.as_code_user(lambda: read_output_files(paths, max_file, max_total, self.roots))
            except OpError as exc:
                self.writer.send_json(b"x", {"error": exc.message, "code": exc.code})
                return
        self.writer.send_json(b"x", outcome)


class CellRun(ProgramRun):
    """One cell in a live kernel: the run loop of ProgramRun, ended by the kernel's ``done``, not its exit.

    The kernel's pipes stay open after the cell; what it writes between cells
    is read (and dropped) at the start of the next one.
    """

    def __init__(
        self, cells: Cells, kernel: Kernel, limits: RunLimits, *, started: float, grace: float, max_display: int,
    ) -> None:
        pump = OutputPump(cells.writer, (b"o", b"e"), limits.max_output)
        super().__init__(cells.runner, kernel.proc, lambda: 0, pump, stdin=b"", limits=limits, started=started)
        self.cells = cells
        self.kernel = kernel
        self.grace = grace
        self.max_display = max_display
        self.display_bytes = 0
        self.displays_dropped = 0
        self.done: dict[str, Any] | None = None
        self.died = False
        self.interrupted_at: float | None = None

    def run(self) -> dict[str, Any]:
        """Pump until the kernel reported the cell done (or died, or outlived its grace); the outcome."""
        self._watch()
        while self.done is None and not self.died:
            self._step()
        duration_ms = int((time.monotonic() - self.started) * 1000)
        self._drain_now()
        self.sel.close()
        return self._cell_outcome(duration_ms)

    def skip_old_output(self) -> None:
        """Output the kernel wrote since the last cell (background work) is not this cell's."""
        for fd in (self.proc.stdout, self.proc.stderr):
            try:
                while os.read(fd, READ_CHUNK):
                    pass
            except (BlockingIOError, OSError):
                pass
        if not self.kernel.events.closed:
            for event in self.kernel.events.read():
                if event["type"] == "ready":
                    self.kernel.ready = True

    def _watch(self) -> None:
        self.sel.register(self.proc.stdout, selectors.EVENT_READ, self._read_stdout)
        self.sel.register(self.proc.stderr, selectors.EVENT_READ, self._read_stderr)
        self.sel.register(self.kernel.events.fd, selectors.EVENT_READ, self._events)
        self.sel.register(self.proc.pidfd, selectors.EVENT_READ, self._died)
        self.sel.register(self.runner.control_fd, selectors.EVENT_READ, self._control)

    def _step(self) -> None:
        now = time.monotonic()
        deadline = self.limits.deadline if self.interrupted_at is None else self.interrupted_at + self.grace
        if now >= deadline:
            if self.interrupted_at is None:
                self.timed_out = True
                self._interrupt()
            else:
                self.died = True  # it did not stop in time: killed by run_cell, state lost
            return
        hint = self.pump.wait_hint()
        wait = deadline - now if hint is None else min(hint, deadline - now)
        for key, _ in self.sel.select(wait):
            key.data(key.fd)
        if hint is not None:
            self.pump.flush()

    def _interrupt(self) -> None:
        if self.interrupted_at is None:
            self.interrupted_at = time.monotonic()
            try:
                # As the code user: the launcher has no right to signal its processes otherwise.
                self.cells.as_code_user(self.kernel.interrupt)
            except OpError:
                pass  # nothing of the code user's left to signal: its end is seen next

    def _cancel(self) -> None:
        self._interrupt()

    def _read_output(self, stream: int, fd: int) -> None:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        if chunk:
            self.pump.feed(stream, chunk)
        else:
            self.sel.unregister(fd)  # the kernel closed it (it is ending): its exit is seen next

    def _events(self, fd: int) -> None:
        for event in self.kernel.events.read():
            kind = event["type"]
            if kind == "ready":
                self.kernel.ready = True
            elif kind == "display" and isinstance(event.get("data"), dict):
                self._display(event["data"])
                if event.get("ack"):
                    self._ack()
            elif kind == "done":
                self.done = event
        if self.kernel.events.closed:
            self.sel.unregister(fd)

    def _display(self, bundle: dict[str, Any]) -> None:
        """Forward one display (``d`` frame) in order with the output, while under the cell's display cap."""
        payload = json.dumps(bundle).encode()
        self.display_bytes += len(payload)
        if self.display_bytes > self.max_display:
            self.displays_dropped += 1
            return
        # The kernel flushed what the cell printed before it wrote the display:
        # reading the pipes first keeps the frames in the order of the cell.
        self._drain_now()
        self.cells.writer.send(b"d", payload)

    def _ack(self) -> None:
        """The kernel waits after a display until we read what it printed before (python does)."""
        try:
            os.write(self.kernel.acks_w, b"\n")
        except OSError:
            pass  # it is gone: its end is seen next

    def _died(self, _: int) -> None:
        self.died = True
        self.kernel.alive()
        self.sel.unregister(self.proc.pidfd)

    def _drain_now(self) -> None:
        """Output already in the pipes: the kernel flushed it before ``done`` (or before it died)."""
        for stream, fd in ((0, self.proc.stdout), (1, self.proc.stderr)):
            for _ in range(4096):
                try:
                    chunk = os.read(fd, READ_CHUNK)
                except (BlockingIOError, OSError):
                    break
                if not chunk:
                    break
                self.pump.feed(stream, chunk)
        self.pump.flush()

    def _cell_outcome(self, duration_ms: int) -> dict[str, Any]:
        done = self.done or {}
        if self.died or self.done is None:
            exit_code = 137
        elif done.get("status") == "ok":
            exit_code = 0
        else:
            exit_code = _exit_code(done.get("exitCode"))
        if self.timed_out or self.cancelled:
            exit_code = 137
        value = done.get("value")
        exception = done.get("exception")
        return {
            "exitCode": exit_code,
            "timedOut": self.timed_out,
            "cancelled": self.cancelled,
            "durationMs": duration_ms,
            "stdoutBytes": self.pump.totals[0],
            "stderrBytes": self.pump.totals[1],
            "killed": self.died,
            "phase": "code",
            "cell": True,
            "value": value if isinstance(value, dict) else None,
            "exception": exception if isinstance(exception, dict) else None,
            "displaysDropped": self.displays_dropped,
        }


def _exit_code(value: Any) -> int:
    return value if isinstance(value, int) and 0 < value < 256 else 1
