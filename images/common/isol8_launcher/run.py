"""A run: its files, the optional setup script, the program, its output and its outcome.

``Runner`` serves one ``run`` request at a time; each program (the setup
script, then the code) is a ``ProgramRun``: started, its stdin fed, its
stdout and stderr forwarded as frames, the worker's control messages
(cancel) obeyed, its deadline enforced, and its outcome summed up in the
``x`` frame. How processes are started and killed is given to the Runner
(the launcher's CodeUser in a sandbox), so the loop runs anywhere.
"""

from __future__ import annotations

import base64
import os
import select
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

from isol8_launcher.forkclient import ForkServer
from isol8_launcher.paths import RUN_FILE_ROOTS, read_output_files, write_files
from isol8_launcher.procs import OOM_FILES, PIDS_FILES, Process, Spawn, cgroup_counter
from isol8_launcher.protocol import READ_CHUNK, FrameWriter, OpError, read_request

# Output is forwarded at once when the stream has been quiet for this long;
# otherwise chunks are held back and merged, so a program printing 100 000 short
# lines produces a few hundred frames, not 100 000.
COALESCE_SECONDS = 0.004
COALESCE_BYTES = 32 * 1024
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/sandbox",
    "USER": "sandbox",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
}


class OutputPump:
    """Reads a program's stdout and stderr and forwards them as frames.

    Chunks of one stream are merged while output keeps coming faster than
    COALESCE_SECONDS; a chunk of the other stream flushes what is pending first,
    so frames keep the order in which the two pipes were read.
    """

    def __init__(self, writer: FrameWriter, kinds: tuple[bytes, bytes], max_output: int) -> None:
        self.writer = writer
        self.kinds = kinds
        self.max_output = max_output
        self.totals = [0, 0]
        self.pending_stream = -1
        self.pending = bytearray()
        self.last_flush = 0.0

    def feed(self, stream: int, data: bytes) -> None:
        before = self.totals[stream]
        self.totals[stream] += len(data)
        if before >= self.max_output:
            return  # past the limit: counted, not forwarded
        data = data[: self.max_output - before]
        if self.pending and self.pending_stream != stream:
            self.flush()
        self.pending_stream = stream
        self.pending += data
        now = time.monotonic()
        if self.totals[stream] > self.max_output:
            # Crossed the limit just now: say so once, right after the last bytes.
            self.flush(now)
            self.writer.send_json(b"t", {"kind": self.kinds[stream].decode(), "bytes": self.totals[stream]})
        elif now - self.last_flush >= COALESCE_SECONDS or len(self.pending) >= COALESCE_BYTES:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self.pending:
            self.writer.send(self.kinds[self.pending_stream], bytes(self.pending))
            self.pending.clear()
        self.last_flush = time.monotonic() if now is None else now

    def wait_hint(self) -> float | None:
        if not self.pending:
            return None
        return max(0.0, self.last_flush + COALESCE_SECONDS - time.monotonic())


class RunLimits:
    """What a run request allows each of its programs: one deadline for both, the output cap."""

    def __init__(self, *, deadline: float, max_output: int, kill_leftovers: bool) -> None:
        self.deadline = deadline
        self.max_output = max_output
        # One-shot sandboxes: processes left behind are killed when the program ends.
        self.kill_leftovers = kill_leftovers


class Runner:
    """Serves ``run`` requests: the launcher's frames out, its control messages in.

    ``spawn`` starts a program as the code user, ``kill`` kills every process
    of the code user (True when none is left), ``as_code_user`` runs a function
    acting as the code user, ``forkserver_for`` names the python fork server
    that can serve a run's environment, if any. Requests other than a cancel
    that arrive on ``control_fd`` during a run are appended to ``pending``,
    to be served after it.
    """

    def __init__(
        self,
        *,
        writer: FrameWriter,
        control_fd: int,
        pending: list[dict[str, Any]],
        spawn: Spawn,
        kill: Callable[[], bool],
        as_code_user: Callable[[Callable[[], Any]], Any],
        forkserver_for: Callable[[dict[str, str]], ForkServer | None] = lambda env: None,
        roots: tuple[str, ...] = RUN_FILE_ROOTS,
    ) -> None:
        self.writer = writer
        self.control_fd = control_fd
        self.pending = pending
        self.spawn = spawn
        self.kill = kill
        self.as_code_user = as_code_user
        self.forkserver_for = forkserver_for
        self.roots = roots
        self.home = roots[0]  # /sandbox: the default cwd, where a run's program file is

    def run_request(self, req: dict[str, Any]) -> None:
        """Write files, run the optional setup script, then the program; send the outcome (``x``)."""
        started = time.monotonic()
        timeout = max(0.001, float(req.get("timeoutMs", 30000)) / 1000.0)
        limits = RunLimits(
            deadline=started + timeout,
            max_output=int(req.get("maxOutput", 1024 * 1024)),
            kill_leftovers=bool(req.get("killLeftovers", True)),
        )
        env = dict(BASE_ENV)
        env.update(req.get("env") or {})
        cwd = req.get("cwd") or self.home
        oom_before = cgroup_counter(OOM_FILES)
        pids_before = cgroup_counter(PIDS_FILES)
        files = req.get("files") or []

        def prepare() -> None:
            write_files(files, self.roots)
            if cwd != self.home:
                os.makedirs(cwd, exist_ok=True)

        try:
            outcome = self._run_setup(req, env, limits, prepare)
            if not outcome.get("phase"):
                outcome = self._run_code(req, env, cwd, files, limits, prepare)
        except OpError as exc:
            self.writer.send_json(b"x", {"error": exc.message, "code": exc.code})
            return
        outcome["oom"] = cgroup_counter(OOM_FILES) > oom_before
        outcome["pidsExhausted"] = cgroup_counter(PIDS_FILES) > pids_before
        self.writer.send_json(b"x", outcome)

    def _run_setup(
        self, req: dict[str, Any], env: dict[str, str], limits: RunLimits, prepare: Callable[[], None]
    ) -> dict[str, Any]:
        """The setup script, if there is one (it writes the run's files first); {} without one.

        Its outcome has ``phase: setup`` when the run ends with it.
        """
        setup = req.get("setup")
        if not setup:
            return {}
        setup_env = dict(BASE_ENV)
        setup_env.update(req.get("setupEnv") or env)
        outcome = self.run_program(setup, env=setup_env, cwd=self.home, stdin=b"", kinds=(b"O", b"E"),
                                   limits=limits, prepare=prepare)
        if outcome["timedOut"] or outcome["cancelled"] or outcome["exitCode"] != 0:
            outcome["phase"] = "setup"
        return outcome

    def _run_code(
        self,
        req: dict[str, Any],
        env: dict[str, str],
        cwd: str,
        files: list[list[str]],
        limits: RunLimits,
        prepare: Callable[[], None],
    ) -> dict[str, Any]:
        """The program, from the fork server when the request asks and one serves its environment."""
        setup = req.get("setup")
        stdin = base64.b64decode(req.get("stdin") or "")
        forkserver = self.forkserver_for(env) if req.get("forkServer") else None
        # The usual run sends just its program file: the forked run writes
        # it (uid 1000 itself), saving a helper fork of this process.
        only_program = len(files) == 1 and files[0][0].startswith(self.home + "/") and not setup
        outcome = self.run_program(
            req["argv"],
            env=env,
            cwd=cwd,
            stdin=stdin,
            kinds=(b"o", b"e"),
            limits=limits,
            prepare=None if setup else prepare,
            forkserver=forkserver,
            forked_files=[(files[0][0], base64.b64decode(files[0][1]))] if only_program else None,
        )
        outcome["forkServer"] = forkserver is not None
        outcome["phase"] = "code"
        paths = req.get("outputPaths") or []
        if paths and not outcome["timedOut"] and not outcome["cancelled"]:
            max_file = int(req.get("maxFileBytes", 10 * 1024 * 1024))
            max_total = int(req.get("maxOutputFilesBytes", max_file))
            outcome["files"] = self.as_code_user(lambda: read_output_files(paths, max_file, max_total, self.roots))
        return outcome

    def run_program(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str,
        stdin: bytes,
        kinds: tuple[bytes, bytes],
        limits: RunLimits,
        prepare: Callable[[], None] | None = None,
        forkserver: ForkServer | None = None,
        forked_files: list[tuple[str, bytes]] | None = None,
    ) -> dict[str, Any]:
        """Run one program to completion and stream its output; returns its outcome.

        With a fork server, ``forked_files`` (just the program file) are written
        by the forked run itself; anything more is written by ``prepare`` in a
        helper first.
        """
        started = time.monotonic()
        reap: Callable[[], int]
        if forkserver is not None:
            if forked_files is None and prepare is not None:
                self.as_code_user(prepare)
            proc = forkserver.launch(argv, env, cwd, forked_files or [])
            reap = forkserver.wait
        else:
            proc = self.spawn(argv, env, cwd, prepare)
            reap = lambda: os.waitpid(proc.pid, 0)[1]  # noqa: E731
        pump = OutputPump(self.writer, kinds, limits.max_output)
        return ProgramRun(self, proc, reap, pump, stdin=stdin, limits=limits, started=started).run()


class ProgramRun:
    """One started program, until it ended and its pipes are drained: the select loop."""

    def __init__(
        self,
        runner: Runner,
        proc: Process,
        reap: Callable[[], int],
        pump: OutputPump,
        *,
        stdin: bytes,
        limits: RunLimits,
        started: float,
    ) -> None:
        self.runner = runner
        self.proc = proc
        self.reap = reap
        self.pump = pump
        self.limits = limits
        self.started = started
        self.status: int | None = None
        self.timed_out = False
        self.cancelled = False
        self.sel = selectors.DefaultSelector()
        self.in_w = proc.stdin
        self.stdin_view = memoryview(stdin)
        self.open_pipes = {proc.stdout, proc.stderr}

    def run(self) -> dict[str, Any]:
        """Pump until the program ended (or its deadline passed), drain its pipes; its outcome."""
        self._watch()
        status = self._wait()
        duration_ms = int((time.monotonic() - self.started) * 1000)
        if self.in_w >= 0:
            os.close(self.in_w)
        self._drain()
        for fd in (self.proc.stdout, self.proc.stderr, self.proc.pidfd):
            os.close(fd)
        self.sel.close()
        return self._outcome(status, duration_ms)

    def _watch(self) -> None:
        """Register what the loop waits for: stdin to feed, both outputs, the exit, the worker."""
        os.set_blocking(self.in_w, False)
        if self.stdin_view:
            self.sel.register(self.in_w, selectors.EVENT_WRITE, self._feed_stdin)
        else:
            os.close(self.in_w)
            self.in_w = -1
        self.sel.register(self.proc.stdout, selectors.EVENT_READ, self._read_stdout)
        self.sel.register(self.proc.stderr, selectors.EVENT_READ, self._read_stderr)
        self.sel.register(self.proc.pidfd, selectors.EVENT_READ, self._exited)
        # The worker may send {"op": "cancel"} on our stdin while the program runs.
        self.sel.register(self.runner.control_fd, selectors.EVENT_READ, self._control)

    def _wait(self) -> int:
        """The select loop, until the program's wait status is known."""
        while self.status is None:
            self._step()
        return self.status

    def _step(self) -> None:
        """Wait for the next events (at most until the deadline, or until held-back output is due)."""
        now = time.monotonic()
        if now >= self.limits.deadline:
            self._time_out()
            return
        hint = self.pump.wait_hint()
        wait = self.limits.deadline - now if hint is None else min(hint, self.limits.deadline - now)
        for key, _ in self.sel.select(wait):
            key.data(key.fd)  # one of the handlers _watch registered
        if hint is not None:
            self.pump.flush()

    def _time_out(self) -> None:
        self.timed_out = True
        self.runner.kill()
        self.status = self.reap()

    def _exited(self, _: int) -> None:
        self.status = self.reap()

    def _control(self, fd: int) -> None:
        """A message of the worker during the run: a cancel, or the next request sent ahead."""
        try:
            ctl = read_request(fd)
        except (OpError, ValueError):
            ctl = None
        if ctl is None:
            self.sel.unregister(fd)  # the worker closed its side; the deadline still holds
        elif ctl.get("op") == "cancel":
            if not self.cancelled:
                self.cancelled = True
                self.runner.kill()
        else:
            self.runner.pending.append(ctl)  # a request sent ahead: served after this run

    def _feed_stdin(self, fd: int) -> None:
        try:
            self.stdin_view = self.stdin_view[os.write(fd, self.stdin_view[:READ_CHUNK]) :]
        except BrokenPipeError:
            self.stdin_view = self.stdin_view[:0]
        if not self.stdin_view:
            self.sel.unregister(fd)
            os.close(fd)
            self.in_w = -1

    def _read_stdout(self, fd: int) -> None:
        self._read_output(0, fd)

    def _read_stderr(self, fd: int) -> None:
        self._read_output(1, fd)

    def _read_output(self, stream: int, fd: int) -> None:
        chunk = os.read(fd, READ_CHUNK)
        if chunk:
            self.pump.feed(stream, chunk)
        else:
            self.sel.unregister(fd)
            self.open_pipes.discard(fd)

    def _drain(self) -> None:
        """Collect what the program wrote before it exited.

        Processes it left in the background may still hold the pipes: in a
        one-shot sandbox they are killed now so the pipes reach EOF; in a
        session they live on and later output of theirs is dropped.
        """
        if self.limits.kill_leftovers and self.open_pipes:
            self.runner.kill()
        drain_until = time.monotonic() + (2.0 if self.limits.kill_leftovers else 0.0)
        for fd in list(self.open_pipes):
            os.set_blocking(fd, False)
        while self.open_pipes:
            for fd in list(self.open_pipes):
                self._drain_pipe(fd, drain_until)
            if self.open_pipes and time.monotonic() < drain_until:
                select.select(list(self.open_pipes), [], [], 0.05)
        self.pump.flush()

    def _drain_pipe(self, fd: int, drain_until: float) -> None:
        data: bytes | None
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            data = None
        if data:
            self.pump.feed(0 if fd == self.proc.stdout else 1, data)
        elif data == b"" or time.monotonic() >= drain_until:
            self.open_pipes.discard(fd)

    def _outcome(self, status: int, duration_ms: int) -> dict[str, Any]:
        exit_code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if self.timed_out or self.cancelled:
            exit_code = 137
        return {
            "exitCode": exit_code,
            "timedOut": self.timed_out,
            "cancelled": self.cancelled,
            "durationMs": duration_ms,
            "stdoutBytes": self.pump.totals[0],
            "stderrBytes": self.pump.totals[1],
            "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
        }
