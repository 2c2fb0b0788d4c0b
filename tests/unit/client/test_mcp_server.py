"""Unit tests of `isol8 mcp`: the tools against httpx.MockTransport, and the SDK's view of them.

The tool methods are called directly to pin what each one sends and returns;
an in-process MCP client from the SDK then checks what a host sees (schemas,
structured output that validates, errors as ``isError`` results). The real
stdio and HTTP transports are in tests/stack/client/test_mcp.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
from isol8_client import ExecutionResult, cli
from isol8_client import aio as aio_module
from isol8_client import mcp_server as m
from mcp import Client
from mcp_types import CallToolResult, ImageContent, TextContent

from tests.unit.client.conftest import MockServer, result_json

HOST = "http://isol8.test"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(32))
T = TypeVar("T")


def run(call: Awaitable[T]) -> T:
    async def main() -> T:
        return await call

    return asyncio.run(main())


def tools(server: MockServer, **kwargs: Any) -> m.Isol8Tools:
    return m.Isol8Tools(m.Isol8Target(HOST, "isol8_key", transport=server.transport, **kwargs))


def text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def error(status: int, message: str, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": message, "code": code}, headers=headers)


# -- run_code / session_run ----------------------------------------------------------


def test_run_code_sends_one_execute_and_returns_structured_and_text_output(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json(stdout="42", durationMs=7)))
    result = run(tools(server).run_code("print(42)", runtime="python", stdin="in", timeout_ms=5000))
    assert server.bodies("/execute") == [
        {"request": {"runtime": "python", "code": "print(42)", "stdin": "in", "timeoutMs": 5000}}
    ]
    assert server.requests[0].headers["Authorization"] == "Bearer isol8_key"
    assert result.is_error is False
    assert result.structured_content == {
        "stdout": "42", "stderr": "", "exitCode": 0, "durationMs": 7, "executionId": "e-1",
        "timedOut": False, "truncated": False, "status": "ok", "runtime": "python",
    }
    assert text(result) == "exit code 0 (ok, 7 ms)\nstdout:\n42\nstderr: (empty)"


def test_run_code_leaves_out_what_the_caller_left_out(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json()))
    run(tools(server).run_code("console.log(1)", runtime="node"))
    assert server.bodies("/execute") == [{"request": {"runtime": "node", "code": "console.log(1)"}}]


def test_a_failing_or_timed_out_program_is_a_result_not_a_tool_error(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json(
        stdout="", stderr="--- EXECUTION TIMED OUT ---", exitCode=137, status="timeout", timedOut=True,
        truncated=True)))
    result = run(tools(server).run_code("while True: pass"))
    assert result.is_error is False
    assert result.structured_content is not None
    assert (result.structured_content["exitCode"], result.structured_content["timedOut"]) == (137, True)
    assert text(result).splitlines()[:3] == [
        "exit code 137 (timeout, 12 ms)",
        "The program was killed at its time limit.",
        "Output passed the server's output limit and was truncated.",
    ]


def test_session_run_sends_the_session_id_and_returns_it(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json()))
    result = run(tools(server).session_run("x = 1", session_id="work-1"))
    assert server.bodies("/execute")[0]["sessionId"] == "work-1"
    assert result.structured_content is not None and result.structured_content["sessionId"] == "work-1"
    assert text(result).startswith("exit code 0 (ok, 12 ms) in session work-1\n")


def test_session_run_without_an_id_starts_a_new_session_and_names_it(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json()))
    result = run(tools(server).session_run("pass"))
    [body] = server.bodies("/execute")
    assert body["sessionId"].startswith("mcp-")
    assert result.structured_content is not None and result.structured_content["sessionId"] == body["sessionId"]


def test_session_run_sends_stateful_only_when_asked(server: MockServer) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json(value={"text/plain": "2"})))
    result = run(tools(server).session_run("1 + 1", session_id="nb", stateful=True))
    run(tools(server).session_run("2", session_id="plain"))
    first, second = server.bodies("/execute")
    assert first["stateful"] is True and "stateful" not in second
    [block] = result.content
    assert isinstance(block, TextContent) and "value:\n2" in block.text


def test_a_stateful_cells_images_become_image_content_and_its_value_a_line() -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    result = ExecutionResult.from_json(result_json(
        outputs=[{"type": "display", "data": {"image/png": png, "text/plain": "<Figure>"}},
                 {"type": "display", "data": {"image/png": "not base64!"}}],
        value={"text/plain": "43", "image/jpeg": base64.b64encode(b"\xff\xd8jpeg").decode()},
        stateLost=True,
    ))
    blocks = m.rich_content(result)
    assert all(isinstance(b, ImageContent) for b in blocks)
    assert [(b.mime_type, base64.b64decode(b.data)) for b in blocks if isinstance(b, ImageContent)] == [
        ("image/png", b"\x89PNG\r\n\x1a\nfake"), ("image/jpeg", b"\xff\xd8jpeg")]
    text = m.run_text(result, "nb")
    assert "value:\n43" in text and "restarted" in text
    assert m.rich_content(ExecutionResult.from_json(result_json())) == []


# -- files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "encoding", "sent"),
    [("name,age\nAda,36\n", "utf-8", b"name,age\nAda,36\n"),
     ("héllo", "utf-8", "héllo".encode()),
     (base64.b64encode(bytes(range(256))).decode(), "base64", bytes(range(256)))],
)
def test_upload_file_takes_text_or_base64(server: MockServer, content: str, encoding: m.Encoding,
                                          sent: bytes) -> None:
    server.route("POST", "/file", httpx.Response(200, json={"ok": True}))
    result = run(tools(server).upload_file("s1", "/sandbox/f", content, encoding=encoding))
    [body] = server.bodies("/file")
    assert body == {"sessionId": "s1", "path": "/sandbox/f", "content": base64.b64encode(sent).decode()}
    assert result.structured_content == {"sessionId": "s1", "path": "/sandbox/f", "sizeBytes": len(sent)}
    assert text(result) == f"Wrote {len(sent)} bytes to /sandbox/f in session s1."


def test_upload_file_refuses_bad_base64_without_calling_the_server(server: MockServer) -> None:
    result = run(tools(server).upload_file("s1", "/sandbox/f", "not base64!", encoding="base64"))
    assert result.is_error is True
    assert text(result).startswith("content is not valid base64")
    assert server.requests == []


def file_answer(data: bytes) -> httpx.Response:
    return httpx.Response(200, json={"content": base64.b64encode(data).decode()})


def test_download_file_returns_utf8_text_as_text(server: MockServer) -> None:
    server.route("GET", "/file", file_answer("3 rows ✓\n".encode()))
    result = run(tools(server).download_file("s1", "/sandbox/out.txt"))
    assert server.requests[0].url.params == httpx.QueryParams({"sessionId": "s1", "path": "/sandbox/out.txt"})
    assert result.structured_content == {
        "sessionId": "s1", "path": "/sandbox/out.txt", "encoding": "utf-8", "content": "3 rows ✓\n",
        "sizeBytes": 11, "mimeType": None,
    }
    assert text(result) == "/sandbox/out.txt (11 bytes, UTF-8 text):\n3 rows ✓\n"


def test_download_file_returns_other_bytes_as_base64_and_says_so(server: MockServer) -> None:
    data = bytes(range(256))
    server.route("GET", "/file", file_answer(data))
    result = run(tools(server).download_file("s1", "/sandbox/out.bin"))
    assert result.structured_content is not None
    assert result.structured_content["encoding"] == "base64"
    assert base64.b64decode(result.structured_content["content"]) == data
    assert text(result).startswith("/sandbox/out.bin (256 bytes, binary, not UTF-8), base64:\n")
    assert len(result.content) == 1


def test_download_file_of_an_image_adds_image_content(server: MockServer) -> None:
    server.route("GET", "/file", file_answer(PNG))
    result = run(tools(server).download_file("s1", "/sandbox/plot.png"))
    assert result.structured_content is not None
    assert (result.structured_content["encoding"], result.structured_content["mimeType"]) == ("base64", "image/png")
    [_, image] = result.content
    assert isinstance(image, ImageContent)
    assert (image.mime_type, base64.b64decode(image.data)) == ("image/png", PNG)


# -- sessions -------------------------------------------------------------------------------


def test_list_sessions_returns_each_session(server: MockServer) -> None:
    server.route("GET", "/sessions", httpx.Response(200, json={"sessions": [
        {"id": "a", "isActive": False, "lastAccessedAt": "2025-01-01T00:00:00Z", "runtime": "python",
         "createdAt": "2025-01-01T00:00:00Z", "state": "idle"},
        {"id": "b", "isActive": True},  # the original isol8 server sends only these
    ]}))
    result = run(tools(server).list_sessions())
    assert result.structured_content == {"sessions": [
        {"id": "a", "isActive": False, "runtime": "python", "state": "idle",
         "createdAt": "2025-01-01T00:00:00Z", "lastAccessedAt": "2025-01-01T00:00:00Z"},
        {"id": "b", "isActive": True, "runtime": None, "state": None, "createdAt": None, "lastAccessedAt": None},
    ]}
    assert text(result) == ("2 open session(s):\n- a: python, idle, last used 2025-01-01T00:00:00Z\n"
                            "- b: ?, busy, last used -")


def test_list_sessions_says_when_there_are_none(server: MockServer) -> None:
    server.route("GET", "/sessions", httpx.Response(200, json={"sessions": []}))
    result = run(tools(server).list_sessions())
    assert (result.structured_content, text(result)) == ({"sessions": []}, "No open sessions.")


def test_stop_session_deletes_it(server: MockServer) -> None:
    server.route("DELETE", "/session/s1", httpx.Response(200, json={"ok": True}))
    result = run(tools(server).stop_session("s1"))
    assert server.paths() == ["DELETE /session/s1"]
    assert result.structured_content == {"sessionId": "s1", "stopped": True}


# -- errors ------------------------------------------------------------------------------------

CALLS: dict[str, Callable[[m.Isol8Tools], Awaitable[CallToolResult]]] = {
    "run_code": lambda t: t.run_code("print(1)"),
    "session_run": lambda t: t.session_run("print(1)", session_id="s1"),
    "upload_file": lambda t: t.upload_file("s1", "/sandbox/f", "x"),
    "download_file": lambda t: t.download_file("s1", "/sandbox/f"),
    "list_sessions": lambda t: t.list_sessions(),
    "stop_session": lambda t: t.stop_session("s1"),
}


@pytest.mark.parametrize("name", CALLS)
def test_every_tool_turns_a_server_error_into_a_tool_error_with_its_message(server: MockServer,
                                                                           name: str) -> None:
    answer = error(400, "path must be under /sandbox", "path_outside_sandbox")
    for method, path in (("POST", "/execute"), ("POST", "/file"), ("GET", "/file"), ("GET", "/sessions"),
                         ("DELETE", "/session/s1")):
        server.route(method, path, answer)
    result = run(CALLS[name](tools(server)))
    assert result.is_error is True
    assert result.structured_content is None
    assert text(result) == "path must be under /sandbox (400 path_outside_sandbox)"


def test_a_missing_session_is_a_tool_error_with_the_servers_message(server: MockServer) -> None:
    server.route("GET", "/file", error(404, "Session not found", "not_found"))
    result = run(tools(server).download_file("nope", "/sandbox/x"))
    assert (result.is_error, text(result)) == (True, "Session not found (404 not_found)")


def test_a_quota_error_says_when_to_retry(server: MockServer) -> None:
    server.route("POST", "/execute", error(429, "Quota exceeded: at most 1 executions per minute",
                                           "quota_exceeded", **{"Retry-After": "42"}))
    result = run(tools(server).run_code("print(1)"))
    assert text(result) == ("Quota exceeded: at most 1 executions per minute (429 quota_exceeded); "
                            "the server asks to retry after 42 s")


def test_retry_waits_through_a_429_when_asked(server: MockServer, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(aio_module.asyncio, "sleep", no_sleep)
    server.route("POST", "/execute", error(429, "Quota exceeded", "quota_exceeded", **{"Retry-After": "2"}),
                 httpx.Response(200, json=result_json()))
    result = run(tools(server, retry=True).run_code("print(1)"))
    assert (result.is_error, waits) == (False, [2.0])


def test_an_unreachable_server_is_a_tool_error_not_a_traceback() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    target = m.Isol8Target(HOST, "k", transport=httpx.MockTransport(refuse))
    result = run(m.Isol8Tools(target).run_code("print(1)"))
    assert result.is_error is True
    assert text(result) == f"Cannot connect to the isol8 server at {HOST}: [Errno 111] Connection refused"


# -- through the SDK's own client, in process --------------------------------------------------


def sdk_call(server: MockServer, name: str, arguments: dict[str, Any]) -> CallToolResult:
    async def main() -> CallToolResult:
        async with Client(m.build_server(m.Isol8Target(HOST, "k", transport=server.transport))) as client:
            await client.list_tools()  # so that the client validates structured output against the schema
            return await client.call_tool(name, arguments)

    return asyncio.run(main())


def test_an_mcp_client_lists_the_six_tools_with_descriptions_and_schemas(server: MockServer) -> None:
    async def main() -> Any:
        async with Client(m.build_server(m.Isol8Target(HOST, "k", transport=server.transport))) as client:
            return (await client.list_tools()).tools

    listed = {tool.name: tool for tool in asyncio.run(main())}
    assert list(listed) == ["run_code", "session_run", "upload_file", "download_file", "list_sessions",
                            "stop_session"]
    run_code = listed["run_code"]
    assert run_code.description is not None and run_code.description.startswith("Run a program in a fresh")
    assert "\n    " not in run_code.description  # the docstring's indentation is gone
    props = run_code.input_schema["properties"]
    assert props["runtime"]["enum"] == list(m.RUNTIMES)
    assert "milliseconds" in props["timeout_ms"]["description"]
    assert run_code.input_schema["required"] == ["code"]
    assert run_code.output_schema is not None
    assert {"stdout", "stderr", "exitCode", "durationMs", "executionId", "timedOut", "truncated"} <= set(
        run_code.output_schema["properties"])
    assert listed["session_run"].input_schema["properties"]["session_id"]["anyOf"][0]["pattern"] == (
        m.SESSION_ID_PATTERN)
    assert listed["stop_session"].annotations is not None and listed["stop_session"].annotations.destructive_hint
    assert listed["list_sessions"].annotations is not None and listed["list_sessions"].annotations.read_only_hint


def test_through_the_sdk_a_result_carries_structured_content_that_matches_its_schema(
    server: MockServer,
) -> None:
    server.route("POST", "/execute", httpx.Response(200, json=result_json(stdout="hi")))
    result = sdk_call(server, "run_code", {"code": "print('hi')", "runtime": "python"})
    assert result.is_error is False
    assert result.structured_content is not None and result.structured_content["stdout"] == "hi"


def test_through_the_sdk_a_server_error_is_an_is_error_result(server: MockServer) -> None:
    server.route("GET", "/file", error(404, "Session not found", "not_found"))
    result = sdk_call(server, "download_file", {"session_id": "nope", "path": "/sandbox/x"})
    assert (result.is_error, text(result)) == (True, "Session not found (404 not_found)")


def test_through_the_sdk_an_unknown_runtime_is_refused_by_the_schema(server: MockServer) -> None:
    result = sdk_call(server, "run_code", {"code": "x", "runtime": "cobol"})
    assert result.is_error is True
    assert "runtime" in text(result) and "'python', 'node', 'bash', 'bun' or 'deno'" in text(result)
    assert server.requests == []


def test_the_server_tells_the_model_how_to_use_the_tools() -> None:
    server = m.build_server(m.Isol8Target(HOST, "k"))
    assert server.instructions is not None and "stop_session" in server.instructions


# -- starting -------------------------------------------------------------------------------------


def test_probe_warns_on_stderr_when_the_server_is_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    run(m.probe(m.Isol8Target(HOST, "k", transport=httpx.MockTransport(refuse))))
    out, err = capsys.readouterr()
    assert out == ""  # stdout is the stdio transport's
    assert err.startswith(f"[WARN] The isol8 server at {HOST} is not ready: Cannot connect")


def test_probe_is_quiet_when_the_server_is_healthy(server: MockServer, capsys: pytest.CaptureFixture[str]) -> None:
    server.route("GET", "/health", httpx.Response(200, json={"status": "ok"}))
    run(m.probe(m.Isol8Target(HOST, "k", transport=server.transport)))
    assert capsys.readouterr() == ("", "")
    assert server.paths() == ["GET /health"]


@pytest.mark.parametrize(("bind", "loopback"),
                         [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
                          ("192.168.1.5", False), ("example.org", False)])
def test_is_loopback(bind: str, loopback: bool) -> None:
    assert m.is_loopback(bind) is loopback


# -- the `isol8 mcp` command ------------------------------------------------------------------------


def test_mcp_help_shows_transport_bind_port_and_the_server_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["mcp", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--transport {stdio,http}", "--bind ADDRESS", "--port PORT", "--host HOST", "--key KEY"):
        assert flag in out


def test_mcp_passes_host_key_and_transport_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_serve(**kwargs: Any) -> int:
        seen.update(kwargs)
        return 0

    monkeypatch.setattr(m, "serve", fake_serve)
    monkeypatch.setenv("ISOL8_API_KEY", "env-key")
    assert cli.main(["mcp", "--host", HOST, "--transport", "http", "--port", "9123", "--retry"]) == 0
    assert seen == {"target": m.Isol8Target(HOST, "env-key", retry=True), "transport": "http",
                    "bind": "127.0.0.1", "port": 9123}


def test_mcp_without_a_key_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ISOL8_API_KEY", raising=False)
    assert cli.main(["mcp", "--host", HOST]) == 2
    assert capsys.readouterr().err == "[ERR] API key required: use --key or set ISOL8_API_KEY.\n"


def test_mcp_without_the_sdk_says_how_to_install_it(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("isol8_client.cli.importlib.util.find_spec", lambda name: None)
    assert cli.main(["mcp", "--host", HOST, "--key", "k"]) == 2
    assert capsys.readouterr().err == (
        "[ERR] isol8 mcp needs the MCP Python SDK: pip install 'isol8-client[mcp]'\n")


def test_the_cli_does_not_import_the_sdk() -> None:
    # `isol8 run` must work where the optional extra is not installed.
    code = "import json, sys, isol8_client.cli; print(json.dumps([m for m in sys.modules if m.startswith('mcp')]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
