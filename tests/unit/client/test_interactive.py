"""Unit tests of the client's WebSocket path (GET /execute/ws) through a real WebSocket.

A small fake isol8 (the ``websockets`` library's threaded server on a free
local port) plays a scripted part of the protocol of executions/ws.py and
records the upgrade requests and every message the client sent. That is
enough to exercise InteractiveRun, ``execute_stream(stdin=<iterable>)``,
terminal.py and ``isol8 run -i`` / ``isol8 shell`` end to end on the client
side, without Django, Redis or Docker. Every wait has a timeout, so a broken
client fails a test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import termios
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import httpx
import pytest
from isol8_client import (
    AuthenticationError,
    ConflictError,
    Isol8ConnectionError,
    Isol8Error,
    QuotaExceededError,
    RemoteIsol8,
    StreamEvent,
    __version__,
    cli,
    terminal,
)
from isol8_client.interactive import websocket_url
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from tests.unit.client.conftest import MockServer, sse

pytestmark = pytest.mark.timeout(10)

TIMEOUT = 3.0  # seconds the fake server waits for a client message before giving up on the test
KEY = "isol8_key"


# -- the fake server -------------------------------------------------------------------


class Peer:
    """The fake server's end of one connection: JSON messages in (recorded) and out."""

    def __init__(self, ws: ServerConnection, received: list[dict[str, Any]]) -> None:
        self.ws = ws
        self.received = received

    def recv(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.ws.recv(timeout=TIMEOUT))
        self.received.append(message)
        return message

    def send(self, kind: str, data: str = "", **extra: Any) -> None:
        self.ws.send(json.dumps({"type": kind, "data": data, **extra}))


Script = Callable[[Peer], None]
Refusal = Callable[[ServerConnection, Request], Response | None]


@dataclass
class FakeIsol8:
    url: str
    requests: list[Request] = field(default_factory=list)  # every upgrade request, refused ones too
    received: list[dict[str, Any]] = field(default_factory=list)  # the client's messages, in order
    failures: list[BaseException] = field(default_factory=list)  # what went wrong inside a script


@contextlib.contextmanager
def fake_isol8(script: Script, refuse: Refusal | None = None) -> Iterator[FakeIsol8]:
    """A WebSocket server running ``script`` for each connection; returning from it closes with 1000.

    On leaving, the server is shut down (which waits for the scripts), so
    ``received`` is complete after the ``with`` block; a script that failed
    (an unexpected message, a timeout) fails the test.
    """
    fake: FakeIsol8

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        fake.requests.append(request)
        return refuse(connection, request) if refuse is not None else None

    def handler(ws: ServerConnection) -> None:
        try:
            script(Peer(ws, fake.received))
        except Exception as exc:  # reported to the test when the server is shut down
            fake.failures.append(exc)
            raise

    server = serve(handler, "127.0.0.1", 0, process_request=process_request)
    fake = FakeIsol8(url=f"http://127.0.0.1:{server.socket.getsockname()[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
    assert not fake.failures, fake.failures


def echo(exit_code: str = "0") -> Script:
    """A program like ``cat``: each stdin comes back as stdout; exit after EOF."""

    def script(peer: Peer) -> None:
        assert peer.recv()["type"] == "execute"
        while True:
            message = peer.recv()
            if message == {"type": "stdin", "eof": True}:
                peer.send("exit", exit_code, phase="code")
                return
            if message["type"] == "stdin":
                peer.send("stdout", message["data"], phase="code")

    return script


def refuse_upgrade(status: HTTPStatus, body: dict[str, str], **headers: str) -> Refusal:
    """A ``process_request`` answering the upgrade with a JSON error, as the server's middleware does."""

    def process_request(connection: ServerConnection, request: Request) -> Response:
        response = connection.respond(status, json.dumps(body))
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        for name, value in headers.items():
            response.headers[name] = value
        return response

    return process_request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stdout(data: str) -> StreamEvent:
    return StreamEvent("stdout", data, "code")


def exit_event(code: str) -> StreamEvent:
    return StreamEvent("exit", code, "code")


EOF = {"type": "stdin", "eof": True}


# -- websocket_url ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "url"),
    [("http://localhost:3000", "ws://localhost:3000/execute/ws"),
     ("https://isol8.example.com", "wss://isol8.example.com/execute/ws"),
     ("http://h:8080/prefix", "ws://h:8080/prefix/execute/ws")],
)
def test_websocket_url_maps_the_http_scheme_and_appends_the_route(host: str, url: str) -> None:
    assert websocket_url(host) == url


# -- handshake and execute message -------------------------------------------------------


def test_interactive_authenticates_the_upgrade_and_starts_with_the_execute_message() -> None:
    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("exit", "0", phase="code")

    with fake_isol8(script) as fake:
        client = RemoteIsol8(fake.url, KEY, "sess-1", memory_limit="256m")
        with client.interactive("print(1)", tty=True, env={"A": "1"}, timeout_ms=500) as run:
            events = list(run)
    [request] = fake.requests
    assert request.path == "/execute/ws"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers.get_all("User-Agent") == [f"isol8-client-python/{__version__}"]
    assert fake.received == [{
        "type": "execute",
        "request": {"runtime": "python", "code": "print(1)", "env": {"A": "1"}, "timeoutMs": 500, "tty": True},
        "options": {"memoryLimit": "256m"},
        "sessionId": "sess-1",
    }]
    assert events == [exit_event("0")]
    assert run.exit_code == 0


def test_interactive_without_tty_or_session_leaves_both_out() -> None:
    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("exit", "0")

    with fake_isol8(script) as fake, RemoteIsol8(fake.url, KEY).interactive(cmd="cat", runtime="bash") as run:
        list(run)
    assert fake.received == [{"type": "execute", "request": {"runtime": "bash", "cmd": "cat"}}]


def test_stateful_client_sends_stateful_in_the_execute_message_and_reads_display_events() -> None:
    bundle = {"text/html": "<b>hi</b>", "text/plain": "hi"}

    def script(peer: Peer) -> None:
        peer.recv()
        peer.ws.send(json.dumps({"type": "display", "data": bundle, "phase": "code"}))
        peer.send("novel", "from a newer server")  # an unknown type: skipped
        peer.send("exit", "0", phase="code")

    with fake_isol8(script) as fake, RemoteIsol8(fake.url, KEY, "s1", stateful=True).interactive("show()") as run:
        events = list(run)
    assert fake.received == [{"type": "execute", "request": {"runtime": "python", "code": "show()"},
                              "sessionId": "s1", "stateful": True}]
    assert events == [StreamEvent("display", bundle, "code"), exit_event("0")]


# -- events and controls -------------------------------------------------------------------


def test_events_are_yielded_and_controls_send_exactly_the_protocol_messages() -> None:
    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("stdout", "ready\n", phase="code")
        peer.send("stderr", "warn\n", phase="code")
        while peer.recv() != EOF:
            pass
        peer.send("exit", "130", phase="code")

    with fake_isol8(script) as fake, RemoteIsol8(fake.url, KEY).interactive("input()") as run:
        events = []
        for event in run:
            events.append(event)
            if event.type == "stderr":
                run.send("hi\n")
                run.send(b"caf\xc3\xa9\n")
                run.send("")  # nothing to write: no message
                run.signal("SIGINT")
                run.signal("SIGKILL")
                run.resize(120, 40)
                run.close_stdin()
    assert fake.received[1:] == [
        {"type": "stdin", "data": "hi\n"},
        {"type": "stdin", "data": "café\n"},
        {"type": "signal", "signal": "SIGINT"},
        {"type": "signal", "signal": "SIGKILL"},
        {"type": "resize", "cols": 120, "rows": 40},
        EOF,
    ]
    assert events == [stdout("ready\n"), StreamEvent("stderr", "warn\n", "code"), exit_event("130")]
    assert run.exit_code == 130


def test_signal_refuses_an_unknown_name_without_sending_anything() -> None:
    def script(peer: Peer) -> None:
        peer.recv()
        while peer.recv() != EOF:
            pass
        peer.send("exit", "0")

    with fake_isol8(script) as fake, RemoteIsol8(fake.url, KEY).interactive("1") as run:
        with pytest.raises(ValueError, match="SIGINT, SIGTERM, SIGKILL"):
            run.signal("SIGHUP")
        run.close_stdin()
        list(run)
    assert fake.received[1:] == [EOF]


def test_an_error_event_without_status_is_an_event_not_an_exception() -> None:
    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("error", "stdin message too large", code="stdin_too_large")
        peer.send("exit", "1", phase="code")

    with fake_isol8(script) as fake, RemoteIsol8(fake.url, KEY).interactive("1") as run:
        events = list(run)
    assert fake.received[0]["type"] == "execute"
    assert events == [StreamEvent("error", "stdin message too large"), exit_event("1")]
    assert run.exit_code == 1


def test_sending_after_the_server_closed_is_silently_dropped() -> None:
    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("exit", "0")

    with fake_isol8(script) as fake, RemoteIsol8(fake.url, KEY).interactive("1") as run:
        assert list(run) == [StreamEvent("exit", "0")]
        run.send("late")
        run.close_stdin()
    assert fake.received == [{"type": "execute", "request": {"runtime": "python", "code": "1"}}]


# -- refusals and failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "error_class"),
    [(409, "session_busy", ConflictError), (429, "quota_exceeded", QuotaExceededError)],
)
def test_a_refused_execute_raises_the_http_routes_exception(
    status: int, code: str, error_class: type[Isol8Error]
) -> None:
    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("error", "Session is busy", code=code, status=status)

    with (
        fake_isol8(script) as fake,
        RemoteIsol8(fake.url, KEY, "s1").interactive("1") as run,
        pytest.raises(error_class) as info,
    ):
        next(iter(run))
    assert (info.value.message, info.value.code, info.value.status) == ("Session is busy", code, status)
    assert fake.received[0]["sessionId"] == "s1"


def test_a_refused_upgrade_raises_authentication_error_with_the_servers_message() -> None:
    refusal = refuse_upgrade(HTTPStatus.UNAUTHORIZED, {"error": "Invalid API key", "code": "unauthorized"})
    with fake_isol8(echo(), refuse=refusal) as fake, pytest.raises(AuthenticationError) as info:
        RemoteIsol8(fake.url, "wrong").interactive("1")
    assert (info.value.message, info.value.code, info.value.status) == ("Invalid API key", "unauthorized", 401)
    assert fake.requests[0].headers["Authorization"] == "Bearer wrong"
    assert fake.received == []


def test_a_refused_upgrade_keeps_retry_after() -> None:
    refusal = refuse_upgrade(
        HTTPStatus.TOO_MANY_REQUESTS, {"error": "Too many executions", "code": "quota_exceeded"}, **{"Retry-After": "7"}
    )
    with fake_isol8(echo(), refuse=refusal) as fake, pytest.raises(QuotaExceededError) as info:
        RemoteIsol8(fake.url, KEY).interactive("1")
    assert (info.value.code, info.value.retry_after) == ("quota_exceeded", 7.0)


def test_nothing_listening_raises_connection_error() -> None:
    client = RemoteIsol8(f"http://127.0.0.1:{free_port()}", KEY)
    with pytest.raises(Isol8ConnectionError, match="Could not open a WebSocket"):
        client.interactive("1")
    with pytest.raises(Isol8ConnectionError):
        next(client.execute_stream("1", stdin=iter(["x"])))


def test_the_server_breaking_the_connection_before_exit_raises_connection_error() -> None:
    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("stdout", "partial", phase="code")
        peer.ws.close(1011, "worker lost")

    with fake_isol8(script) as fake, RemoteIsol8(fake.url, KEY).interactive("1") as run:
        events = []
        with pytest.raises(Isol8ConnectionError, match="closed before the run's exit"):
            for event in run:
                events.append(event)
    assert events == [stdout("partial")]
    assert run.exit_code is None
    assert len(fake.received) == 1


def test_the_server_going_away_before_exit_raises_connection_error() -> None:
    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("stdout", "partial", phase="code")
        peer.ws.close(1001, "server shutting down")

    with fake_isol8(script) as fake, RemoteIsol8(fake.url, KEY).interactive("1") as run:
        events = []
        with pytest.raises(Isol8ConnectionError):
            for event in run:
                events.append(event)
    assert events == [stdout("partial")]
    assert fake.received[0]["type"] == "execute"


def test_closing_the_run_before_exit_closes_the_websocket_normally() -> None:
    close_codes: queue.Queue[int | None] = queue.Queue()

    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("stdout", "working", phase="code")
        try:
            peer.recv()
        except ConnectionClosed as exc:
            close_codes.put(exc.rcvd.code if exc.rcvd else None)

    with fake_isol8(script) as fake:
        with RemoteIsol8(fake.url, KEY).interactive("1") as run:
            assert next(iter(run)) == stdout("working")
        assert close_codes.get(timeout=TIMEOUT) == 1000
    assert len(fake.received) == 1


# -- execute_stream(stdin=...) -----------------------------------------------------------------


def test_execute_stream_feeds_an_iterable_over_the_websocket_while_events_are_read() -> None:
    echoed: queue.Queue[str] = queue.Queue()

    def lines() -> Iterator[str | bytes]:
        yield "one\n"
        # The next line exists only once the program has echoed the first: input is live, not buffered.
        assert echoed.get(timeout=TIMEOUT) == "one\n"
        yield b"two\n"

    with fake_isol8(echo("5")) as fake:
        client = RemoteIsol8(fake.url, KEY, "s1")
        stream = client.execute_stream("import sys; print(sys.stdin.read())", stdin=lines())
        assert fake.requests == []  # nothing happens before iteration starts
        events = []
        for event in stream:
            events.append(event)
            if event.type == "stdout":
                echoed.put(event.text)
    assert fake.received == [
        {"type": "execute", "request": {"runtime": "python", "code": "import sys; print(sys.stdin.read())"},
         "sessionId": "s1"},
        {"type": "stdin", "data": "one\n"},
        {"type": "stdin", "data": "two\n"},
        EOF,
    ]
    assert events == [stdout("one\n"), stdout("two\n"), exit_event("5")]


def test_execute_stream_with_an_empty_iterable_sends_only_eof() -> None:
    with fake_isol8(echo()) as fake:
        events = list(RemoteIsol8(fake.url, KEY).execute_stream(cmd="cat", runtime="bash", stdin=[]))
    assert fake.received[1:] == [EOF]
    assert events == [exit_event("0")]


def test_execute_stream_keeps_a_character_split_between_two_bytes_chunks() -> None:
    with fake_isol8(echo()) as fake:
        list(RemoteIsol8(fake.url, KEY).execute_stream("1", stdin=[b"caf\xc3", b"\xa9!"]))
    assert "".join(m.get("data", "") for m in fake.received[1:]) == "café!"


def test_a_failing_stdin_iterable_still_closes_the_programs_stdin() -> None:
    def lines():
        yield "first\n"
        raise OSError("the file went away")

    with fake_isol8(echo()) as fake:
        events = list(RemoteIsol8(fake.url, KEY).execute_stream("1", stdin=lines()))
    # The program got what there was, then EOF (not a wait until its timeout).
    assert [e.data for e in events if e.type == "stdout"] == ["first\n"]
    assert events[-1].type == "exit"
    assert fake.received[-1] == {"type": "stdin", "eof": True}


def test_leaving_execute_stream_early_closes_the_websocket() -> None:
    close_codes: queue.Queue[int | None] = queue.Queue()

    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("stdout", "first", phase="code")
        try:
            while True:
                peer.recv()
        except ConnectionClosed as exc:
            close_codes.put(exc.rcvd.code if exc.rcvd else None)

    with fake_isol8(script) as fake:
        stream = cast(Generator[StreamEvent, None, None], RemoteIsol8(fake.url, KEY).execute_stream("1", stdin=[]))
        assert next(stream) == stdout("first")
        stream.close()
        assert close_codes.get(timeout=TIMEOUT) == 1000


def test_execute_stream_with_a_string_stdin_stays_on_http(server: MockServer) -> None:
    server.route("POST", "/execute/stream", httpx.Response(200, content=sse({"type": "exit", "data": "0"})))
    client = RemoteIsol8("http://isol8.test", KEY, transport=server.transport)
    assert list(client.execute_stream("input()", stdin="abc")) == [StreamEvent("exit", "0")]
    assert server.paths() == ["POST /execute/stream"]
    assert server.bodies("/execute/stream") == [{"request": {"runtime": "python", "code": "input()", "stdin": "abc"}}]


# -- terminal.py ------------------------------------------------------------------------------


def test_pump_stdin_sends_what_the_pipe_gives_whole_characters_then_eof() -> None:
    read_end, write_end = os.pipe()
    try:
        with fake_isol8(echo()) as fake, RemoteIsol8(fake.url, KEY).interactive("1") as run:
            os.write(write_end, b"h\xc3")  # "é" is cut after its first byte
            thread = terminal.pump_stdin(run, read_end)
            events = []
            for event in run:
                events.append(event)
                if event == stdout("h"):
                    os.write(write_end, b"\xa9llo")
                    os.close(write_end)
            thread.join(TIMEOUT)
            assert not thread.is_alive()
    finally:
        os.close(read_end)
        with contextlib.suppress(OSError):
            os.close(write_end)
    assert fake.received[1:] == [{"type": "stdin", "data": "h"}, {"type": "stdin", "data": "éllo"}, EOF]
    assert events == [stdout("h"), stdout("éllo"), exit_event("0")]


def test_copy_output_writes_the_streams_and_returns_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("stdout", "out\n")
        peer.send("stderr", "err\n")
        peer.send("error", "careful", code="x")
        peer.send("exit", "4")

    with fake_isol8(script) as fake, RemoteIsol8(fake.url, KEY).interactive("1") as run:
        assert terminal.copy_output(run) == 4
    assert capsys.readouterr() == ("out\n", "err\n\r\n[ERR] careful\r\n")


def test_interrupts_go_to_turns_ctrl_c_into_a_sigint_message() -> None:
    with fake_isol8(echo()) as fake, RemoteIsol8(fake.url, KEY).interactive("1") as run:
        previous = signal.getsignal(signal.SIGINT)
        with terminal.interrupts_go_to(run):
            signal.raise_signal(signal.SIGINT)  # would raise KeyboardInterrupt here without the handler
        assert signal.getsignal(signal.SIGINT) is previous
        run.close_stdin()
        list(run)
    assert fake.received[1:] == [{"type": "signal", "signal": "SIGINT"}, EOF]


def test_raw_terminal_sends_the_size_and_follows_resizes_then_restores_the_terminal() -> None:
    master, slave = os.openpty()
    try:
        termios.tcsetwinsize(slave, (24, 80))
        before = termios.tcgetattr(slave)
        with fake_isol8(echo()) as fake, RemoteIsol8(fake.url, KEY).interactive("1", tty=True) as run:
            with terminal.raw_terminal(run, slave):
                raw = termios.tcgetattr(slave)
                termios.tcsetwinsize(slave, (50, 132))
                signal.raise_signal(signal.SIGWINCH)
            after = termios.tcgetattr(slave)
            run.close_stdin()
            list(run)
    finally:
        os.close(slave)
        os.close(master)
    assert fake.received[1:] == [{"type": "resize", "cols": 80, "rows": 24},
                                 {"type": "resize", "cols": 132, "rows": 50}, EOF]
    assert before[3] & termios.ICANON
    assert not raw[3] & termios.ICANON
    assert after == before


def test_raw_terminal_does_nothing_on_a_pipe() -> None:
    read_end, write_end = os.pipe()
    try:
        with fake_isol8(echo()) as fake, RemoteIsol8(fake.url, KEY).interactive("1") as run:
            with terminal.raw_terminal(run, read_end):
                pass
            run.close_stdin()
            list(run)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert fake.received[1:] == [EOF]


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def piped_stdin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bytes], None]]:
    """The CLI's stdin as a pipe: call it with the bytes to pipe in (then EOF)."""
    read_end, write_end = os.pipe()
    real_pump, real_raw = terminal.pump_stdin, terminal.raw_terminal
    monkeypatch.setattr(terminal, "pump_stdin", lambda run, fd=0: real_pump(run, read_end))
    monkeypatch.setattr(terminal, "raw_terminal", lambda run, fd=0: real_raw(run, read_end))

    def pipe_in(data: bytes) -> None:
        os.write(write_end, data)
        os.close(write_end)

    yield pipe_in
    os.close(read_end)
    with contextlib.suppress(OSError):
        os.close(write_end)


def test_cli_run_interactive_pipes_stdin_live_and_exits_with_the_programs_code(
    piped_stdin: Callable[[bytes], None], capsys: pytest.CaptureFixture[str]
) -> None:
    piped_stdin("héllo\n".encode())
    with fake_isol8(echo("3")) as fake:
        code = cli.main(["run", "-i", "--host", fake.url, "--key", KEY, "--timeout", "900", "-e", "print(1)"])
    assert code == 3
    assert capsys.readouterr().out == "héllo\n"
    assert fake.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert fake.received == [
        {"type": "execute", "request": {"runtime": "python", "code": "print(1)"}, "options": {"timeoutMs": 900}},
        {"type": "stdin", "data": "héllo\n"},
        EOF,
    ]


def test_cli_run_interactive_reports_a_refused_execute(
    piped_stdin: Callable[[bytes], None], capsys: pytest.CaptureFixture[str]
) -> None:
    def script(peer: Peer) -> None:
        peer.recv()
        peer.send("error", "Session is busy", code="session_busy", status=409)

    piped_stdin(b"")
    with fake_isol8(script) as fake:
        code = cli.main(["run", "-i", "--host", fake.url, "--key", KEY, "--session-id", "s1", "-e", "1"])
    assert code == 1
    assert "[ERR] Session is busy (409 session_busy)" in capsys.readouterr().err
    assert fake.received[0]["sessionId"] == "s1"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["run", "-i"], "-i gives stdin to the program"),
     (["run", "-i", "--stdin", "x", "-e", "1"], "goes with neither --stdin nor --no-stream"),
     (["run", "-i", "--no-stream", "-e", "1"], "goes with neither --stdin nor --no-stream")],
)
def test_cli_run_interactive_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens on this port: reaching the network would exit 1, not 2.
    assert cli.main([*args, "--host", f"http://127.0.0.1:{free_port()}", "--key", KEY]) == cli.USAGE_ERROR
    assert message in capsys.readouterr().err


def test_cli_shell_runs_a_tty_command_in_the_session_with_its_runtime(
    server: MockServer, piped_stdin: Callable[[bytes], None], capsys: pytest.CaptureFixture[str]
) -> None:
    server.route("GET", "/sessions", httpx.Response(200, json={"sessions": [
        {"id": "other", "isActive": True, "runtime": "node"},
        {"id": "s1", "isActive": True, "runtime": "python"},
    ]}))
    piped_stdin(b"exit\n")
    with fake_isol8(echo("0")) as fake:
        code = cli.main(["shell", "s1", "--host", fake.url, "--key", KEY], transport=server.transport)
    assert code == 0
    assert capsys.readouterr().out == "exit\n"
    assert server.paths() == ["GET /sessions"]  # the session is kept
    assert fake.received == [
        {"type": "execute", "request": {"runtime": "python", "cmd": "bash -i", "tty": True}, "sessionId": "s1"},
        {"type": "stdin", "data": "exit\n"},
        EOF,
    ]
