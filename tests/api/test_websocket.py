"""GET /execute/ws below the stack: the consumer with the real ASGI app, database and Redis, a fake dispatch.

asgiref's ApplicationCommunicator plays the ASGI server (uvicorn in the stack
tests, where the `websockets` client library speaks to it).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator

from executions import services
from executions.models import Execution, Status
from isol8_site import dispatch, wire
from isol8_site.asgi import application
from isol8_site.redis import get_redis
from tenants import quotas
from tests.api.conftest import FakeDispatch, assert_sentence, make_session, ok_result, start_queued

TIMEOUT = 10


class Socket:
    """One WebSocket connection to the app, as the ASGI server would drive it."""

    def __init__(self, key: str | None, *, http_response: bool = True, query: str = "") -> None:
        headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
        scope: dict[str, Any] = {
            "type": "websocket",
            "path": "/execute/ws",
            "raw_path": b"/execute/ws",
            "query_string": query.encode(),
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 3000),
            "subprotocols": [],
            "extensions": {"websocket.http.response": {}} if http_response else {},
        }
        self.app = ApplicationCommunicator(application, scope)

    async def connect(self) -> dict[str, Any]:
        await self.app.send_input({"type": "websocket.connect"})
        return await self.app.receive_output(TIMEOUT)

    async def send(self, message: Any) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        await self.app.send_input({"type": "websocket.receive", "text": text})

    async def receive(self) -> dict[str, Any]:
        """The next message the app sends: a text frame's JSON, or the close (``{"close": code}``)."""
        output = await self.app.receive_output(TIMEOUT)
        if output["type"] == "websocket.close":
            return {"close": output.get("code", 1000)}
        assert output["type"] == "websocket.send", output
        return json.loads(output["text"])

    async def until_close(self) -> list[dict[str, Any]]:
        seen = []
        while True:
            message = await self.receive()
            seen.append(message)
            if "close" in message:
                return seen

    async def leave(self) -> None:
        await self.app.send_input({"type": "websocket.disconnect", "code": 1001})
        await self.app.wait(TIMEOUT)


def talk(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def accepted(key: str) -> Socket:
    ws = Socket(key)
    assert (await ws.connect())["type"] == "websocket.accept"
    return ws


PY = {"runtime": "python", "code": "print('hello')"}


# -------------------------------------------------------------------- the upgrade


@pytest.mark.parametrize("key", [None, "isol8_not-a-key"])
def test_an_upgrade_without_a_valid_key_is_401_with_the_json_error(tenant, fake_dispatch, key):
    async def scenario() -> None:
        ws = Socket(key)
        start = await ws.connect()
        assert start["type"] == "websocket.http.response.start" and start["status"] == 401
        body = await ws.app.receive_output(TIMEOUT)
        error = json.loads(body["body"])
        assert error["code"] == "unauthorized"
        assert_sentence(error["error"])

    talk(scenario)
    assert fake_dispatch.sent == []


def test_a_disabled_tenant_is_403(tenant, api_key, fake_dispatch):
    tenant.is_active = False
    tenant.save()

    async def scenario() -> None:
        start = await Socket(api_key).connect()
        assert start["status"] == 403

    talk(scenario)


def test_without_the_http_response_extension_a_refused_upgrade_is_closed(tenant, fake_dispatch):
    async def scenario() -> None:
        assert await Socket(None, http_response=False).connect() == {"type": "websocket.close", "code": 1008}

    talk(scenario)


# ------------------------------------------------------------------- messages


def test_execute_sends_the_runs_events_and_closes_with_1000(tenant, api_key, fake_dispatch):
    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": PY})
        seen = await ws.until_close()
        assert seen == [
            {"type": "stdout", "data": "hello\n", "phase": "code"},
            {"type": "exit", "data": "0", "phase": "code"},
            {"close": 1000},
        ]

    talk(scenario)
    assert [s.name for s in fake_dispatch.sent] == [dispatch.RUN_EXECUTION]
    row = Execution.objects.get(tenant=tenant)
    assert row.streamed and row.request.get("interactive") is True
    assert quotas.tenant_usage(tenant=tenant).running == 0


def test_a_tty_request_is_recorded_as_such(tenant, api_key, fake_dispatch):
    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": {**PY, "tty": True}})
        await ws.until_close()

    talk(scenario)
    assert Execution.objects.get(tenant=tenant).request.get("tty") is True


@pytest.mark.parametrize(
    ("request_", "code", "mentions"),
    [
        ({"runtime": "cobol", "code": "x"}, "unsupported_runtime", "cobol"),
        ({"runtime": "python", "code": "x", "tty": "yes"}, "validation_error", "tty"),
        ({"runtime": "python"}, "validation_error", "code"),
        ("not an object", "validation_error", "request"),
    ],
)
def test_a_refused_execute_is_the_http_routes_error_and_nothing_runs(tenant, api_key, fake_dispatch, request_,
                                                                     code, mentions):
    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": request_})
        error, close = await ws.until_close()
        assert error["type"] == "error" and error["code"] == code and mentions in error["data"], error
        assert_sentence(error["data"])
        assert close == {"close": 1000}

    talk(scenario)
    assert fake_dispatch.sent == [] and not Execution.objects.exists()
    assert quotas.tenant_usage(tenant=tenant).running == 0


def test_invalid_json_is_an_error_then_1003(tenant, api_key, fake_dispatch):
    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send("{nope")
        assert await ws.until_close() == [
            {"type": "error", "data": "Invalid JSON message", "code": "invalid_json"},
            {"close": 1003},
        ]

    talk(scenario)


@pytest.mark.parametrize("message", [{"type": "dance"}, {"type": 7}, {"kind": "execute"}])
def test_an_unknown_type_is_an_error_and_the_connection_stays_usable(tenant, api_key, fake_dispatch, message):
    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send(message)
        error = await ws.receive()
        assert error["type"] == "error" and error["data"].startswith("Unknown message type")
        await ws.send({"type": "execute", "request": PY})
        assert (await ws.until_close())[-2]["type"] == "exit"

    talk(scenario)


def test_input_before_execute_is_an_error(tenant, api_key, fake_dispatch):
    async def scenario() -> None:
        ws = await accepted(api_key)
        for message in ({"type": "stdin", "data": "x"}, {"type": "signal", "signal": "SIGINT"},
                        {"type": "resize", "cols": 80, "rows": 24}):
            await ws.send(message)
            assert "No execution is running" in (await ws.receive())["data"]
        await ws.leave()

    talk(scenario)
    assert fake_dispatch.sent == []


@pytest.mark.parametrize(
    "message",
    [
        {"type": "stdin", "data": 5},
        {"type": "stdin", "eof": "yes"},
        {"type": "stdin", "data": "z" * (64 * 1024 + 1)},
        {"type": "signal", "signal": "SIGSTOP"},
        {"type": "signal"},
        {"type": "resize", "cols": 0, "rows": 24},
        {"type": "resize", "cols": 80.5, "rows": 24},
        {"type": "resize", "cols": True, "rows": 24},
    ],
)
def test_bad_input_messages_are_refused_and_the_run_goes_on(tenant, api_key, fake_dispatch, message):
    fake_dispatch.answer_runs(None)  # the run stays queued

    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": PY})
        await asyncio.sleep(0.2)
        await ws.send(message)
        error = await ws.receive()
        assert error["type"] == "error" and error["code"] == "validation_error", error
        assert_sentence(error["data"])
        await ws.leave()

    talk(scenario)
    row = Execution.objects.get(tenant=tenant)
    assert get_redis().llen(wire.input_key(row.pk)) == 0


# ---------------------------------------------------------------- input queue


def queued(execution_id: object, key: Callable[[object], str] = wire.input_key) -> list[dict[str, Any]]:
    return [json.loads(m) for m in get_redis().lrange(key(execution_id), 0, -1)]


def test_input_is_queued_for_the_worker_in_order(tenant, api_key, fake_dispatch):
    fake_dispatch.answer_runs(None)

    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": PY})
        await ws.send({"type": "stdin", "data": "line 1\n"})
        await ws.send({"type": "stdin", "data": "é\n", "eof": True})
        await ws.send({"type": "signal", "signal": "SIGINT"})
        await ws.send({"type": "resize", "cols": 120, "rows": 40})
        await asyncio.sleep(0.5)
        await ws.leave()

    talk(scenario)
    row = Execution.objects.get(tenant=tenant)
    assert queued(row.pk) == [
        {"op": "stdin", "data": base64.b64encode(b"line 1\n").decode()},
        {"op": "stdin", "data": base64.b64encode("é\n".encode()).decode()},
        {"op": "stdin", "eof": True},
    ]
    # Signals and resizes wait apart, so they overtake stdin the program has not read.
    assert queued(row.pk, wire.control_key) == [
        {"op": "signal", "signal": "SIGINT"},
        {"op": "resize", "cols": 120, "rows": 40},
    ]
    assert 0 < get_redis().ttl(wire.input_key(row.pk)) <= wire.INPUT_TTL


def test_a_full_input_queue_holds_the_client_back(tenant, api_key, fake_dispatch):
    """Nobody reads the queue: it stops at INPUT_MAX_QUEUED and the consumer waits instead of buffering."""
    fake_dispatch.answer_runs(None)

    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": PY})
        for n in range(wire.INPUT_MAX_QUEUED + 5):
            await ws.send({"type": "stdin", "data": f"{n}\n"})
        await asyncio.sleep(1.0)
        row = await asyncio.to_thread(lambda: Execution.objects.get(tenant=tenant))
        assert get_redis().llen(wire.input_key(row.pk)) == wire.INPUT_MAX_QUEUED
        # The worker takes two: two more go in, the rest still wait.
        get_redis().lpop(wire.input_key(row.pk), 2)
        await asyncio.sleep(0.5)
        assert [m["data"] for m in queued(row.pk)][-1] == base64.b64encode(
            f"{wire.INPUT_MAX_QUEUED + 1}\n".encode()
        ).decode()
        # The run ends (here: cancelled) while the client is held back: the
        # consumer stops waiting, drops the rest and closes after the exit.
        await asyncio.to_thread(lambda: services.execution_cancel(execution=row))
        seen = await ws.until_close()
        assert seen[-2]["type"] == "exit" and seen[-1] == {"close": 1000}
        await ws.leave()

    talk(scenario)


def test_input_for_a_run_that_ended_is_refused_not_left_behind(tenant, api_key, fake_dispatch):
    fake_dispatch.answer_runs(None)

    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": PY})
        await asyncio.sleep(0.3)
        row = await asyncio.to_thread(lambda: Execution.objects.get(tenant=tenant))
        wire.end_input(row.pk)  # what the worker does when the run ends
        await ws.send({"type": "stdin", "data": "late\n"})
        await asyncio.sleep(0.3)
        assert get_redis().get(wire.input_key(row.pk)) == wire.INPUT_ENDED.encode()
        await ws.leave()

    talk(scenario)


# ------------------------------------------------------------ leaving, sessions


def test_leaving_before_exit_cancels_the_run_and_frees_the_quota(tenant, api_key, fake_dispatch):
    fake_dispatch.answer_runs(None)

    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": PY})
        await asyncio.sleep(0.3)
        await ws.leave()

    talk(scenario)
    row = Execution.objects.get(tenant=tenant)
    assert row.status == Status.CANCELLED
    assert quotas.tenant_usage(tenant=tenant).running == 0


def test_leaving_after_exit_cancels_nothing(tenant, api_key, fake_dispatch):
    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": PY})
        await ws.until_close()
        await ws.leave()

    talk(scenario)
    assert Execution.objects.get(tenant=tenant).status == Status.OK


def test_one_execution_per_connection(tenant, api_key, fake_dispatch: FakeDispatch):
    fake_dispatch.answer_runs(None)

    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": PY})
        await ws.send({"type": "execute", "request": PY})
        error = await ws.receive()
        assert error["type"] == "error" and "One execution per connection" in error["data"]
        await ws.leave()

    talk(scenario)
    assert len(fake_dispatch.runs()) == 1


def test_a_session_of_another_tenant_is_never_used(tenant, api_key, other_tenant, fake_dispatch):
    make_session(other_tenant, "shared-name")

    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": PY, "sessionId": "shared-name"})
        await ws.until_close()

    talk(scenario)
    row = Execution.objects.get(tenant=tenant)
    assert row.session is not None and row.session.tenant == tenant


def test_a_busy_session_is_409_session_busy(tenant, api_key, fake_dispatch):
    fake_dispatch.answer_runs(None)
    make_session(tenant, "busy", runtime="bash")
    start_queued(tenant, session_id="busy")  # holds the session's claim

    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": {"runtime": "bash", "code": "true"}, "sessionId": "busy"})
        error, close = await ws.until_close()
        assert error["code"] == "session_busy" and close == {"close": 1000}

    talk(scenario)


def test_the_fake_result_reaches_the_socket(tenant, api_key, fake_dispatch):
    fake_dispatch.answer_runs(ok_result("from the worker\n"))

    async def scenario() -> None:
        ws = await accepted(api_key)
        await ws.send({"type": "execute", "request": PY})
        assert (await ws.receive())["data"] == "from the worker\n"
        await ws.leave()

    talk(scenario)
