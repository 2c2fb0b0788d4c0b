"""worker/inputs.py: the web's input messages checked, and the pump from the Redis list to the run's handle.

The pump runs against the real Redis, on a list of its own per test; the
handle is a fake that records what it is given (its window is tested in
tests/unit/sandbox/test_input_window.py).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest

from isol8_site import wire
from isol8_site.redis import get_redis
from sandbox.run import STDIN_WINDOW_BYTES, RunHandle
from tests.unit.sandbox.conftest import FakeTransport, fake_box
from worker import inputs
from worker.inputs import InputPump, parsed

WAIT_SECONDS = 5.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------ parsed


@pytest.mark.parametrize(("message", "size"), [
    ({"op": "stdin", "data": b64(b"hello\n")}, 6),
    ({"op": "stdin", "eof": True}, 0),
    ({"op": "signal", "signal": "SIGINT"}, 0),
    ({"op": "resize", "cols": 100, "rows": 30}, 0),
])
def test_the_webs_messages_are_taken_with_their_stdin_bytes(message, size):
    assert parsed(json.dumps(message)) == (message, size)
    assert parsed(json.dumps(message).encode()) == (message, size)  # as Redis returns it


@pytest.mark.parametrize("raw", [
    "not json",
    '["stdin"]',
    '{"data": "aGk="}',
    '{"op": "run", "argv": ["sh"]}',
    '{"op": "cancel"}',
    '{"op": "stdin", "data": "not base64!"}',
    '{"op": "stdin", "data": 12}',
], ids=["not-json", "not-an-object", "no-op", "a-request", "a-cancel", "bad-base64", "data-not-a-string"])
def test_anything_else_is_refused(raw):
    assert parsed(raw) is None


# ------------------------------------------------------------------ InputPump


class RecordingHandle(RunHandle):
    """A run's handle that records what the pump hands it; ``accept=False``: the run has ended."""

    def __init__(self, *, accept: bool = True) -> None:
        super().__init__("e1")
        self.input_open = True  # the run request went out: room_for answers from the window
        self.accept = accept
        self.received: list[tuple[dict[str, Any], int]] = []
        self.arrived = threading.Condition()

    def send_input(self, message: dict[str, Any], size: int = 0) -> bool:
        with self.arrived:
            self.received.append((message, size))
            self.arrived.notify_all()
        return self.accept

    def wait_for(self, count: int) -> list[tuple[dict[str, Any], int]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.received) >= count, WAIT_SECONDS), self.received
            return list(self.received)


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    # The pump looks whether its run ended this often: a test's exit waits at most this long.
    monkeypatch.setattr(inputs, "POP_SECONDS", 0.05)


@pytest.fixture
def execution_id() -> Iterator[str]:
    execution = f"unit-{uuid.uuid4().hex}"
    yield execution
    get_redis().delete(wire.input_key(execution), wire.control_key(execution))


def push(execution_id: str, message: dict[str, Any]) -> None:
    assert wire.push_input(execution_id, message) == 1


def test_queued_stdin_reaches_the_handle_in_order_and_signals_go_first(execution_id):
    messages = [{"op": "stdin", "data": b64(b"one\n")}, {"op": "signal", "signal": "SIGINT"},
                {"op": "stdin", "data": b64(b"three\n")}, {"op": "stdin", "eof": True}]
    for message in messages:
        push(execution_id, message)
    handle = RecordingHandle()
    with InputPump(execution_id, handle):
        received = handle.wait_for(len(messages))
    # Signals and resizes have a list of their own, looked at first: they overtake queued stdin.
    assert received == [(messages[1], 0), (messages[0], 4), (messages[2], 6), (messages[3], 0)]


def test_a_signal_overtakes_stdin_the_program_has_not_read(execution_id):
    handle = RecordingHandle()
    handle.in_flight = STDIN_WINDOW_BYTES  # the program reads nothing: no room for more stdin
    push(execution_id, {"op": "stdin", "data": b64(b"x" * 10)})
    with InputPump(execution_id, handle):
        time.sleep(0.2)
        push(execution_id, {"op": "signal", "signal": "SIGINT"})
        assert handle.wait_for(1) == [({"op": "signal", "signal": "SIGINT"}, 0)]
        handle.credit(STDIN_WINDOW_BYTES)  # it read: the held stdin goes
        assert handle.wait_for(2)[1] == ({"op": "stdin", "data": b64(b"x" * 10)}, 10)


def test_messages_pushed_while_the_run_lasts_are_forwarded_too(execution_id):
    handle = RecordingHandle()
    with InputPump(execution_id, handle):
        time.sleep(0.1)  # the pump waits on an empty list
        push(execution_id, {"op": "resize", "cols": 90, "rows": 20})
        received = handle.wait_for(1)
    assert received == [({"op": "resize", "cols": 90, "rows": 20}, 0)]


def test_a_malformed_message_is_dropped_and_the_next_one_forwarded(execution_id):
    get_redis().rpush(wire.input_key(execution_id), "not json", json.dumps({"op": "stdin", "eof": True}))
    handle = RecordingHandle()
    with InputPump(execution_id, handle):
        received = handle.wait_for(1)
    assert received == [({"op": "stdin", "eof": True}, 0)]


def test_at_exit_the_queue_is_dropped_and_later_input_refused(execution_id):
    handle = RecordingHandle()
    with InputPump(execution_id, handle):
        pass
    assert handle.input_closed
    client = get_redis()
    assert client.type(wire.input_key(execution_id)) == b"string"  # no list left to take input
    assert client.ttl(wire.input_key(execution_id)) > 0
    assert wire.push_input(execution_id, {"op": "stdin", "eof": True}) == -1


def test_the_pump_stops_when_the_handle_refuses_input(execution_id):
    push(execution_id, {"op": "stdin", "data": b64(b"a")})
    push(execution_id, {"op": "stdin", "data": b64(b"b")})
    handle = RecordingHandle(accept=False)
    pump = InputPump(execution_id, handle)
    pump.thread.start()
    pump.thread.join(WAIT_SECONDS)
    assert not pump.thread.is_alive()
    assert len(handle.received) == 1
    assert get_redis().llen(wire.input_key(execution_id)) == 1  # the rest is left for end_input to drop
    pump.__exit__(None, None, None)


def test_the_thread_is_gone_after_the_block(execution_id):
    handle = RecordingHandle()
    with InputPump(execution_id, handle) as pump:
        assert pump.thread.is_alive()
    assert not pump.thread.is_alive()


def test_with_a_run_handle_the_input_reaches_the_sandbox(execution_id):
    box = fake_box()
    handle = RunHandle(execution_id, sandbox=box)
    handle.open_input()  # the run request went out
    push(execution_id, {"op": "stdin", "data": b64(b"hi\n")})
    controls = cast(FakeTransport, box.transport).controls
    with InputPump(execution_id, handle):
        deadline = time.monotonic() + WAIT_SECONDS
        while not controls:
            assert time.monotonic() < deadline, "nothing reached the sandbox"
            time.sleep(0.01)
    assert controls == [{"op": "stdin", "data": b64(b"hi\n")}] and handle.in_flight == 3
