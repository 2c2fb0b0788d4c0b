"""The client library against the real stack: uvicorn, Redis, a Celery worker, Docker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from isol8_client import (
    AsyncRemoteIsol8,
    AuthenticationError,
    BadRequestError,
    Isol8ConnectionError,
    PermissionDeniedError,
    QuotaExceededError,
    RemoteIsol8,
    StreamEvent,
)

from tests.conftest import Stack, free_port, make_key

pytestmark = pytest.mark.stack

LIVE_CODE = "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second', flush=True)\n"


def joined(events: list[StreamEvent], kind: str) -> str:
    """A stream's text: the server may split a write into several events (print's text and newline)."""
    return "".join(e.text for e in events if e.type == kind)


def assert_delivered_live(arrivals: list[tuple[StreamEvent, float]]) -> None:
    """The first line came while the program still slept (2 s), not with the rest at the end.

    Compared with the program's own sleep rather than an absolute latency, so
    a slow machine does not make it flaky.
    """
    first = next(at for event, at in arrivals if event.type == "stdout")
    assert arrivals[-1][1] - first > 1.0


def session_name() -> str:
    return f"client-{time.monotonic_ns()}"


# -- sync ------------------------------------------------------------------------------


def test_start_checks_health_and_execute_returns_a_typed_result(stack: Stack, api_key: str) -> None:
    with RemoteIsol8(stack.url, api_key) as isol8:
        result = isol8.execute("print('hello')")
    assert (result.stdout, result.stderr, result.exit_code, result.status) == ("hello", "", 0, "ok")
    assert result.runtime == "python" and result.execution_id and result.timestamp
    assert result.timed_out is False and result.truncated is False and result.files == {}


def test_execute_passes_request_fields_and_returns_binary_output_files(stack: Stack, api_key: str) -> None:
    code = (
        "import os, sys\n"
        "data = sys.stdin.read() + os.environ['GREETING'] + open('/sandbox/in.txt').read()\n"
        "print(data)\n"
        "open('/sandbox/out.bin', 'wb').write(bytes(range(256)))\n"
    )
    with RemoteIsol8(stack.url, api_key, memory_limit="256m", cpu_limit=0.5, pids_limit=32) as isol8:
        result = isol8.execute(code, stdin="in-", env={"GREETING": "hi-"}, files={"/sandbox/in.txt": "file"},
                               output_paths=["/sandbox/out.bin", "/sandbox/missing"])
    assert result.stdout == "in-hi-file"
    assert result.files == {"/sandbox/out.bin": bytes(range(256))}


def test_execute_cmd_exit_codes_timeouts_and_secrets(stack: Stack, api_key: str) -> None:
    with RemoteIsol8(stack.url, api_key, secrets={"TOKEN": "hunter2"}) as isol8:
        failed = isol8.execute(cmd="echo $TOKEN; exit 3", runtime="bash")
        slow = isol8.execute("import time; time.sleep(30)", timeout_ms=1000)
        node = isol8.execute("console.log(typeof require)", runtime="node", file_extension=".cjs")
    assert (failed.stdout, failed.exit_code) == ("***", 3)
    assert (slow.exit_code, slow.status, slow.timed_out) == (137, "timeout", True)
    assert node.stdout == "function"


def test_execute_stream_yields_typed_events_as_they_happen(stack: Stack, api_key: str) -> None:
    arrivals: list[tuple[StreamEvent, float]] = []
    code = LIVE_CODE + "import sys; print('oops', file=sys.stderr); sys.exit(4)"
    with RemoteIsol8(stack.url, api_key) as isol8:
        for event in isol8.execute_stream(code):
            arrivals.append((event, time.monotonic()))
    events = [event for event, _ in arrivals]
    assert joined(events, "stdout") == "first\nsecond\n" and joined(events, "stderr") == "oops\n"
    assert all(e.phase == "code" for e in events) and events[-1].exit_code == 4
    assert_delivered_live(arrivals)


def test_stream_timeout_ends_with_error_then_exit_137(stack: Stack, api_key: str) -> None:
    with RemoteIsol8(stack.url, api_key, timeout_ms=1000) as isol8:
        events = list(isol8.execute_stream("import time; time.sleep(30)"))
    assert [(e.type, e.data) for e in events[-2:]] == [("error", "EXECUTION TIMED OUT"), ("exit", "137")]


def test_server_errors_raise_with_status_code_and_message(stack: Stack, api_key: str) -> None:
    with pytest.raises(AuthenticationError) as bad_key:
        RemoteIsol8(stack.url, "isol8_" + "0" * 64).execute("print(1)")
    assert (bad_key.value.status, bad_key.value.code, bad_key.value.message) == (
        401, "unauthorized", "Invalid API key")
    isol8 = RemoteIsol8(stack.url, api_key)
    with pytest.raises(BadRequestError) as invalid:
        isol8.execute("print(1)", runtime="cobol")
    assert (invalid.value.status, invalid.value.code) == (400, "unsupported_runtime")
    with pytest.raises(PermissionDeniedError) as denied:
        list(RemoteIsol8(stack.url, api_key, memory_limit="64g").execute_stream("print(1)"))
    assert (denied.value.status, denied.value.code) == (403, "policy_denied")
    isol8.close()


def test_quota_hit_raises_with_retry_after(stack: Stack, transactional_db: Any) -> None:
    from tenants.services import tenant_create

    key = make_key(tenant_create(slug=f"q-{time.monotonic_ns()}", max_per_minute=1))
    isol8 = RemoteIsol8(stack.url, key)
    isol8.execute("print(1)")
    with pytest.raises(QuotaExceededError) as caught:
        isol8.execute("print(1)")
    assert caught.value.status == 429 and caught.value.code == "quota_exceeded"
    assert caught.value.retry_after is not None and caught.value.retry_after > 0


def test_unreachable_server_raises_a_connection_error() -> None:
    with pytest.raises(Isol8ConnectionError, match="Cannot connect"):
        RemoteIsol8(f"http://127.0.0.1:{free_port()}", "k").start()


def test_session_keeps_state_across_executions_and_files_round_trip(stack: Stack, api_key: str) -> None:
    payload = bytes(range(256)) * 4
    with RemoteIsol8(stack.url, api_key, session_name()) as isol8:
        isol8.execute("open('/sandbox/state.txt', 'w').write('42')")
        assert isol8.execute("print(open('/sandbox/state.txt').read())").stdout == "42"
        isol8.put_file("/sandbox/blob.bin", payload)
        isol8.put_file("/sandbox/note.txt", "text")
        copied = isol8.execute("import shutil; shutil.copy('/sandbox/blob.bin', '/sandbox/copy.bin')")
        assert copied.exit_code == 0
        assert isol8.get_file("/sandbox/copy.bin") == payload
        assert isol8.get_file("/sandbox/note.txt") == b"text"


def test_list_sessions_and_delete_session(stack: Stack, api_key: str) -> None:
    name = session_name()
    isol8 = RemoteIsol8(stack.url, api_key, name)
    isol8.execute("x = 1")
    assert name in [s.id for s in isol8.list_sessions()]
    isol8.delete_session(name)
    assert name not in [s.id for s in isol8.list_sessions()]
    isol8.close()


def test_stop_deletes_the_clients_own_session(stack: Stack, api_key: str) -> None:
    name = session_name()
    isol8 = RemoteIsol8(stack.url, api_key, name)
    isol8.execute("x = 1")
    isol8.stop()
    with RemoteIsol8(stack.url, api_key) as other:
        assert name not in [s.id for s in other.list_sessions()]


# -- async -----------------------------------------------------------------------------


def test_async_client_executes_and_streams(stack: Stack, api_key: str) -> None:
    async def scenario() -> tuple[Any, list[tuple[StreamEvent, float]]]:
        async with AsyncRemoteIsol8(stack.url, api_key, memory_limit="256m") as isol8:
            result = await isol8.execute("print(6 * 7)")
            arrivals = [(event, time.monotonic()) async for event in isol8.execute_stream(LIVE_CODE)]
        return result, arrivals

    result, arrivals = asyncio.run(scenario())
    assert (result.stdout, result.exit_code) == ("42", 0)
    assert joined([e for e, _ in arrivals], "stdout") == "first\nsecond\n"
    assert arrivals[-1][0].type == "exit"
    assert_delivered_live(arrivals)


def test_async_client_errors(stack: Stack, api_key: str) -> None:
    async def scenario() -> None:
        with pytest.raises(AuthenticationError):
            await AsyncRemoteIsol8(stack.url, "wrong").execute("print(1)")
        with pytest.raises(AuthenticationError):
            [e async for e in AsyncRemoteIsol8(stack.url, "wrong").execute_stream("print(1)")]
        with pytest.raises(Isol8ConnectionError):
            await AsyncRemoteIsol8(f"http://127.0.0.1:{free_port()}", api_key).start()
        isol8 = AsyncRemoteIsol8(stack.url, api_key)
        with pytest.raises(BadRequestError):
            await isol8.execute(cmd="ls", code="print(1)")
        await isol8.stop()

    asyncio.run(scenario())


def test_async_session_state_files_and_session_listing(stack: Stack, api_key: str) -> None:
    name = session_name()
    payload = b"\x00\x01\xfe\xff" * 100

    async def scenario() -> None:
        async with AsyncRemoteIsol8(stack.url, api_key, name) as isol8:
            await isol8.execute("open('/sandbox/state.txt', 'w').write('7')")
            assert (await isol8.execute("print(open('/sandbox/state.txt').read())")).stdout == "7"
            await isol8.put_file("/sandbox/blob.bin", payload)
            assert await isol8.get_file("/sandbox/blob.bin") == payload
            assert name in [s.id for s in await isol8.list_sessions()]
        async with AsyncRemoteIsol8(stack.url, api_key) as other:
            assert name not in [s.id for s in await other.list_sessions()]
            await other.delete_session(name)  # deleting a gone session is fine

    asyncio.run(scenario())


def test_stateful_client_cells_values_displays_and_restart(stack: Stack, api_key: str) -> None:
    if stack.mode != "launcher":
        pytest.skip("stateful sessions run in launcher mode")
    with RemoteIsol8(stack.url, api_key, session_id="nb-client", stateful=True) as isol8:
        assert isol8.execute("import math\nr = 2").value is None
        result = isol8.execute("print('area')\nround(math.pi * r * r, 2)")
        assert result.stdout == "area" and result.value == {"text/plain": "12.57"} and result.state_lost is False
        events = list(isol8.execute_stream("display('shown')\nr"))
        assert [e.data for e in events if e.type == "display"] == [{"text/plain": "'shown'"}]
        failed = isol8.execute("r / 0")
        assert failed.exception is not None and failed.exception["ename"] == "ZeroDivisionError"
        assert isol8.restart() == {"ok": True, "restarted": True}
        assert isol8.execute("'r' in globals()").value == {"text/plain": "False"}
