"""`isol8 mcp` against the real stack, driven by the MCP SDK's own client over stdio and HTTP.

Each test runs twice: once with the client spawning `isol8 mcp` over stdio, as
Claude Desktop or Claude Code do, and once against `isol8 mcp --transport http`
started as a subprocess, through the SDK's streamable HTTP client. Both are
the installed console script, configured only by ISOL8_HOST and ISOL8_API_KEY.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, ImageContent, TextContent

from tests.conftest import Stack, free_port, one_mode
from tests.stack.client.conftest import ISOL8, cli_env

pytestmark = [pytest.mark.stack, one_mode]

TOOLS = ["run_code", "session_run", "upload_file", "download_file", "list_sessions", "stop_session"]
Connect = Callable[[], AbstractAsyncContextManager[ClientSession]]
T = TypeVar("T")


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Wait until the MCP server accepts connections; fail with its log if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"isol8 mcp exited ({proc.returncode}): {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"isol8 mcp not listening on {port} after {timeout}s: {log.read_text()}")


@pytest.fixture(params=["stdio", "http"])
def connect(request: pytest.FixtureRequest, stack: Stack, api_key: str, tmp_path: Path) -> Iterator[Connect]:
    """Opens an initialized MCP ClientSession to a fresh `isol8 mcp` over the parameter's transport."""
    env = {"ISOL8_HOST": stack.url, "ISOL8_API_KEY": api_key}
    log = tmp_path / "isol8-mcp.log"
    if request.param == "stdio":
        # The SDK passes a few safe variables (PATH, HOME...) plus these, as a host's config does.
        params = StdioServerParameters(command=str(ISOL8), args=["mcp"], env=env)

        @asynccontextmanager
        async def open_stdio() -> AsyncIterator[ClientSession]:
            with log.open("w") as errlog:
                async with stdio_client(params, errlog=errlog) as (read, write), \
                        ClientSession(read, write) as session:
                    await session.initialize()
                    yield session

        yield open_stdio
        return

    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ISOL8), "mcp", "--transport", "http", "--port", str(port)],
                                env=cli_env(**env), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, log)

        @asynccontextmanager
        async def open_http() -> AsyncIterator[ClientSession]:
            async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write), \
                    ClientSession(read, write) as session:
                await session.initialize()
                yield session

        yield open_http
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def session_ids(stack: Stack, api_key: str) -> Iterator[list[str]]:
    """Session ids a test uses; whatever the test did, they are deleted afterwards (their containers too)."""
    ids: list[str] = []
    yield ids
    with stack.client(api_key) as api:
        for session_id in ids:
            api.delete(f"/session/{session_id}")


def text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def ok(result: CallToolResult) -> dict[str, Any]:
    """The structured content of a successful call."""
    assert result.is_error is False, text(result)
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def test_an_mcp_client_lists_the_six_tools(connect: Connect) -> None:
    async def scenario() -> Any:
        async with connect() as session:
            return (await session.list_tools()).tools

    tools = {tool.name: tool for tool in run(scenario)}
    assert sorted(tools) == sorted(TOOLS)
    assert tools["run_code"].input_schema["properties"]["runtime"]["enum"] == [
        "python", "node", "bash", "bun", "deno"]
    assert all(tool.description and tool.output_schema for tool in tools.values())


def test_run_code_runs_python_and_returns_its_output(connect: Connect) -> None:
    async def scenario() -> CallToolResult:
        async with connect() as session:
            return await session.call_tool("run_code", {"runtime": "python", "code": "print('hello from isol8')"})

    result = run(scenario)
    output = ok(result)
    assert (output["stdout"], output["stderr"], output["exitCode"], output["timedOut"]) == (
        "hello from isol8", "", 0, False)
    assert output["executionId"] and output["durationMs"] >= 0
    assert "stdout:\nhello from isol8" in text(result)


def test_a_failing_program_is_a_result_with_its_exit_code(connect: Connect) -> None:
    async def scenario() -> CallToolResult:
        async with connect() as session:
            return await session.call_tool("run_code", {"runtime": "bash", "code": "echo oops >&2; exit 3"})

    output = ok(run(scenario))
    assert (output["exitCode"], output["stderr"]) == (3, "oops")


def test_a_session_keeps_files_across_runs_and_moves_files_in_and_out(
    connect: Connect, session_ids: list[str]
) -> None:
    name = f"mcp-test-{time.monotonic_ns()}"
    session_ids.append(name)
    binary = bytes(range(256))

    async def scenario() -> dict[str, Any]:
        async with connect() as session:
            async def call(tool: str, **arguments: Any) -> CallToolResult:
                return await session.call_tool(tool, arguments)

            seen: dict[str, Any] = {}
            seen["first"] = ok(await call("session_run", session_id=name,
                                          code="open('/sandbox/n.txt', 'w').write('41')"))
            seen["second"] = ok(await call("session_run", session_id=name,
                                           code="print(int(open('/sandbox/n.txt').read()) + 1)"))
            seen["upload"] = ok(await call("upload_file", session_id=name, path="/sandbox/data.csv",
                                           content="name,age\nAda,36\nAlan,41\n"))
            seen["count"] = ok(await call("session_run", session_id=name,
                                          code="print(len(open('/sandbox/data.csv').readlines()))"))
            ok(await call("upload_file", session_id=name, path="/sandbox/in.bin",
                          content=base64.b64encode(binary).decode(), encoding="base64"))
            ok(await call("session_run", session_id=name,
                          code="import shutil; shutil.copy('/sandbox/in.bin', '/sandbox/out.bin')"))
            seen["text"] = ok(await call("download_file", session_id=name, path="/sandbox/n.txt"))
            seen["binary"] = ok(await call("download_file", session_id=name, path="/sandbox/out.bin"))
            seen["listed"] = ok(await call("list_sessions"))
            seen["stopped"] = ok(await call("stop_session", session_id=name))
            seen["after"] = ok(await call("list_sessions"))
            return seen

    seen = run(scenario)
    assert seen["first"]["sessionId"] == name and seen["first"]["exitCode"] == 0
    assert seen["second"]["stdout"] == "42"
    assert seen["upload"] == {"sessionId": name, "path": "/sandbox/data.csv", "sizeBytes": 24}
    assert seen["count"]["stdout"] == "3"
    assert (seen["text"]["encoding"], seen["text"]["content"]) == ("utf-8", "41")
    assert seen["binary"]["encoding"] == "base64"
    assert base64.b64decode(seen["binary"]["content"]) == binary
    [listed] = [s for s in seen["listed"]["sessions"] if s["id"] == name]
    assert listed["runtime"] == "python"
    assert seen["stopped"] == {"sessionId": name, "stopped": True}
    assert name not in [s["id"] for s in seen["after"]["sessions"]]


def test_server_errors_reach_the_model_as_tool_errors_with_the_servers_message(
    connect: Connect, stack: Stack, api_key: str
) -> None:
    missing = f"mcp-missing-{time.monotonic_ns()}"
    with stack.client(api_key) as api:
        expected = api.get("/file", params={"sessionId": missing, "path": "/sandbox/x"})
        over_cap = api.post("/execute", json={"request": {"runtime": "python", "code": "1"},
                                              "options": {"timeoutMs": 10_000_000}})
    assert (expected.status_code, over_cap.status_code) == (404, 403)

    async def scenario() -> tuple[CallToolResult, CallToolResult]:
        async with connect() as session:
            download = await session.call_tool("download_file", {"session_id": missing, "path": "/sandbox/x"})
            too_long = await session.call_tool("run_code", {"code": "print(1)", "timeout_ms": 10_000_000})
            return download, too_long

    download, too_long = run(scenario)
    assert download.is_error is True
    assert text(download) == f"{expected.json()['error']} (404 not_found)"
    assert too_long.is_error is True
    assert text(too_long) == f"{over_cap.json()['error']} (403 policy_denied)"


def test_a_stateful_session_keeps_variables_and_hands_the_model_its_plot(
    connect: Connect, stack: Stack, session_ids: list[str]
) -> None:
    if stack.mode != "launcher":
        pytest.skip("stateful sessions run in launcher mode")
    name = f"mcp-nb-{time.monotonic_ns()}"
    session_ids.append(name)
    plot = "import matplotlib.pyplot as plt\nplt.figure(figsize=(2, 2), dpi=30)\nplt.plot([1, 2])\nx + 1"

    async def scenario() -> tuple[CallToolResult, CallToolResult]:
        async with connect() as session:
            first = await session.call_tool("session_run", {"session_id": name, "code": "x = 41", "stateful": True})
            second = await session.call_tool("session_run", {"session_id": name, "code": plot})
            return first, second

    first, second = run(scenario)
    assert ok(first)["exitCode"] == 0
    assert "value:\n42" in text(second)
    [image] = [b for b in second.content if isinstance(b, ImageContent)]
    assert image.mime_type == "image/png" and base64.b64decode(image.data)[:4] == b"\x89PNG"
