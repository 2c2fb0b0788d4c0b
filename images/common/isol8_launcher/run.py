"""A run: its files, the optional setup script, the program, its output and its outcome.

``Runner`` serves one ``run`` request at a time; each program (the setup
script, then the code) is a ``ProgramRun``: started, its stdin fed, its
stdout and stderr forwarded as frames, the worker's control messages
(cancel; live stdin, signals and terminal size for interactive runs)
obeyed, its deadline enforced, and its outcome summed up in the ``x`` frame.
How processes are started and killed is given to the Runner (the launcher's
CodeUser in a sandbox), so the loop runs anywhere.
"""

from __future__ import annotations

import base64
import errno
import os
import select
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

from isol8_launcher.forkclient import ForkServer
from isol8_launcher.paths import RUN_FILE_ROOTS, read_output_files, write_files
from isol8_launcher.procs import OOM_FILES, PIDS_FILES, Process, Spawn, cgroup_counter, set_terminal_size
from isol8_launcher.protocol import READ_CHUNK, FrameWriter, OpError, read_request

# Output is forwarded at once when the stream has been quiet for this long;
# otherwise chunks are held back and merged, so a program printing 100 000 short
# lines produces a few hundred frames, not 100 000.
COALESCE_SECONDS = 0.004
COALESCE_BYTES = 32 * 1024
# An interactive run's stdin: the worker may have this many bytes on their way
# (written to us, not yet to the program); an "i" frame returns credit as the
# program reads. So this process never holds more than that of stdin.
STDIN_CREDIT_BYTES = 16 * 1024
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
EOT = b"\x04"  # a terminal's end of input (what Ctrl-D types)
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


def _terminal_size(value: Any) -> tuple[int, int] | None:
    """A request's ``tty``: [cols, rows], or nothing (no terminal)."""
    if not value:
        return None
    cols, rows = value
    return max(1, min(int(cols), 1000)), max(1, min(int(rows), 1000))


class RunLimits:
    """What a run request allows its programs (one deadline for both, the output cap) and how its code runs."""

    def __init__(
        self,
        *,
        deadline: float,
        max_output: int,
        kill_leftovers: bool,
        interactive: bool = False,
        tty: tuple[int, int] | None = None,
    ) -> None:
        self.deadline = deadline
        self.max_output = max_output
        # One-shot sandboxes: processes left behind are killed when the program ends.
        self.kill_leftovers = kill_leftovers
        # The code's stdin stays open for the worker's stdin messages (until their eof).
        self.interactive = interactive
        self.tty = tty  # (cols, rows): the code runs on a pseudo-terminal


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
        # An interactive run's stdin and resize messages that came during its
        # setup script: the code's, given to it once it started.
        self.held_input: list[dict[str, Any]] = []

    def run_request(self, req: dict[str, Any]) -> None:
        """Write files, run the optional setup script, then the program; send the outcome (``x``)."""
        started = time.monotonic()
        self.held_input.clear()
        timeout = max(0.001, float(req.get("timeoutMs", 30000)) / 1000.0)
        limits = RunLimits(
            deadline=started + timeout,
            max_output=int(req.get("maxOutput", 1024 * 1024)),
            kill_leftovers=bool(req.get("killLeftovers", True)),
            interactive=bool(req.get("interactive")),
            tty=_terminal_size(req.get("tty")),
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
                                   limits=limits, prepare=prepare, code=False)
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
        # A terminal is made by spawn: the fork server's runs have pipes.
        forkserver = self.forkserver_for(env) if req.get("forkServer") and limits.tty is None else None
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
        code: bool = True,
    ) -> dict[str, Any]:
        """Run one program to completion and stream its output; returns its outcome.

        With a fork server, ``forked_files`` (just the program file) are written
        by the forked run itself; anything more is written by ``prepare`` in a
        helper first. ``code``: the run's code (not its setup script), which
        runs as the request says (interactive, on a terminal).
        """
        tty = limits.tty if code else None
        started = time.monotonic()
        reap: Callable[[], int]
        if forkserver is not None:
            if forked_files is None and prepare is not None:
                self.as_code_user(prepare)
            proc = forkserver.launch(argv, env, cwd, forked_files or [])
            reap = forkserver.wait
        else:
            proc = self.spawn(argv, env, cwd, prepare, tty) if tty is not None else self.spawn(argv, env, cwd, prepare)
            reap = lambda: os.waitpid(proc.pid, 0)[1]  # noqa: E731
        pump = OutputPump(self.writer, kinds, limits.max_output)
        return ProgramRun(
            self, proc, reap, pump, stdin=stdin, limits=limits, started=started,
            interactive=code and limits.interactive, tty=tty is not None,
        ).run()


INPUT_OPS = ("stdin", "signal", "resize")  # an interactive run's live messages


def _read_some(fd: int) -> bytes:
    """Up to READ_CHUNK bytes of a pipe or a terminal's master side; b"" at the end.

    A terminal's master reads EIO, not EOF, once no process holds its other side.
    """
    try:
        return os.read(fd, READ_CHUNK)
    except OSError as exc:
        if exc.errno == errno.EIO:
            return b""
        raise


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
        interactive: bool = False,
        tty: bool = False,
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
        self.stdin_buf = bytearray(stdin)
        self.interactive = interactive  # stdin stays open for stdin messages, until their eof
        self.tty = tty  # stdin and stdout are the master side of the program's terminal
        self.stdin_eof = False  # an interactive run's eof came (its stdin closes once written)
        self.credit_due = 0  # stdin bytes the program took that the worker has not heard of
        # The request's own stdin (and a terminal's Ctrl-Ds) never counted in the worker's window.
        self.uncounted = len(stdin)
        self.line_open = bool(stdin) and not stdin.endswith(b"\n")  # the last stdin byte was not a newline
        self.open_pipes = {proc.stdout, proc.stderr}

    def run(self) -> dict[str, Any]:
        """Pump until the program ended (or its deadline passed), drain its pipes; its outcome."""
        self._watch()
        if self.interactive:
            held, self.runner.held_input = self.runner.held_input, []
            for ctl in held:
                self._input(ctl)
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
        if self.tty and not self.interactive:
            ending = self._end_of_terminal_input()
            self.stdin_buf += ending
            self.uncounted += len(ending)
        if self.stdin_buf:
            self.sel.register(self.in_w, selectors.EVENT_WRITE, self._feed_stdin)
        elif not self.interactive:
            self._close_stdin()
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
        op = ctl.get("op") if ctl is not None else None
        if ctl is None:
            self.sel.unregister(fd)  # the worker closed its side; the deadline still holds
        elif op == "cancel":
            if not self.cancelled:
                self.cancelled = True
                self._cancel()
        elif op in INPUT_OPS:
            if self.interactive:
                self._input(ctl)
            elif self.limits.interactive and op != "signal":
                self.runner.held_input.append(ctl)  # the setup script's run: kept for the code
        else:
            self.runner.pending.append(ctl)  # a request sent ahead: served after this run

    def _cancel(self) -> None:
        """The worker cancelled the run: everything of the code user is killed."""
        self.runner.kill()

    def _input(self, ctl: dict[str, Any]) -> None:
        """A live message for the program: stdin bytes or its eof, a signal, the terminal's size."""
        op = ctl["op"]
        if op == "stdin":
            data = base64.b64decode(ctl.get("data") or "")
            if self.in_w < 0 or self.stdin_eof:
                # Closed already: dropped, as a closed pipe would; still credited,
                # or the worker's window would stay taken by bytes that never come back.
                self.credit_due += len(data)
                self._return_credit()
                return
            was_empty = not self.stdin_buf
            self.stdin_buf += data
            if data:
                self.line_open = not data.endswith(b"\n")
            if ctl.get("eof"):
                self.stdin_eof = True
                if self.tty:
                    ending = self._end_of_terminal_input()
                    self.stdin_buf += ending
                    self.uncounted += len(ending)
            if was_empty and self.stdin_buf:
                self.sel.register(self.in_w, selectors.EVENT_WRITE, self._feed_stdin)
            elif not self.stdin_buf and self.stdin_eof:
                self._close_stdin()
        elif op == "signal":
            sig = SIGNALS.get(str(ctl.get("signal")))
            if sig is not None:
                self._signal(sig)
        elif op == "resize" and self.tty:
            try:
                cols, rows = (max(1, min(int(ctl[side]), 1000)) for side in ("cols", "rows"))
                set_terminal_size(self.proc.stdout, cols, rows)
            except (KeyError, TypeError, ValueError, OSError):
                pass  # the web checks sizes; a bad one here is ignored

    def _end_of_terminal_input(self) -> bytes:
        """What ends a terminal's input (it stays open): Ctrl-D once after a full line, twice after a partial one."""
        partial = self.line_open if self.interactive else bool(self.stdin_buf) and not self.stdin_buf.endswith(b"\n")
        return EOT + EOT if partial else EOT

    def _signal(self, sig: int) -> None:
        """``sig`` to the program's process group; on a terminal, to its foreground group."""
        group = self.proc.pid  # the program leads its own session and group
        if self.tty:
            try:
                group = os.tcgetpgrp(self.proc.stdout)
            except OSError:
                pass

        def send() -> None:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                pass

        try:
            self.runner.as_code_user(send)
        except OpError:
            pass  # nothing of the code user's to signal there

    def _feed_stdin(self, fd: int) -> None:
        try:
            written = os.write(fd, self.stdin_buf[:READ_CHUNK])
        except BlockingIOError:
            return
        except OSError:  # the program closed its stdin (EPIPE), or its terminal is gone
            written = len(self.stdin_buf)
        del self.stdin_buf[:written]
        counted = max(0, written - self.uncounted)
        self.uncounted = max(0, self.uncounted - written)
        self.credit_due += counted
        if not self.stdin_buf:
            self.sel.unregister(fd)
            if not self.interactive or self.stdin_eof:
                self._close_stdin()
        self._return_credit()

    def _return_credit(self) -> None:
        """Tell the worker how much stdin the program took (interactive runs), in few frames."""
        if self.interactive and self.credit_due and (not self.stdin_buf or self.credit_due >= STDIN_CREDIT_BYTES // 2):
            self.runner.writer.send_json(b"i", {"bytes": self.credit_due})
            self.credit_due = 0

    def _close_stdin(self) -> None:
        if self.in_w >= 0:
            os.close(self.in_w)
            self.in_w = -1

    def _read_stdout(self, fd: int) -> None:
        self._read_output(0, fd)

    def _read_stderr(self, fd: int) -> None:
        self._read_output(1, fd)

    def _read_output(self, stream: int, fd: int) -> None:
        try:
            chunk = _read_some(fd)
        except BlockingIOError:  # a terminal's master shares its stdin side's O_NONBLOCK
            return
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
            data = _read_some(fd)
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
