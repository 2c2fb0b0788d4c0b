"""Running one execution in a sandbox: the launcher request, the output, the outcome.

It takes an ExecutionSpec and its Limits, drives a Sandbox, hands output to a
``publish`` callback as it arrives (the worker publishes stream events with
it), masks secrets, keeps a bounded copy for the history, and returns a
RunResult.
"""

from __future__ import annotations

import base64
import codecs
import logging
import posixpath
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.cells import STATEFUL_RUNTIMES, CellOutputs, build_cell_request, kernel_request
from sandbox.config import current
from sandbox.containers import Sandbox, container_state
from sandbox.errors import SandboxError
from sandbox.gateway import proxy_environment
from sandbox.runtimes import BASE_ENV, RUNTIMES, SANDBOX, SETUP_ENV, SYSTEM_TRUST_ENV
from sandbox.spec import ExecutionSpec, Limits, RunResult, truncation_marker

logger = logging.getLogger(__name__)

SETUP_PATH = "/sandbox/.isol8-setup.sh"
# Extra time the worker gives the launcher past the run's own timeout (output
# files, kill sweeps) before it declares the sandbox broken.
LAUNCHER_GRACE_SECONDS = 10.0
STREAMS = {"o": ("stdout", "code"), "e": ("stderr", "code"), "O": ("stdout", "setup"), "E": ("stderr", "setup")}

# (type, data, phase): data is text, or a MIME bundle for a stateful cell's "display".
Publish = Callable[[str, "str | dict[str, Any]", str | None], None]
# Live stdin on its way to an interactive run's launcher, not yet read by the
# program, is at most this much (or one message, if that is larger): the
# launcher's "i" frames give credit back as the program reads.
STDIN_WINDOW_BYTES = 16 * 1024
TERMINAL_SIZE = [80, 24]  # a tty run's terminal until the client resizes it
STATEFUL_NEEDS_LAUNCHER = "Stateful sessions need the launcher sandbox mode (ISOL8_SANDBOX_MODE=launcher)"


def resolve_workdir(workdir: str) -> str:
    """isol8's rule: resolved against /sandbox, and it must stay inside."""
    path = posixpath.normpath(posixpath.join(SANDBOX, workdir or "."))
    if path != SANDBOX and not path.startswith(SANDBOX + "/"):
        raise ValueError("Working directory must be inside /sandbox")
    return path


def prepare_sandbox(box: Sandbox, *, stateful: bool = False) -> None:
    """Get a new sandbox ready for its first run: python ones get a fork server, stateful ones an interpreter.

    The launcher then forks each python run from a python3 it started once, so
    a run does not pay the interpreter's start-up (~20 ms of CPU here); see the
    launcher's forkserver module. A stateful session's launcher starts its
    interpreter right away (kernel.py), so the first cell finds it ready.
    """
    if box.mode != "launcher":
        return
    if stateful and box.runtime in STATEFUL_RUNTIMES:
        box.request(kernel_request(box.runtime, box.limits), timeout=30.0)
    elif box.runtime == "python" and current().python_fork_server:
        box.request({"op": "forkserver", "argv": ["python3"], "env": BASE_ENV}, timeout=30.0)


def build_request(
    spec: ExecutionSpec,
    limits: Limits,
    *,
    in_session: bool,
    reset_after: bool = False,
    fork_server: bool = False,
) -> dict[str, Any]:
    """The launcher's ``run`` request for a spec (files, argv, env, limits)."""
    runtime = RUNTIMES[spec.runtime]
    files: list[list[str]] = []
    for path, text in spec.files.items():
        full = path if path.startswith("/") else posixpath.join(SANDBOX, path)
        files.append([full, base64.b64encode(text.encode()).decode()])
    if spec.cmd.strip():
        argv = ["bash", "-c", spec.cmd]
    else:
        extension = spec.file_extension or runtime.extension
        # Sessions keep their files, so each run gets its own file name, as isol8 does.
        name = f"exec_{int(time.time() * 1000)}{extension}" if in_session else f"main{extension}"
        code_path = f"{SANDBOX}/{name}"
        files.append([code_path, base64.b64encode(spec.code.encode()).decode()])
        argv = runtime.argv(code_path)
    env = dict(BASE_ENV)
    env.update(runtime.env)
    if limits.network == "filtered":
        env.update(proxy_environment())  # ordinary clients find the egress gateway's relay
        env.update(SYSTEM_TRUST_ENV)
    env.update(spec.secrets)
    env.update(spec.env)
    request: dict[str, Any] = {
        "op": "run",
        "argv": argv,
        "env": env,
        "cwd": resolve_workdir(spec.workdir),
        "files": files,
        "stdin": base64.b64encode(spec.stdin.encode()).decode(),
        "timeoutMs": limits.timeout_ms,
        "maxOutput": limits.max_output,
        "outputPaths": [
            p if p.startswith("/") else posixpath.join(SANDBOX, p) for p in spec.output_paths
        ],
        "maxFileBytes": current().file_max_bytes,
        # All outputPaths together (each file counted once, no symlinks followed).
        "maxOutputFilesBytes": current().output_files_max,
        # One-shot sandboxes are reset after the run anyway; killing leftovers
        # at once also gives their pipes EOF. Sessions keep background processes.
        "killLeftovers": not in_session,
        "resetAfter": reset_after,
        # The launcher forks the run from its python fork server when that one's
        # start-up environment matches this run's, and starts python3 otherwise.
        "forkServer": fork_server and spec.runtime == "python" and not spec.cmd.strip(),
    }
    if spec.interactive:
        request["interactive"] = True
    if spec.tty:
        request["tty"] = TERMINAL_SIZE
    if spec.setup_script.strip():
        files.insert(0, [SETUP_PATH, base64.b64encode(spec.setup_script.encode()).decode()])
        request["setup"] = ["bash", SETUP_PATH]
        request["setupEnv"] = SETUP_ENV
    return request


class Masker:
    """Replaces secret values with ``***`` in a stream of text.

    One compiled alternation finds every secret in a single pass over each
    chunk (longest secrets first, so a secret containing another is masked
    whole), exactly as one pass over the whole output would. A chunk may end
    in the middle of a secret, so the longest tail that could still grow into
    one is held back until the next chunk (or the end); finding it looks only at the last ``longest - 1`` characters and
    only where a secret's first character occurs. With at most
    ISOL8_MAX_SECRETS secrets of at most ISOL8_MAX_SECRET_BYTES, the cost is
    linear in the output.
    """

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, self.secrets))) if self.secrets else None
        self.window = len(self.secrets[0]) - 1 if self.secrets else 0
        self.pending = ""

    def feed(self, text: str) -> str:
        if self.pattern is None:
            return text
        raw = self.pending + text
        # What might be the start of a secret that the next chunk completes is
        # kept back, and no match may start there yet: a short secret there could
        # be the beginning of a longer one, which the whole text would mask.
        held_from = len(raw) - self._partial_secret_at_end(raw)
        out: list[str] = []
        position = 0
        for match in self.pattern.finditer(raw):
            if match.start() >= held_from:
                break
            out += (raw[position : match.start()], "***")
            position = match.end()
        held_from = max(held_from, position)
        out.append(raw[position:held_from])
        self.pending = raw[held_from:]
        return "".join(out)

    def _partial_secret_at_end(self, text: str) -> int:
        """Length of the longest end of ``text`` that a secret starts with (0: none)."""
        tail = text[-self.window :] if self.window else ""
        best = 0
        for secret in self.secrets:
            first = secret[0]
            start = max(0, len(tail) - len(secret) + 1)
            position = tail.find(first, start)
            while position != -1 and len(tail) - position > best:
                if secret.startswith(tail[position:]):
                    best = len(tail) - position
                    break
                position = tail.find(first, position + 1)
        return best

    def flush(self) -> str:
        """The end of the stream: what was held back, with its secrets masked."""
        rest, self.pending = self.pending, ""
        return self.pattern.sub("***", rest) if self.pattern is not None and rest else rest


@dataclass
class StreamOutput:
    """One output stream of one phase: decoding, masking, and the bounded history copy."""

    name: str
    phase: str
    masker: Masker
    history_max: int
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    parts: list[str] = field(default_factory=list)
    size: int = 0
    truncated: bool = False  # the launcher cut it at maxOutputSize

    def feed(self, data: bytes, *, final: bool = False) -> str:
        text = self.masker.feed(self.decoder.decode(data, final))
        if final:
            text += self.masker.flush()
        if text and self.size < self.history_max:
            keep = text[: self.history_max - self.size]
            self.parts.append(keep)
            self.size += len(keep)
        return text

    def text(self) -> str:
        return "".join(self.parts)


class OutputCollector:
    """Routes launcher output frames to history and, for streamed runs, to events."""

    def __init__(self, *, secrets: list[str], history_max: int, publish: Publish | None) -> None:
        self.publish = publish
        self.streams: dict[str, StreamOutput] = {}
        for kind, (name, phase) in STREAMS.items():
            self.streams[kind] = StreamOutput(
                name=name, phase=phase, masker=Masker(secrets), history_max=history_max
            )

    def feed(self, kind: str, data: bytes) -> None:
        stream = self.streams[kind]
        text = stream.feed(data)
        if text and self.publish is not None:
            self.publish(stream.name, text, stream.phase)

    def truncated(self, kind: str, seen: int, limit: int) -> None:
        """A stream passed maxOutputSize: streamed runs get isol8's marker once, now."""
        stream = self.streams[kind]
        text = stream.feed(b"", final=True)  # what was held back belongs before the marker
        if self.publish is not None:
            self.publish(stream.name, text + truncation_marker(seen, limit), stream.phase)

    def finish(self) -> None:
        """Publish what each stream held back (a secret's possible start, a split character)."""
        for stream in self.streams.values():
            text = stream.feed(b"", final=True)
            if text and self.publish is not None:
                self.publish(stream.name, text, stream.phase)

    def text(self, kind: str) -> str:
        return self.streams[kind].text()


@dataclass
class RunHandle:
    """A run in progress on this worker, so a cancel (and an interactive run's input) can reach it.

    Input is let through once the run request is on its way (``open_input``),
    at most STDIN_WINDOW_BYTES ahead of what the program read (``credit``),
    and never after the run ended (``close_input``).
    """

    execution_id: str
    sandbox: Sandbox | None = None
    cancelled: bool = False
    input_open: bool = False
    input_closed: bool = False
    in_flight: int = 0  # stdin bytes sent to the launcher, not yet read by the program
    window: threading.Condition = field(default_factory=threading.Condition)

    def cancel(self) -> None:
        self.cancelled = True
        if self.sandbox is not None:
            self.sandbox.cancel()

    def open_input(self) -> None:
        with self.window:
            self.input_open = True
            self.window.notify_all()

    def close_input(self) -> None:
        with self.window:
            self.input_closed = True
            self.window.notify_all()

    def credit(self, read: int) -> None:
        with self.window:
            self.in_flight = max(0, self.in_flight - read)
            self.window.notify_all()

    def room_for(self, size: int, timeout: float) -> bool:
        """True once ``size`` stdin bytes may go now (waits at most ``timeout``); False if not, or the run ended."""
        deadline = time.monotonic() + timeout
        with self.window:
            while not self.input_closed and not (self.input_open and (
                not self.in_flight or self.in_flight + size <= STDIN_WINDOW_BYTES
            )):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.window.wait(remaining)
            return not self.input_closed

    def send_input(self, message: dict[str, Any], size: int = 0) -> bool:
        """Forward one input message (``size``: its stdin bytes), waiting for room; False once the run ended."""
        with self.window:
            while not self.input_closed and (
                not self.input_open or (size and self.in_flight and self.in_flight + size > STDIN_WINDOW_BYTES)
            ):
                self.window.wait(0.5)
            if self.input_closed or self.sandbox is None:
                return False
            self.in_flight += size
            box = self.sandbox
        return box.send_control(message)


def run_in_sandbox(
    box: Sandbox,
    spec: ExecutionSpec,
    limits: Limits,
    *,
    in_session: bool,
    history_max: int,
    publish: Publish | None,
    handle: RunHandle,
) -> RunResult:
    """Run ``spec`` in ``box``; stream events through ``publish``; return the outcome.

    User code that fails, times out or is OOM-killed is a normal result. A
    failure of the sandbox itself is a RunResult with status ``error`` and
    ``box.broken`` set, so the caller destroys the container.
    """
    # The launcher resets a one-shot sandbox on its own right after the run; the
    # exec fallback cannot (its exec ends with the run), so the pool asks later.
    reset_after = not in_session and box.mode == "launcher"
    cell: CellOutputs | None = None
    if spec.stateful:
        if box.mode != "launcher":
            return RunResult(status="error", error=STATEFUL_NEEDS_LAUNCHER, container_id=box.container_id)
        request = build_cell_request(spec, limits)
        cell = CellOutputs(secrets=[v for v in spec.secrets.values() if v])
    else:
        request = build_request(
            spec,
            limits,
            in_session=in_session,
            reset_after=reset_after,
            fork_server=box.mode == "launcher" and current().python_fork_server,
        )
    collector = OutputCollector(
        secrets=list(spec.secrets.values()), history_max=history_max, publish=publish
    )
    outcome: dict[str, Any] = {}
    handle.sandbox = box
    started = time.monotonic()
    try:
        if handle.cancelled:
            raise SandboxError("cancelled before it started")
        timeout = limits.timeout_ms / 1000.0 + LAUNCHER_GRACE_SECONDS
        for frame in box.call(request, timeout, on_sent=handle.open_input):
            if frame.kind in STREAMS:
                collector.feed(frame.kind, frame.payload)
            elif frame.kind == "t":
                marker = frame.json()
                collector.truncated(marker["kind"], int(marker["bytes"]), limits.max_output)
            elif frame.kind == "i":
                handle.credit(int(frame.json().get("bytes", 0)))
            elif frame.kind == "d" and cell is not None:
                shown = cell.display(frame.payload)
                if shown is not None and publish is not None:
                    collector.finish()  # what the cell printed before the display goes first
                    publish("display", shown, "code")
            elif frame.kind == "x":
                handle.close_input()
                outcome = frame.json()
                box.reset_pending = reset_after
    except SandboxError as exc:
        collector.finish()
        if handle.cancelled:
            return _cancelled_result(collector, started, box)
        logger.warning("run of %s in %s failed: %s (%s)", handle.execution_id, box.container_id[:12], exc,
                       container_state(box.container_id))
        return RunResult(
            status="error",
            error=f"The sandbox failed: {exc}",
            duration_ms=int((time.monotonic() - started) * 1000),
            stdout=collector.text("o"),
            stderr=collector.text("e"),
            container_id=box.container_id,
        )
    finally:
        handle.close_input()
        handle.sandbox = None
    collector.finish()
    result = _result_from_outcome(outcome, collector, limits, box, handle)
    if cell is not None and "error" not in outcome:
        result.cell = cell.result(outcome)
    return result


def _cancelled_result(collector: OutputCollector, started: float, box: Sandbox) -> RunResult:
    return RunResult(
        status="cancelled",
        exit_code=137,
        stdout=collector.text("o"),
        stderr=collector.text("e"),
        duration_ms=int((time.monotonic() - started) * 1000),
        error="Cancelled",
        container_id=box.container_id,
    )


def _result_from_outcome(
    outcome: dict[str, Any],
    collector: OutputCollector,
    limits: Limits,
    box: Sandbox,
    handle: RunHandle,
) -> RunResult:
    if "error" in outcome:
        # The launcher refused the run (a file it could not write, a missing binary).
        code = outcome.get("code", "error")
        return RunResult(
            status="error",
            error=str(outcome["error"]),
            error_code="sandbox_full" if code == "sandbox_full" else "run_failed",
            container_id=box.container_id,
        )
    exit_code = int(outcome.get("exitCode", 1))
    timed_out = bool(outcome.get("timedOut"))
    cancelled = bool(outcome.get("cancelled")) or handle.cancelled
    oom = bool(outcome.get("oom")) and exit_code == 137 and not timed_out and not cancelled
    # A stateful cell's launcher cleans up itself: an interrupted cell keeps the
    # interpreter, a killed one goes with every process of the code user.
    if (timed_out or oom or outcome.get("pidsExhausted")) and not outcome.get("cell"):
        box.broken = True  # rule 3: never reuse it
    if cancelled:
        status = "cancelled"
    elif timed_out:
        status = "timeout"
    elif oom:
        status = "oom"
    else:
        status = "ok"
    setup_failed = outcome.get("phase") == "setup"
    stdout_total = int(outcome.get("stdoutBytes", 0))
    stderr_total = int(outcome.get("stderrBytes", 0))
    if setup_failed:
        stdout, stderr = collector.text("O"), collector.text("E")
    else:
        stdout, stderr = collector.text("o"), collector.text("e")
    return RunResult(
        status=status,
        exit_code=137 if cancelled else exit_code,
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=stdout_total > limits.max_output,
        stderr_truncated=stderr_total > limits.max_output,
        stdout_total=stdout_total,
        stderr_total=stderr_total,
        timed_out=timed_out,
        duration_ms=int(outcome.get("durationMs", 0)),
        files=outcome.get("files"),
        container_id=box.container_id,
        setup_failed=setup_failed and not timed_out and not cancelled,
        error="Cancelled" if cancelled else "",
    )
