"""GET /execute/ws through a standard client (the `websockets` library): isol8's protocol, live stdin,
signals, cancel on close, sessions and terminals (issue 14)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import threading
import time
from typing import Any

import pytest
from isol8_client import RemoteIsol8
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from executions.models import Execution
from isol8_site import wire
from isol8_site.redis import get_redis
from tests.conftest import Stack, make_key, run

pytestmark = pytest.mark.stack


def socket(stack: Stack, key: str | None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return ws_connect(stack.url.replace("http://", "ws://") + "/execute/ws", additional_headers=headers,
                      open_timeout=10)


def execute(ws: ClientConnection, request: dict[str, Any], **extra: Any) -> None:
    ws.send(json.dumps({"type": "execute", "request": request, **extra}))


def next_event(ws: ClientConnection, timeout: float = 30) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def until_exit(ws: ClientConnection, timeout: float = 60) -> list[dict[str, Any]]:
    """Every message up to and including ``exit`` (then the server closes)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        event = next_event(ws, timeout=deadline - time.monotonic())
        seen.append(event)
        if event["type"] == "exit":
            return seen
    raise AssertionError(f"no exit in {timeout} s: {seen}")


def output(events: list[dict[str, Any]], kind: str = "stdout") -> str:
    return "".join(e["data"] for e in events if e["type"] == kind)


def wait_for_output(ws: ClientConnection, pattern: str, timeout: float = 30) -> str:
    """Read stdout until it matches ``pattern``; what was read."""
    deadline = time.monotonic() + timeout
    text = ""
    while not re.search(pattern, text):
        event = next_event(ws, timeout=max(0.1, deadline - time.monotonic()))
        assert event["type"] in ("stdout", "stderr"), (event, text)
        text += event["data"]
    return text


def closed_with(ws: ClientConnection) -> int | None:
    try:
        ws.recv(timeout=10)
    except ConnectionClosed:
        pass
    return ws.close_code


def execution_of(tenant: Any) -> Execution:
    return Execution.objects.filter(tenant=tenant).latest("created_at")


# ---------------------------------------------------------------- isol8's protocol


@pytest.mark.parametrize("key", [None, "isol8_not-a-key"])
def test_the_upgrade_needs_a_valid_key_in_the_header(stack, key):
    with pytest.raises(InvalidStatus) as refused, socket(stack, key):
        pass
    response = refused.value.response
    assert response.status_code == 401
    body = json.loads(response.body)
    assert body["code"] == "unauthorized" and body["error"]


def test_a_key_in_the_query_string_is_not_looked_at(stack, api_key):
    url = stack.url.replace("http://", "ws://") + f"/execute/ws?token={api_key}&apiKey={api_key}"
    with pytest.raises(InvalidStatus) as refused, ws_connect(url, open_timeout=10):
        pass
    assert refused.value.response.status_code == 401


def test_execute_streams_the_sse_events_and_closes_with_1000(stack, api_key, tenant):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "python", "code": "import sys\nprint('hi')\nprint('oops', file=sys.stderr)"})
        events = until_exit(ws)
        assert closed_with(ws) == 1000
    assert output(events) == "hi\n" and output(events, "stderr") == "oops\n"
    assert events[-1] == {"type": "exit", "data": "0", "phase": "code"}
    assert all(e.get("phase") == "code" for e in events)
    row = execution_of(tenant)
    assert row.status == "ok" and row.stdout == "hi\n" and row.streamed


def test_the_execution_is_in_the_history_and_its_events_replay(stack, api_key, tenant):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "bash", "code": "echo one; echo two"})
        live = until_exit(ws)
    row = execution_of(tenant)
    with stack.client(api_key) as api:
        assert api.get(f"/executions/{row.pk}").json()["stdout"].rstrip("\n") == "one\ntwo"
        with api.stream("GET", f"/executions/{row.pk}/events", headers={"Accept": "text/event-stream"}) as r:
            text = "".join(r.iter_text())
    replayed = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert output(replayed) == output(live) == "one\ntwo\n"


def test_invalid_json_is_an_error_then_close_1003(stack, api_key):
    with socket(stack, api_key) as ws:
        ws.send("{not json")
        assert next_event(ws) == {"type": "error", "data": "Invalid JSON message", "code": "invalid_json"}
        assert closed_with(ws) == 1003


def test_an_unknown_type_is_an_error_and_the_connection_stays_open(stack, api_key):
    with socket(stack, api_key) as ws:
        ws.send(json.dumps({"type": "dance"}))
        error = next_event(ws)
        assert error["type"] == "error" and "Unknown message type: dance" in error["data"]
        execute(ws, {"runtime": "bash", "code": "echo still here"})
        assert output(until_exit(ws)) == "still here\n"


def test_a_bad_request_gets_the_http_routes_error_and_nothing_runs(stack, api_key, tenant):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "cobol", "code": "x"})
        error = next_event(ws)
        assert closed_with(ws) == 1000
    assert error["type"] == "error" and error["code"] == "unsupported_runtime" and "cobol" in error["data"]
    assert not Execution.objects.filter(tenant=tenant).exists()


def test_one_execution_per_connection(stack, api_key):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "bash", "code": "sleep 1; echo first"})
        execute(ws, {"runtime": "bash", "code": "echo second"})
        events = until_exit(ws)
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and "One execution per connection" in errors[0]["data"]
    assert output(events) == "first\n"


# ------------------------------------------------------------------ live stdin


def test_each_line_of_stdin_reaches_the_program_as_it_is_sent(stack, api_key):
    code = "for i in range(3):\n    line = input()\n    print(f'got {line}', flush=True)\nprint('done')"
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "python", "code": code})
        seen = ""
        for word in ("alpha", "beta", "gamma"):
            ws.send(json.dumps({"type": "stdin", "data": word + "\n"}))
            # The echo comes back before the next line is sent: the program got it live.
            seen += wait_for_output(ws, f"got {word}")
        seen += output(until_exit(ws))
        assert seen == "got alpha\ngot beta\ngot gamma\ndone\n"


def test_stdin_eof_closes_the_programs_stdin(stack, api_key):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "bash", "code": "wc -c"})
        ws.send(json.dumps({"type": "stdin", "data": "12345"}))
        ws.send(json.dumps({"type": "stdin", "eof": True}))
        events = until_exit(ws)
    assert output(events).strip() == "5" and events[-1]["data"] == "0"


def test_the_request_stdin_comes_first_then_live_stdin(stack, api_key):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "bash", "code": "cat", "stdin": "from the request\n"})
        wait_for_output(ws, "from the request")
        ws.send(json.dumps({"type": "stdin", "data": "live\n", "eof": True}))
        assert "live\n" in output(until_exit(ws))


def test_a_stdin_flood_is_held_back_not_buffered(stack, api_key, tenant):
    """A program that never reads: the client's sends stall; Redis holds at most INPUT_MAX_QUEUED messages.

    Random data, so that permessage-deflate cannot shrink it. What the client
    manages to send before it stalls is what the kernel's socket buffers take
    (tcp_rmem allows 32 MiB on this VM) plus the server's small queues.
    """
    sent = [0]
    stop = threading.Event()

    def flood(ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while not stop.is_set():
                ws.send(json.dumps({"type": "stdin", "data": base64.b64encode(os.urandom(45_000)).decode()}))
                sent[0] += 45_000

    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "bash", "code": "sleep 9; echo woke"}, options={"timeoutMs": 30000})
        sender = threading.Thread(target=flood, args=(ws,), daemon=True)
        sender.start()
        time.sleep(4)
        at_four = sent[0]
        time.sleep(2)
        at_six = sent[0]
        row = Execution.objects.get(tenant=tenant)
        assert get_redis().llen(wire.input_key(row.pk)) <= wire.INPUT_MAX_QUEUED
        stop.set()
        # Stalled: in the last two seconds almost nothing more went in.
        assert at_six - at_four < 2 * 1024 * 1024, (at_four, at_six)
        assert at_six < 64 * 1024 * 1024, at_six
        events = []
        with contextlib.suppress(ConnectionClosed):
            events = until_exit(ws, timeout=60)
    assert "woke" in output(events) and events[-1]["data"] == "0", [e for e in events if e["type"] != "stdout"]
    # The run's input is closed: what was still queued is gone, and later input is refused.
    assert get_redis().get(wire.input_key(row.pk)) == wire.INPUT_ENDED.encode()


@pytest.mark.parametrize("code", ["true", "sleep 0.3", "head -c 10 > /dev/null; echo read-ten"])
def test_a_program_that_leaves_a_large_stdin_unread_ends_normally(api, code):
    """The launcher writes to a pipe nobody reads any more: EPIPE, never a dead launcher (SIGPIPE)."""
    body = run(api, {"runtime": "bash", "code": code, "stdin": "y" * 300_000}).json()
    assert body["exitCode"] == 0, body
    assert "sandbox failed" not in (body.get("stderr") or "")


def test_stdin_messages_are_checked(stack, api_key):
    with socket(stack, api_key) as ws:
        ws.send(json.dumps({"type": "stdin", "data": "early"}))
        assert "No execution is running" in next_event(ws)["data"]
        execute(ws, {"runtime": "bash", "code": "cat"})
        ws.send(json.dumps({"type": "stdin", "data": 42}))
        assert next_event(ws)["code"] == "validation_error"
        ws.send(json.dumps({"type": "stdin", "data": "y" * 70_000}))
        assert "at most" in next_event(ws)["data"]
        ws.send(json.dumps({"type": "signal", "signal": "SIGSTOP"}))
        assert next_event(ws)["code"] == "validation_error"
        ws.send(json.dumps({"type": "stdin", "data": "fine\n", "eof": True}))
        assert output(until_exit(ws)) == "fine\n"


# -------------------------------------------------------------- signals, cancel


def test_sigint_reaches_the_program_and_its_handler_runs(stack, api_key):
    code = (
        "import time\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "python", "code": code})
        wait_for_output(ws, "ready")
        ws.send(json.dumps({"type": "signal", "signal": "SIGINT"}))
        events = until_exit(ws, timeout=20)
    assert "interrupted" in output(events) and events[-1]["data"] == "0"


def test_sigterm_ends_the_program(stack, api_key):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "bash", "code": "echo ready; sleep 30"})
        wait_for_output(ws, "ready")
        ws.send(json.dumps({"type": "signal", "signal": "SIGTERM"}))
        events = until_exit(ws, timeout=20)
    assert events[-1]["data"] == str(128 + 15)


def test_closing_the_socket_before_exit_cancels_the_run(stack, api_key, tenant):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "bash", "code": "touch /sandbox/left-behind; echo started; sleep 60"})
        wait_for_output(ws, "started")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = execution_of(tenant)
        if row.status == "cancelled":
            break
        time.sleep(0.2)
    assert row.status == "cancelled", row.status
    # The tenant's next run finds a reset sandbox: no file and no process of the cancelled one.
    with stack.client(api_key) as api:
        check = "ls -A /sandbox | grep -vx main.sh; cat /proc/[0-9]*/comm 2>/dev/null | grep -cx sleep"
        body = run(api, {"runtime": "bash", "code": check}).json()
    assert body["stdout"].split() == ["0"], body


# -------------------------------------------------------------------- sessions


def test_a_session_over_websocket_keeps_its_state_for_http_runs(stack, api_key):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "python", "code": "open('/sandbox/state.txt', 'w').write(input())"},
                sessionId="ws-session")
        ws.send(json.dumps({"type": "stdin", "data": "kept\n"}))
        assert until_exit(ws)[-1]["data"] == "0"
    with stack.client(api_key) as api:
        body = run(api, {"runtime": "python", "code": "print(open('/sandbox/state.txt').read())"},
                   sessionId="ws-session").json()
        assert body["stdout"].rstrip("\n") == "kept"
        assert api.delete("/session/ws-session").status_code in (200, 204)


def test_a_busy_session_is_refused_over_websocket(stack, api_key):
    with stack.client(api_key) as api, socket(stack, api_key) as first:
        execute(first, {"runtime": "bash", "code": "echo busy; sleep 5"}, sessionId="ws-busy")
        wait_for_output(first, "busy")
        with socket(stack, api_key) as second:
            execute(second, {"runtime": "bash", "code": "true"}, sessionId="ws-busy")
            error = next_event(second)
        assert error["type"] == "error" and error["code"] == "session_busy"
        until_exit(first)
        api.delete("/session/ws-busy")


def test_another_tenants_session_is_not_reachable(stack, api_key, other_key):
    with stack.client(api_key) as api:
        assert run(api, {"runtime": "bash", "code": "echo mine > /sandbox/m"}, sessionId="ws-mine").status_code == 200
        with socket(stack, other_key) as ws:
            execute(ws, {"runtime": "bash", "code": "cat /sandbox/m || echo absent"}, sessionId="ws-mine")
            events = until_exit(ws)
        assert "mine" not in output(events)
        api.delete("/session/ws-mine")
    with stack.client(other_key) as other:
        other.delete("/session/ws-mine")


# ------------------------------------------------------------------- terminals


def test_a_tty_run_sees_a_terminal_of_the_sandbox(stack, api_key):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "bash", "code": "tty; test -t 0 && test -t 1 && echo both-terminals; stty size",
                     "tty": True})
        text = output(until_exit(ws))
    assert re.search(r"^/dev/pts/\d+\r?$", text, re.M), text
    assert "both-terminals" in text
    assert "24 80" in text  # the default size


def test_resize_reaches_the_terminal(stack, api_key):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "bash", "code": "read -r _; stty size", "tty": True})
        ws.send(json.dumps({"type": "resize", "cols": 132, "rows": 43}))
        time.sleep(0.3)
        ws.send(json.dumps({"type": "stdin", "data": "go\n"}))
        assert "43 132" in output(until_exit(ws))


def test_an_interactive_bash_on_a_terminal(stack, api_key):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "bash", "cmd": "PS1='isol8$ ' bash --norc -i", "tty": True})
        wait_for_output(ws, r"isol8\$ ")
        ws.send(json.dumps({"type": "stdin", "data": "echo $((6 * 7))\n"}))
        wait_for_output(ws, r"42\r?\n")
        ws.send(json.dumps({"type": "stdin", "data": "sleep 30\n"}))
        time.sleep(0.5)
        ws.send(json.dumps({"type": "stdin", "data": "\x03"}))  # Ctrl-C: the terminal interrupts the sleep
        wait_for_output(ws, r"isol8\$ ", timeout=10)
        ws.send(json.dumps({"type": "stdin", "data": "exit 3\n"}))
        assert until_exit(ws, timeout=20)[-1]["data"] == "3"


def test_the_python_repl_on_a_terminal(stack, api_key):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "bash", "cmd": "python3 -q", "tty": True})
        wait_for_output(ws, ">>> ")
        ws.send(json.dumps({"type": "stdin", "data": "1+1\n"}))
        wait_for_output(ws, r"\n2\r?\n")
        ws.send(json.dumps({"type": "stdin", "data": "name = input('name? ')\n"}))
        wait_for_output(ws, r"name\? ")
        ws.send(json.dumps({"type": "stdin", "data": "isol8\n"}))
        ws.send(json.dumps({"type": "stdin", "data": "print(name.upper())\n"}))
        wait_for_output(ws, r"ISOL8\r?\n")
        ws.send(json.dumps({"type": "stdin", "eof": True}))  # Ctrl-D ends the REPL
        assert until_exit(ws, timeout=20)[-1]["data"] == "0"


def test_the_node_repl_on_a_terminal(stack, api_key):
    with socket(stack, api_key) as ws:
        execute(ws, {"runtime": "node", "cmd": "node", "tty": True})
        wait_for_output(ws, "> ")
        ws.send(json.dumps({"type": "stdin", "data": "1 + 41\n"}))
        wait_for_output(ws, r"42")
        ws.send(json.dumps({"type": "stdin", "data": ".exit\n"}))
        assert until_exit(ws, timeout=20)[-1]["data"] == "0"


def test_a_tty_run_over_http_answers_whole(api):
    body = run(api, {"runtime": "bash", "code": "test -t 1 && echo on-a-terminal", "tty": True}).json()
    assert body["stdout"].strip() == "on-a-terminal"


@pytest.fixture
def other_key(tenant: Any) -> str:
    from tenants.services import tenant_create

    return make_key(tenant_create(slug=f"{tenant.slug}-other", name="Another tenant"))


# --------------------------------------------------- browsers: session tokens


def test_a_session_token_opens_the_websocket_without_a_header(stack, api_key, other_key):
    with stack.client(api_key) as api:
        minted = api.post("/session/ws-token/token").json()
        url = stack.url.replace("http://", "ws://") + minted["wsUrl"]
        with ws_connect(url, open_timeout=10) as ws:  # no Authorization header, as a browser's WebSocket
            execute(ws, {"runtime": "bash", "code": "echo via-token > t.txt; cat t.txt"}, sessionId="ws-token")
            assert output(until_exit(ws)) == "via-token\n"
        with ws_connect(url, open_timeout=10) as ws:
            execute(ws, {"runtime": "bash", "code": "true"}, sessionId="elsewhere")
            error = next_event(ws)
            assert (error["type"], error["code"], error["status"]) == ("error", "forbidden", 403)
            assert closed_with(ws) == 1000
        # The file the token's run wrote is the session's, as over HTTP.
        body = run(api, {"runtime": "bash", "code": "cat t.txt"}, sessionId="ws-token").json()
        assert body["stdout"].rstrip("\n") == "via-token"
        api.delete("/session/ws-token")
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(url + "x", open_timeout=10)
    assert refused.value.response.status_code == 401
    # A header wins over the token: this connection is the other tenant's, bound to no session.
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {other_key}"}, open_timeout=10) as ws:
        execute(ws, {"runtime": "bash", "code": "echo no-session"})
        assert output(until_exit(ws)) == "no-session\n"


# ------------------------------------------------------- the Python client


def test_the_clients_execute_stream_feeds_an_iterable_as_the_program_reads(stack, api_key):
    answers: list[str] = []
    answered = threading.Event()

    def lines():
        for word in ("alpha", "beta"):
            yield f"{word}\n"
            # The next line waits for the answer to this one: input and output interleave.
            assert answered.wait(30)
            answered.clear()

    code = "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\n"
    with RemoteIsol8(stack.url, api_key) as client:
        for event in client.execute_stream(code, stdin=lines()):
            if event.type == "stdout":
                # A line may come in pieces (the exec mode writes text and newline apart).
                answers.append(event.data)
                if event.data.endswith("\n"):
                    answered.set()
            elif event.type == "exit":
                assert event.data == "0"
    assert "".join(answers) == "ALPHA\nBETA\n"


def test_the_clients_interactive_run_takes_a_signal_and_a_terminal(stack, api_key):
    with RemoteIsol8(stack.url, api_key) as client:
        with client.interactive(cmd="python3 -q", runtime="python", tty=True) as term:
            term.resize(90, 20)
            term.send("import shutil; shutil.get_terminal_size()\r")
            term.send("1+1\r")
            seen = ""
            events = iter(term)
            while "2\r\n" not in seen or "columns=90" not in seen:
                event = next(events)
                assert event.type == "stdout", (event, seen)
                seen += event.data
            term.send("\x04")  # Ctrl-D: the REPL ends
            assert next(e for e in events if e.type == "exit").exit_code == 0
        code = (
            "import time\ntry:\n    print('up', flush=True)\n    time.sleep(30)\n"
            "except KeyboardInterrupt:\n    print('caught')"
        )
        with client.interactive(code) as run_:
            events = iter(run_)
            seen = ""
            while seen != "up\n":  # (it may come in pieces)
                seen += next(events).data
            run_.signal("SIGINT")
            rest = list(events)
            assert "caught\n" in "".join(e.data for e in rest if e.type == "stdout") and rest[-1].exit_code == 0
