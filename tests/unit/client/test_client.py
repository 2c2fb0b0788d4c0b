"""Unit tests of the client library against httpx.MockTransport (one layer, no server).

They pin the wire format (bodies, option names, SSE parsing like isol8's
client) and cover what the real server cannot show yet: sessions and files.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from time import time

import httpx
import pytest
from isol8_client import (
    AsyncRemoteIsol8,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    Isol8ConnectionError,
    Isol8Error,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RemoteIsol8,
    ServerError,
    SessionInfo,
    StreamEvent,
    UnavailableError,
)
from isol8_client import _protocol as proto
from isol8_client import aio as aio_module
from isol8_client import client as client_module

from tests.unit.client.conftest import MockServer, result_json, sse

HOST = "http://isol8.test"


def make(server: MockServer, session_id: str | None = None, **kwargs: object) -> RemoteIsol8:
    return RemoteIsol8(HOST, "isol8_key", session_id, transport=server.transport, **kwargs)  # type: ignore[arg-type]


def make_async(server: MockServer, session_id: str | None = None, **kwargs: object) -> AsyncRemoteIsol8:
    return AsyncRemoteIsol8(HOST, "isol8_key", session_id, transport=server.transport, **kwargs)  # type: ignore[arg-type]


def error(status: int, message: str, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": message, "code": code}, headers=headers)


# -- execute ---------------------------------------------------------------------


def test_execute_sends_isol8_body_with_camelcase_options_and_bearer_key(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json()))
    client = make(server, memory_limit="256m", cpu_limit=0.5, timeout_ms=5000, pids_limit=32,
                  max_output_size=1000, secrets={"TOKEN": "s3"}, network="none", readonly_rootfs=True,
                  tmp_size=None)
    client.execute("print(1)", stdin="in", env={"A": "1"}, files={"/sandbox/a.txt": b"x"},
                   output_paths=["/sandbox/a.txt"], timeout_ms=100, file_extension=".py",
                   workdir="/sandbox", setup_script="true")
    [body] = server.bodies("/execute")
    assert body == {
        "request": {
            "runtime": "python", "code": "print(1)", "stdin": "in", "env": {"A": "1"},
            "files": {"/sandbox/a.txt": "x"}, "outputPaths": ["/sandbox/a.txt"], "timeoutMs": 100,
            "fileExtension": ".py", "workdir": "/sandbox", "setupScript": "true",
        },
        "options": {
            "memoryLimit": "256m", "cpuLimit": 0.5, "timeoutMs": 5000, "pidsLimit": 32,
            "maxOutputSize": 1000, "secrets": {"TOKEN": "s3"}, "network": "none", "readonlyRootFs": True,
        },
    }
    assert server.requests[0].headers["Authorization"] == "Bearer isol8_key"


def test_execute_leaves_out_absent_fields_options_and_session(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json()))
    make(server).execute(cmd="ls", runtime="bash")
    assert server.bodies("/execute") == [{"request": {"runtime": "bash", "cmd": "ls"}}]


def test_execute_sends_the_session_id(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json()))
    make(server, "s1").execute("x = 1")
    assert server.bodies("/execute")[0]["sessionId"] == "s1"


def test_execute_returns_a_typed_result_with_decoded_files(server: MockServer) -> None:
    payload = bytes(range(256))
    body = result_json(exitCode=137, status="timeout", timedOut=True, truncated=True,
                       files={"/sandbox/b.bin": base64.b64encode(payload).decode()}, resourceUsage={"cpu": 1})
    server.route("POST", "/execute", httpx.Response(200, json=body))
    result = make(server).execute("print(1)")
    assert (result.stdout, result.exit_code, result.status, result.timed_out, result.truncated) == (
        "hello", 137, "timeout", True, True)
    assert result.files == {"/sandbox/b.bin": payload}
    assert (result.execution_id, result.runtime, result.duration_ms) == ("e-1", "python", 12)
    assert result.raw["resourceUsage"] == {"cpu": 1}


def test_result_of_the_original_isol8_server_parses_with_defaults() -> None:
    body = result_json()
    del body["status"], body["timedOut"]
    result = client_module.ExecutionResult.from_json(body)
    assert (result.status, result.timed_out, result.files) == ("ok", False, {})


def test_binary_files_cannot_go_in_the_json_request(server: MockServer) -> None:
    with pytest.raises(ValueError, match="put_file"):
        make(server).execute("x", files={"/sandbox/b": b"\xff\xfe"})


def test_host_gets_a_scheme_and_loses_its_trailing_slash() -> None:
    assert proto.normalize_host("localhost:3000/") == "http://localhost:3000"
    assert proto.normalize_host("https://h.example/") == "https://h.example"


# -- errors and retries ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [(400, "validation_error", BadRequestError), (401, "unauthorized", AuthenticationError),
     (403, "policy_denied", PermissionDeniedError), (404, "not_found", NotFoundError),
     (409, "session_busy", ConflictError), (413, "payload_too_large", BadRequestError),
     (422, "setup_failed", BadRequestError), (429, "quota_exceeded", QuotaExceededError),
     (500, "internal_error", ServerError), (503, "unavailable", UnavailableError)],
)
def test_server_errors_raise_a_class_per_status_with_status_code_and_message(
    server: MockServer, status: int, code: str, cls: type[Isol8Error]
) -> None:
    server.route("POST", "/execute", error(status, "It went wrong", code))
    with pytest.raises(cls) as caught:
        make(server).execute("x")
    assert (caught.value.status, caught.value.code, caught.value.message) == (status, code, "It went wrong")
    assert str(caught.value) == f"It went wrong ({status} {code})"


def test_a_non_json_error_body_still_gives_a_message(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(500, text="Internal Server Error"))
    with pytest.raises(ServerError, match="HTTP 500 Internal Server Error: Internal Server Error") as caught:
        make(server).execute("x")
    assert caught.value.code is None


def test_quota_error_carries_retry_after_in_seconds_or_as_a_date(server: MockServer) -> None:
    server.route("POST", "/execute", error(429, "Quota exceeded", "quota_exceeded", **{"Retry-After": "42"}))
    with pytest.raises(QuotaExceededError) as caught:
        make(server).execute("x")
    assert caught.value.retry_after == 42
    later = proto.parse_retry_after(formatdate(time() + 30, usegmt=True))
    assert later is not None and 25 < later <= 30


def test_retry_waits_what_retry_after_says_then_succeeds(
    server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    server.route("POST", "/execute", error(429, "Quota", "quota_exceeded", **{"Retry-After": "2"}),
                 error(503, "Busy", "unavailable"), httpx.Response(200, json=result_json()))
    assert make(server, retry=True).execute("x").stdout == "hello"
    assert waits == [2.0, 2.0]  # Retry-After, then backoff 2**1 with no header


def test_retry_is_bounded_and_capped(server: MockServer, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    server.route("POST", "/execute", error(429, "Quota", "quota_exceeded", **{"Retry-After": "3600"}))
    with pytest.raises(QuotaExceededError):
        make(server, retry=True, max_retries=2, max_retry_wait=5).execute("x")
    assert waits == [5, 5] and len(server.requests) == 3


def test_no_retry_without_opt_in_nor_for_other_errors(
    server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module.time, "sleep", pytest.fail)
    server.route("POST", "/execute", error(429, "Quota", "quota_exceeded"))
    with pytest.raises(QuotaExceededError):
        make(server).execute("x")
    server.route("POST", "/execute", error(500, "Boom", "internal_error"))
    with pytest.raises(ServerError):
        make(server, retry=True).execute("x")


def test_unreachable_server_raises_a_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    client = RemoteIsol8(HOST, "k", transport=httpx.MockTransport(refuse))
    with pytest.raises(Isol8ConnectionError, match=r"Cannot connect to the isol8 server at http://isol8\.test"):
        client.execute("x")


# -- start, stop, context manager ---------------------------------------------------------


def test_start_checks_health_and_raises_when_degraded(server: MockServer) -> None:
    server.route("GET", "/health", httpx.Response(200, json={"status": "ok"}))
    make(server).start()
    server.route("GET", "/health", httpx.Response(503, json={"status": "degraded", "checks": {"redis": "x"}}))
    with pytest.raises(UnavailableError, match="degraded"):
        make(server).start()


def test_context_manager_checks_health_and_deletes_its_session(server: MockServer) -> None:
    server.route("GET", "/health", httpx.Response(200, json={"status": "ok"}))
    server.route("POST", "/execute", httpx.Response(200, json=result_json()))
    server.route("DELETE", "/session/s1", httpx.Response(200, json={"ok": True}))
    with make(server, "s1") as client:
        client.execute("x")
    assert server.paths() == ["GET /health", "POST /execute", "DELETE /session/s1"]


def test_stop_without_session_sends_nothing_and_ignores_a_gone_session(server: MockServer) -> None:
    make(server).stop()
    assert server.requests == []
    make(server, "gone").stop()  # the mock answers 404
    assert server.paths() == ["DELETE /session/gone"]


def test_context_manager_keeps_the_original_error_when_cleanup_fails(server: MockServer) -> None:
    server.route("GET", "/health", httpx.Response(200, json={"status": "ok"}))
    server.route("DELETE", "/session/s1", error(500, "Boom", "internal_error"))
    with pytest.raises(KeyError), make(server, "s1"):
        raise KeyError("original")


# -- sessions and files -------------------------------------------------------------------


def test_put_file_sends_base64_and_get_file_decodes_it(server: MockServer) -> None:
    payload = b"\x00\x01binary\xff"
    server.route("POST", "/file", httpx.Response(200, json={"ok": True}))
    server.route("GET", "/file", httpx.Response(200, json={"content": base64.b64encode(payload).decode()}))
    client = make(server, "s1")
    client.put_file("/sandbox/data.bin", payload)
    client.put_file("note.txt", "héllo")
    assert client.get_file("/sandbox/data.bin") == payload
    uploads = server.bodies("/file")
    assert uploads[0] == {"sessionId": "s1", "path": "/sandbox/data.bin",
                          "content": base64.b64encode(payload).decode()}
    assert base64.b64decode(uploads[1]["content"]) == "héllo".encode()
    download = server.requests[-1]
    assert dict(download.url.params) == {"sessionId": "s1", "path": "/sandbox/data.bin"}


def test_file_operations_need_a_session(server: MockServer) -> None:
    with pytest.raises(ValueError, match="session_id"):
        make(server).put_file("a", b"x")
    with pytest.raises(ValueError, match="session_id"):
        make(server).get_file("a")
    assert server.requests == []


def test_missing_file_is_not_found(server: MockServer) -> None:
    server.route("GET", "/file", error(404, "File not found", "not_found"))
    with pytest.raises(NotFoundError, match="File not found"):
        make(server, "s1").get_file("nope")


def test_list_sessions_and_delete_session(server: MockServer) -> None:
    sessions = [
        {"id": "s1", "isActive": True, "lastAccessedAt": "t1", "runtime": "python", "createdAt": "t0",
         "state": "ready"},
        {"id": "s2", "isActive": False, "lastAccessedAt": "t2"},
    ]
    server.route("GET", "/sessions", httpx.Response(200, json={"sessions": sessions}))
    server.route("DELETE", "/session/s2", httpx.Response(200, json={"ok": True}))
    client = make(server)
    assert client.list_sessions() == [SessionInfo("s1", True, "t1", "python", "t0", "ready"),
                                      SessionInfo("s2", False, "t2")]
    client.delete_session("s2")
    assert server.paths()[-1] == "DELETE /session/s2"


# -- streaming ----------------------------------------------------------------------------


def test_stream_yields_typed_events_ignoring_non_data_lines(server: MockServer) -> None:
    body = sse({"type": "stdout", "data": "a\n", "phase": "code"},
               {"type": "stderr", "data": "b\n", "phase": "code"},
               {"type": "exit", "data": "3", "phase": "code"})
    server.route("POST", "/execute/stream", httpx.Response(200, content=body))
    events = list(make(server, "s1", memory_limit="1g").execute_stream("x", runtime="bash"))
    assert events == [StreamEvent("stdout", "a\n", "code"), StreamEvent("stderr", "b\n", "code"),
                      StreamEvent("exit", "3", "code")]
    assert events[-1].exit_code == 3
    assert server.bodies("/execute/stream") == [
        {"request": {"runtime": "bash", "code": "x"}, "options": {"memoryLimit": "1g"}, "sessionId": "s1"}]


def test_sse_parser_reads_only_data_space_lines_across_chunk_boundaries() -> None:
    parser = proto.SseParser()
    text = ('data: {"type":"stdout","data":"x"}\r\n\r\ndata:{"type":"stdout","data":"no space"}\n'
            'event: exit\nid: 7\n: comment\ndata: {"type":"exit","data":"0"}')
    events = [e for i in range(0, len(text), 5) for e in parser.feed(text[i:i + 5])] + parser.finish()
    # isol8's client needs "data: " with the space; the last line has no newline and still counts.
    assert events == [StreamEvent("stdout", "x"), StreamEvent("exit", "0")]


def test_sse_parser_rejects_a_malformed_event_and_skips_unknown_types() -> None:
    with pytest.raises(Isol8Error, match="Malformed"):
        proto.SseParser().feed("data: {nope\n")
    # A type from a newer server is skipped, as the protocol asks of clients that do not know it.
    events = proto.SseParser().feed('data: {"type":"weird","data":"d"}\ndata: {"type":"exit","data":"0"}\n')
    assert events == [StreamEvent("exit", "0")]
    # Built directly, an unknown type still says what it was.
    event = StreamEvent.from_json({"type": "weird", "data": "d"})
    assert event.type == "error" and "weird" in event.text


def test_stream_yields_each_event_before_the_next_chunk_is_produced(server: MockServer) -> None:
    produced: list[str] = []

    def chunks() -> Iterator[bytes]:
        for name in ("one", "two"):
            produced.append(name)
            yield f'data: {{"type":"stdout","data":"{name}"}}\n\n'.encode()
        yield b'data: {"type":"exit","data":"0"}\n\n'

    server.route("POST", "/execute/stream", httpx.Response(200, content=chunks()))
    events = make(server).execute_stream("x")
    assert next(events).data == "one"
    assert produced == ["one"]  # nothing read ahead: the event came as soon as its bytes did
    assert [e.type for e in events] == ["stdout", "exit"]


def test_stream_errors_before_the_stream_raise_and_can_be_retried(
    server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module.time, "sleep", lambda s: None)
    server.route("POST", "/execute/stream", error(401, "Invalid API key", "unauthorized"))
    with pytest.raises(AuthenticationError, match="Invalid API key"):
        list(make(server).execute_stream("x"))
    server.route("POST", "/execute/stream", error(503, "Busy", "unavailable", **{"Retry-After": "1"}),
                 httpx.Response(200, content=sse({"type": "exit", "data": "0"})))
    assert [e.type for e in make(server, retry=True).execute_stream("x")] == ["exit"]


# -- stateful sessions ----------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\nfake"
BUNDLE = {"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure size 640x480>"}


def test_stateful_client_sends_stateful_next_to_the_session_in_every_execute_body(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json()))
    server.route("POST", "/execute/stream", httpx.Response(200, content=sse({"type": "exit", "data": "0"})))
    client = make(server, "s1", stateful=True, memory_limit="1g")
    client.execute("x = 41")
    list(client.execute_stream("x + 1"))
    expected = {"options": {"memoryLimit": "1g"}, "sessionId": "s1", "stateful": True}
    assert server.bodies("/execute") == [{"request": {"runtime": "python", "code": "x = 41"}, **expected}]
    assert server.bodies("/execute/stream") == [{"request": {"runtime": "python", "code": "x + 1"}, **expected}]


def test_stateful_is_left_out_unless_asked_for(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json()))
    make(server, "s1").execute("x")
    make(server, "s1", stateful=False).execute("x")
    assert [body.get("stateful") for body in server.bodies("/execute")] == [None, None]
    assert proto.execute_body({}, {}, None, True) == {"request": {}}  # never without a session


def test_stateful_without_a_session_is_refused_at_construction(server: MockServer) -> None:
    with pytest.raises(ValueError, match="session_id"):
        make(server, stateful=True)
    with pytest.raises(ValueError, match="session_id"):
        make_async(server, stateful=True)


def test_result_of_a_cell_carries_value_outputs_exception_and_state_lost(server: MockServer) -> None:
    exception = {"ename": "ZeroDivisionError", "evalue": "division by zero",
                 "traceback": ["Traceback (most recent call last):\n", '  File "<cell 3>", line 1\n']}
    body = result_json(exitCode=1, value={"text/plain": "43", "application/json": {"a": 1}},
                       outputs=[{"type": "display", "data": BUNDLE}], exception=exception, stateLost=True)
    server.route("POST", "/execute", httpx.Response(200, json=body))
    result = make(server, "s1", stateful=True).execute("1/0")
    assert result.value == {"text/plain": "43", "application/json": {"a": 1}}
    assert result.outputs == [{"type": "display", "data": BUNDLE}]
    assert result.exception == exception
    assert (result.state_lost, result.exit_code, result.stdout) == (True, 1, "hello")


def test_result_without_cell_fields_has_their_defaults() -> None:
    result = client_module.ExecutionResult.from_json(result_json())
    assert (result.value, result.outputs, result.exception, result.state_lost) == (None, [], None, False)
    # A cell whose trailing expression is None: value null; outputs null is read as none.
    result = client_module.ExecutionResult.from_json(result_json(value=None, outputs=None, stateLost=False))
    assert (result.value, result.outputs) == (None, [])


def test_stream_yields_display_events_with_the_bundle_as_data(server: MockServer) -> None:
    body = sse({"type": "stdout", "data": "plotting\n", "phase": "code"},
               {"type": "display", "data": BUNDLE, "phase": "code"},
               {"type": "progress", "data": {"percent": 50}, "phase": "code"},  # unknown: skipped
               {"type": "stderr", "data": "warn\n", "phase": "code"},
               {"type": "exit", "data": "0", "phase": "code"})
    server.route("POST", "/execute/stream", httpx.Response(200, content=body))
    events = list(make(server, "s1", stateful=True).execute_stream("plot()"))
    assert events == [StreamEvent("stdout", "plotting\n", "code"), StreamEvent("display", BUNDLE, "code"),
                      StreamEvent("stderr", "warn\n", "code"), StreamEvent("exit", "0", "code")]
    assert (events[1].text, events[1].exit_code, events[-1].exit_code) == ("<Figure size 640x480>", None, 0)


def test_restart_posts_to_the_sessions_restart_route(server: MockServer) -> None:
    server.route("POST", "/session/s1/restart", httpx.Response(200, json={"ok": True, "restarted": True}))
    assert make(server, "s1", stateful=True).restart() == {"ok": True, "restarted": True}
    assert server.paths() == ["POST /session/s1/restart"]
    assert server.requests[0].content == b""


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [(400, "validation_error", BadRequestError), (404, "not_found", NotFoundError),
     (409, "session_busy", ConflictError)],
)
def test_restart_raises_the_servers_refusal(
    server: MockServer, status: int, code: str, cls: type[Isol8Error]
) -> None:
    server.route("POST", "/session/s1/restart", error(status, "Refused", code))
    with pytest.raises(cls, match="Refused"):
        make(server, "s1").restart()


def test_restart_needs_a_session(server: MockServer) -> None:
    with pytest.raises(ValueError, match="restart"):
        make(server).restart()
    assert server.requests == []


def test_get_execution_reads_the_whole_result_from_the_history(server: MockServer) -> None:
    record = result_json(value={"text/plain": "2"}, code="1 + 1", sessionId="s1")
    server.route("GET", "/executions/e-1", httpx.Response(200, json=record))
    result = make(server, "s1").get_execution("e-1")
    assert (result.execution_id, result.value) == ("e-1", {"text/plain": "2"})


def test_async_client_is_stateful_restarts_and_reads_cells(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json(value={"text/plain": "42"})))
    server.route("POST", "/execute/stream", httpx.Response(200, content=sse(
        {"type": "display", "data": BUNDLE}, {"type": "exit", "data": "0"})))
    server.route("POST", "/session/s1/restart", httpx.Response(200, json={"ok": True, "restarted": True}))
    server.route("GET", "/executions/e-1", httpx.Response(200, json=result_json(outputs=[{"data": BUNDLE}])))

    async def scenario() -> None:
        client = make_async(server, "s1", stateful=True)
        assert (await client.execute("x")).value == {"text/plain": "42"}
        assert [e.data async for e in client.execute_stream("y")] == [BUNDLE, "0"]
        assert await client.restart() == {"ok": True, "restarted": True}
        assert (await client.get_execution("e-1")).outputs == [{"data": BUNDLE}]
        with pytest.raises(ValueError, match="restart"):
            await make_async(server).restart()
        await client.close()

    asyncio.run(scenario())
    assert [body["stateful"] for body in server.bodies("/execute") + server.bodies("/execute/stream")] == [
        True, True]


# -- the async twin -------------------------------------------------------------------------


def test_async_client_has_the_same_methods_and_wire_format(server: MockServer) -> None:
    payload = b"\xff\x00"
    server.route("GET", "/health", httpx.Response(200, json={"status": "ok"}))
    server.route("POST", "/execute", httpx.Response(200, json=result_json(files={})))
    server.route("POST", "/execute/stream", httpx.Response(200, content=sse(
        {"type": "stdout", "data": "1\n", "phase": "code"}, {"type": "exit", "data": "0", "phase": "code"})))
    server.route("POST", "/file", httpx.Response(200, json={"ok": True}))
    server.route("GET", "/file", httpx.Response(200, json={"content": base64.b64encode(payload).decode()}))
    listing = {"sessions": [{"id": "s1", "isActive": False}]}
    server.route("GET", "/sessions", httpx.Response(200, json=listing))
    server.route("DELETE", "/session/s1", httpx.Response(200, json={"ok": True}))

    async def scenario() -> None:
        async with make_async(server, "s1", cpu_limit=1) as client:
            assert (await client.execute("print(1)")).stdout == "hello"
            stream: AsyncIterator[StreamEvent] = client.execute_stream("print(1)")
            assert [e.type async for e in stream] == ["stdout", "exit"]
            await client.put_file("/sandbox/f", payload)
            assert await client.get_file("/sandbox/f") == payload
            assert [s.id for s in await client.list_sessions()] == ["s1"]
            await client.delete_session("s1")

    asyncio.run(scenario())
    assert server.paths() == ["GET /health", "POST /execute", "POST /execute/stream", "POST /file",
                              "GET /file", "GET /sessions", "DELETE /session/s1", "DELETE /session/s1"]
    assert server.bodies("/execute") == [
        {"request": {"runtime": "python", "code": "print(1)"}, "options": {"cpuLimit": 1}, "sessionId": "s1"}]


def test_async_client_errors_and_retry(server: MockServer, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(aio_module.asyncio, "sleep", no_sleep)
    server.route("POST", "/execute", error(429, "Quota", "quota_exceeded", **{"Retry-After": "7"}),
                 httpx.Response(200, json=result_json()))
    server.route("POST", "/execute/stream", error(403, "No", "policy_denied"))

    async def scenario() -> None:
        assert (await make_async(server, retry=True).execute("x")).exit_code == 0
        with pytest.raises(PermissionDeniedError):
            [e async for e in make_async(server).execute_stream("x")]
        with pytest.raises(ValueError):
            await make_async(server).get_file("x")
        await make_async(server).stop()

    asyncio.run(scenario())
    assert waits == [7.0]


def test_async_stream_yields_as_chunks_arrive(server: MockServer) -> None:
    produced: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        for name in ("one", "two"):
            produced.append(name)
            yield json.dumps({"type": "stdout", "data": name}).join(["data: ", "\n\n"]).encode()

    server.route("POST", "/execute/stream", httpx.Response(200, content=chunks()))

    async def scenario() -> None:
        stream = make_async(server).execute_stream("x")
        first = await stream.__anext__()
        assert (first.data, produced) == ("one", ["one"])
        assert [e.data async for e in stream] == ["two"]

    asyncio.run(scenario())
