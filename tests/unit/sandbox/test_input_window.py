"""An interactive run's input on the worker side (sandbox/run.py): RunHandle's window, the request, the "i" frames.

send_input blocks its caller (the input pump's thread); each test runs it in
a thread and looks, with short timeouts, whether it is still waiting.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from typing import Any, cast

import pytest

from sandbox.errors import SandboxError
from sandbox.protocol import Frame
from sandbox.run import STDIN_WINDOW_BYTES, RunHandle, build_request, run_in_sandbox
from sandbox.spec import ExecutionSpec
from tests.unit.sandbox.conftest import LIMITS, FakeTransport, fake_box

STILL_WAITING = 0.1  # how long a blocked send_input is watched before the test lets it go
DONE = 2.0  # how long a send_input that was let go may take to return

SIGINT = {"op": "signal", "signal": "SIGINT"}


def stdin(size: int) -> dict[str, Any]:
    return {"op": "stdin", "data": "x" * size}  # the size, not the content, is what counts here


class Sender:
    """``handle.send_input(message, size)`` in a thread of its own; ``result`` once it returned."""

    def __init__(self, handle: RunHandle, message: dict[str, Any], size: int = 0) -> None:
        self.result: bool | None = None
        self.thread = threading.Thread(target=self._send, args=(handle, message, size), daemon=True)
        self.thread.start()

    def _send(self, handle: RunHandle, message: dict[str, Any], size: int) -> None:
        self.result = handle.send_input(message, size)

    def waiting(self) -> bool:
        self.thread.join(STILL_WAITING)
        return self.thread.is_alive()

    def returned(self) -> bool | None:
        self.thread.join(DONE)
        assert not self.thread.is_alive(), "send_input still waits"
        return self.result


@pytest.fixture
def handle() -> RunHandle:
    """A handle of a run on a fake sandbox: what it forwards is in ``sandbox.transport.controls``."""
    return RunHandle("e1", sandbox=fake_box())


def sent(handle: RunHandle) -> list[dict[str, Any]]:
    assert handle.sandbox is not None
    return list(cast(FakeTransport, handle.sandbox.transport).controls)


# ------------------------------------------------------------------ RunHandle


def test_input_waits_until_the_run_request_is_sent(handle):
    sender = Sender(handle, stdin(3), 3)
    assert sender.waiting() and sent(handle) == []
    handle.open_input()
    assert sender.returned() is True
    assert sent(handle) == [stdin(3)]


def test_a_full_window_holds_stdin_until_credit_comes(handle):
    handle.open_input()
    assert handle.send_input(stdin(STDIN_WINDOW_BYTES), STDIN_WINDOW_BYTES) is True
    sender = Sender(handle, stdin(1), 1)
    assert sender.waiting() and len(sent(handle)) == 1
    handle.credit(STDIN_WINDOW_BYTES)
    assert sender.returned() is True
    assert sent(handle) == [stdin(STDIN_WINDOW_BYTES), stdin(1)]


def test_credit_for_part_of_the_window_lets_through_what_fits(handle):
    handle.open_input()
    handle.send_input(stdin(STDIN_WINDOW_BYTES - 10), STDIN_WINDOW_BYTES - 10)
    sender = Sender(handle, stdin(20), 20)
    assert sender.waiting()
    handle.credit(5)  # 15 bytes of room: still not enough
    assert sender.waiting()
    handle.credit(5)
    assert sender.returned() is True


def test_a_message_larger_than_the_window_goes_when_nothing_is_in_flight(handle):
    handle.open_input()
    assert handle.send_input(stdin(4 * STDIN_WINDOW_BYTES), 4 * STDIN_WINDOW_BYTES) is True
    assert handle.in_flight == 4 * STDIN_WINDOW_BYTES


def test_signals_and_resizes_pass_a_full_window(handle):
    handle.open_input()
    handle.send_input(stdin(STDIN_WINDOW_BYTES), STDIN_WINDOW_BYTES)
    assert handle.send_input(SIGINT) is True
    assert sent(handle)[-1] == SIGINT


def test_credit_never_makes_the_count_negative(handle):
    handle.open_input()
    handle.send_input(stdin(10), 10)
    handle.credit(100)
    assert handle.in_flight == 0


@pytest.mark.parametrize("opened", [False, True], ids=["before-the-request", "window-full"])
def test_a_waiting_send_returns_false_once_the_run_ended(handle, opened):
    if opened:
        handle.open_input()
        handle.send_input(stdin(STDIN_WINDOW_BYTES), STDIN_WINDOW_BYTES)
    sender = Sender(handle, stdin(1), 1)
    assert sender.waiting()
    handle.close_input()
    assert sender.returned() is False
    assert stdin(1) not in sent(handle)


def test_input_after_the_run_ended_is_refused_at_once(handle):
    handle.open_input()
    handle.close_input()
    assert handle.send_input(SIGINT) is False
    assert sent(handle) == []


# ------------------------------------------------------------------ the request


def spec(**fields: Any) -> ExecutionSpec:
    return ExecutionSpec.from_request({"runtime": "python", "code": "input()", **fields}, {})


def test_an_interactive_tty_run_asks_the_launcher_for_both(engine):
    request = build_request(replace(spec(tty=True), interactive=True), LIMITS, in_session=False)
    assert (request["interactive"], request["tty"]) == (True, [80, 24])


def test_an_interactive_run_without_tty_has_pipes(engine):
    request = build_request(replace(spec(), interactive=True), LIMITS, in_session=False)
    assert request["interactive"] is True and "tty" not in request


def test_a_usual_run_asks_for_neither(engine):
    request = build_request(spec(), LIMITS, in_session=False)
    assert "interactive" not in request and "tty" not in request


# ------------------------------------------------------------------ run_in_sandbox


def outcome() -> Frame:
    return Frame("x", json.dumps({"exitCode": 0, "durationMs": 1}).encode())


def credit(n: int) -> Frame:
    return Frame("i", json.dumps({"bytes": n}).encode())


def run(handle: RunHandle, frames: list[Frame], publish: Any = None) -> None:
    run_in_sandbox(fake_box(script=[frames]), spec(), LIMITS, in_session=False, history_max=100, publish=publish,
                   handle=handle)


def test_i_frames_give_the_handle_its_credit_back(engine):
    handle = RunHandle("e1", in_flight=100)
    run(handle, [credit(30), credit(50), outcome()])
    assert handle.in_flight == 20


def test_input_is_open_while_the_run_streams_and_closed_after_it(engine):
    handle = RunHandle("e1")
    seen: list[tuple[bool, bool]] = []
    run(handle, [Frame("o", b"prompt> "), outcome()],
        publish=lambda *_: seen.append((handle.input_open, handle.input_closed)))
    assert seen == [(True, False)]
    assert handle.input_closed and handle.send_input(SIGINT) is False


def test_input_is_closed_after_a_sandbox_failure_too(engine):
    handle = RunHandle("e1")
    run(handle, [Frame("o", b"partial"), SandboxError("lost the connection to the sandbox")])
    assert handle.input_closed and handle.send_input(SIGINT) is False
