"""``isol8 mcp``: an MCP server whose tools run code on a remote isol8 server.

An AI assistant (Claude Desktop, Claude Code, Cursor, any MCP host) starts
``isol8 mcp`` and gets six tools: ``run_code``, ``session_run``,
``upload_file``, ``download_file``, ``list_sessions`` and ``stop_session``.
Each tool is one call of :class:`~isol8_client.AsyncRemoteIsol8`, so the
protocol, the auth header and the error types are the client library's own.

The server speaks stdio (the host spawns it) or streamable HTTP (it listens on
a port). It is built on the official MCP Python SDK, an optional dependency
(``pip install 'isol8-client[mcp]'``): only the ``isol8 mcp`` command imports
this module, so the rest of the client works without the SDK.

Limits are the isol8 server's: this module validates nothing the server
validates (timeouts, memory, tenant caps, session ids beyond their shape), so
a refusal reaches the model as a tool error carrying the server's own sentence.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import ipaddress
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
import httpx
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, ContentBlock, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from isol8_client._version import __version__
from isol8_client.aio import AsyncRemoteIsol8
from isol8_client.errors import Isol8Error
from isol8_client.models import ExecutionResult, SessionInfo

# The runtimes this server has images for (api.md, "Execute request"); the
# schema enumerates them so a model cannot guess a name the server refuses.
Runtime = Literal["python", "node", "bash", "bun", "deno"]
RUNTIMES: tuple[str, ...] = ("python", "node", "bash", "bun", "deno")

Encoding = Literal["utf-8", "base64"]

# The server's own rule for session ids (api.md, "Sessions"), in the schema so
# the model sees it before it picks one.
SESSION_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"

# Leading bytes of the image formats MCP hosts display; by content, not by file
# name, because a program may write a PNG to any path.
_IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)

INSTRUCTIONS = """\
These tools run code on an isol8 server, in isolated sandboxes (containers without network \
access unless the server's operator allows it). Use run_code for a self-contained program: \
every call starts from a clean sandbox. Use session_run when state must survive between \
calls (files in /sandbox, installed packages); upload_file and download_file move files in \
and out of a session, list_sessions shows the open ones, and stop_session deletes one when \
you are done, because open sessions count against the tenant's quota. Results are stdout, \
stderr and the exit code: print what you need to see. The server enforces every limit \
(time, memory, processes, output size, quotas); a tool error carries its explanation."""


# -- structured outputs ------------------------------------------------------------
# camelCase, as the isol8 JSON they mirror, so a result reads the same here as in
# the server's own answers and history.


class RunOutput(BaseModel):
    """The outcome of one execution."""

    stdout: str = Field(description="The program's standard output (trailing whitespace trimmed).")
    stderr: str = Field(description="The program's standard error (trailing whitespace trimmed).")
    exitCode: int = Field(description="The exit code: 0 is success; 137 after a timeout or out-of-memory kill.")
    durationMs: int = Field(description="Wall-clock run time in milliseconds.")
    executionId: str = Field(description="The server's id of this execution (in its history).")
    timedOut: bool = Field(description="True when the time limit killed the program.")
    truncated: bool = Field(description="True when output passed the server's output limit and was cut.")
    status: str = Field(description="ok (it ran, whatever its exit code), timeout, oom, cancelled or error.")
    runtime: str = Field(description="The runtime that ran the code.")


class SessionRunOutput(RunOutput):
    """The outcome of one execution in a persistent session."""

    sessionId: str = Field(description="The session the code ran in; pass it to later calls to continue there.")


class UploadOutput(BaseModel):
    sessionId: str
    path: str = Field(description="The file's path in the session, as given.")
    sizeBytes: int = Field(description="Bytes written.")


class DownloadOutput(BaseModel):
    sessionId: str
    path: str
    encoding: Encoding = Field(description="utf-8: content is the text itself; base64: content is base64 of bytes.")
    content: str
    sizeBytes: int = Field(description="Size of the file in bytes (before any base64).")
    mimeType: str | None = Field(default=None, description="Set when the file is an image (PNG, JPEG, GIF).")


class SessionOutput(BaseModel):
    id: str
    isActive: bool = Field(description="True while an execution or file operation is running in it.")
    runtime: str | None = None
    state: str | None = None
    createdAt: str | None = None
    lastAccessedAt: str | None = None


class SessionListOutput(BaseModel):
    sessions: list[SessionOutput]


class StopOutput(BaseModel):
    sessionId: str
    stopped: bool


# -- the tools -----------------------------------------------------------------------


@dataclass(frozen=True)
class Isol8Target:
    """Where the tools send their calls, and how (``transport`` is for tests)."""

    host: str
    api_key: str
    retry: bool = False
    transport: httpx.AsyncBaseTransport | None = None


class Isol8Tools:
    """The MCP tools, one method each; every method returns a finished ``CallToolResult``.

    Server refusals come back as results with ``is_error=True`` and the
    server's message, rather than exceptions, because the SDK would prefix an
    exception's text and hide any exception it did not expect. A failing
    *program* is not an error: its exit code and output are the result.
    """

    def __init__(self, target: Isol8Target) -> None:
        self.target = target

    @asynccontextmanager
    async def _client(
        self, session_id: str | None = None, *, stateful: bool = False
    ) -> AsyncIterator[AsyncRemoteIsol8]:
        """A client for one tool call.

        One per call because the client binds a session id, and calls over HTTP
        may run concurrently on different sessions. It is closed, never
        stopped: stopping would delete the session the model wants to keep.
        """
        client = AsyncRemoteIsol8(
            self.target.host, self.target.api_key, session_id, retry=self.target.retry,
            transport=self.target.transport, stateful=stateful,
        )
        try:
            yield client
        finally:
            await client.close()

    async def run_code(
        self,
        code: Annotated[str, Field(description="The program's source code.")],
        runtime: Annotated[Runtime, Field(description="Which language runs the code.")] = "python",
        stdin: Annotated[str | None, Field(description="Text piped to the program's standard input.")] = None,
        timeout_ms: Annotated[int | None, Field(
            ge=1, description="Time limit in milliseconds (default: the server's, 30000). Values above the "
            "tenant's cap (300000 unless the operator changed it) are refused, not lowered.")] = None,
    ) -> Annotated[CallToolResult, RunOutput]:
        """Run a program in a fresh, isolated sandbox on the isol8 server and return its output.

        Every call starts from a clean sandbox: files and variables do not survive it (use
        session_run for that). Runtimes: python (Python 3 with its standard library), node
        (Node.js; the code is an ES module, so use import, not require), bun and deno
        (TypeScript or JavaScript), bash (a shell script). The network is off unless the
        server's operator allows it.

        The server enforces the limits: by default 30 s of run time (timeout_ms changes it,
        up to the tenant's cap), 512 MB of memory, 64 processes and 1 MiB of output per
        stream (more is cut and truncated is true). You get stdout, stderr and the exit code,
        not the value of the last expression, so print what you want to see. A non-zero exit
        code or a timeout (timedOut true, exit code 137) is a normal result; a tool error
        means the server refused or could not run the call, and says why.
        """
        try:
            async with self._client() as isol8:
                result = await isol8.execute(code, runtime=runtime, stdin=stdin, timeout_ms=timeout_ms)
        except Isol8Error as exc:
            return tool_error(exc)
        return run_result(result)

    async def session_run(
        self,
        code: Annotated[str, Field(description="The program's source code.")],
        session_id: Annotated[str | None, Field(
            pattern=SESSION_ID_PATTERN, description="The session to run in; a new id creates the session. "
            "Omit it to start a new session with a generated id (returned as sessionId).")] = None,
        runtime: Annotated[Runtime, Field(
            description="Which language runs the code; a session keeps the runtime of its first run.")] = "python",
        stdin: Annotated[str | None, Field(description="Text piped to the program's standard input.")] = None,
        timeout_ms: Annotated[int | None, Field(
            ge=1, description="Time limit in milliseconds for this run (default: the server's, 30000), "
            "up to the tenant's cap.")] = None,
        stateful: Annotated[bool, Field(
            description="Keep a live interpreter in the session (python, node, bash): variables, imports and "
            "functions carry over, the last expression's value and plots come back. Set it on the session's "
            "first call (later calls may leave it out); it cannot be switched later. No stdin then.")] = False,
    ) -> Annotated[CallToolResult, SessionRunOutput]:
        """Run code in a persistent session: a sandbox that keeps its files between calls.

        Use it for work in several steps: write files, install or prepare data in one call,
        use them in the next. What persists is the /sandbox directory (the working
        directory); each call is a new process, so variables in memory do not carry over
        (save what you need to a file), unless the session is stateful. The first call with a new session_id creates the
        session with that runtime; later calls must use the same runtime. Only one call
        runs in a session at a time (a second one is refused while the first runs).

        Limits and results are those of run_code. Sessions count against the tenant's
        quota (20 by default), and the server may remove one idle for an hour (its default):
        call stop_session when you are done.
        """
        session = session_id or f"mcp-{secrets.token_hex(4)}"
        try:
            async with self._client(session, stateful=stateful) as isol8:
                result = await isol8.execute(code, runtime=runtime, stdin=stdin, timeout_ms=timeout_ms)
        except Isol8Error as exc:
            return tool_error(exc)
        return run_result(result, session_id=session)

    async def upload_file(
        self,
        session_id: Annotated[str, Field(pattern=SESSION_ID_PATTERN, description="An existing session.")],
        path: Annotated[str, Field(description="Destination under /sandbox, e.g. /sandbox/data.csv "
                                               "(a relative path is relative to /sandbox).")],
        content: Annotated[str, Field(description="The file's content: text, or base64 when encoding is base64.")],
        encoding: Annotated[Encoding, Field(
            description="utf-8 (default) writes content as text; base64 decodes it first, for binary files."
        )] = "utf-8",
    ) -> Annotated[CallToolResult, UploadOutput]:
        """Write a file into a session's /sandbox, replacing any file at that path.

        The session must exist: create it with session_run first (a run of "pass" will do).
        Files are limited to 10 MiB and to paths under /sandbox.
        """
        if encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                return error_result("content is not valid base64 (encoding is base64); "
                                    "send text with encoding utf-8 instead")
        else:
            data = content.encode("utf-8")
        try:
            async with self._client(session_id) as isol8:
                await isol8.put_file(path, data)
        except Isol8Error as exc:
            return tool_error(exc)
        output = UploadOutput(sessionId=session_id, path=path, sizeBytes=len(data))
        return structured(output, f"Wrote {len(data)} bytes to {path} in session {session_id}.")

    async def download_file(
        self,
        session_id: Annotated[str, Field(pattern=SESSION_ID_PATTERN, description="An existing session.")],
        path: Annotated[str, Field(description="The file under /sandbox, e.g. /sandbox/out.txt.")],
    ) -> Annotated[CallToolResult, DownloadOutput]:
        """Read a file from a session's /sandbox.

        Text that is valid UTF-8 is returned as is (encoding utf-8); anything else as base64
        (encoding base64). A PNG, JPEG or GIF image is also returned as image content you can
        look at, so a program can save a chart and you can see it. Files are limited to 10 MiB.
        """
        try:
            async with self._client(session_id) as isol8:
                data = await isol8.get_file(path)
        except Isol8Error as exc:
            return tool_error(exc)
        return download_result(session_id, path, data)

    async def list_sessions(self) -> Annotated[CallToolResult, SessionListOutput]:
        """List this API key's open sessions (id, runtime, whether busy, last use).

        Use it to find a session to continue in, or ones to stop.
        """
        try:
            async with self._client() as isol8:
                sessions = await isol8.list_sessions()
        except Isol8Error as exc:
            return tool_error(exc)
        return sessions_result(sessions)

    async def stop_session(
        self,
        session_id: Annotated[str, Field(pattern=SESSION_ID_PATTERN, description="The session to delete.")],
    ) -> Annotated[CallToolResult, StopOutput]:
        """Stop a session and delete its sandbox and files; it cannot be undone.

        Stopping a session that does not exist (or is already stopped) also succeeds.
        """
        try:
            async with self._client() as isol8:
                await isol8.delete_session(session_id)
        except Isol8Error as exc:
            return tool_error(exc)
        return structured(StopOutput(sessionId=session_id, stopped=True), f"Session {session_id} stopped.")


# Hints for hosts that ask before running tools. Code runs in a throwaway sandbox,
# not on the user's machine: not destructive to the user's world; open_world is
# false because the network is off by default.
_RUN = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
TOOL_ANNOTATIONS: dict[str, ToolAnnotations] = {
    "run_code": _RUN.model_copy(update={"title": "Run code in a sandbox"}),
    "session_run": _RUN.model_copy(update={"title": "Run code in a persistent session"}),
    "upload_file": ToolAnnotations(title="Upload a file into a session", read_only_hint=False,
                                   destructive_hint=True, idempotent_hint=True, open_world_hint=False),
    "download_file": ToolAnnotations(title="Download a file from a session", read_only_hint=True,
                                     open_world_hint=False),
    "list_sessions": ToolAnnotations(title="List sessions", read_only_hint=True, open_world_hint=False),
    "stop_session": ToolAnnotations(title="Stop a session", read_only_hint=False, destructive_hint=True,
                                    idempotent_hint=True, open_world_hint=False),
}


def build_server(target: Isol8Target) -> MCPServer:
    """The MCP server with the six tools, calling the isol8 server ``target``."""
    server: MCPServer = MCPServer(
        "isol8", title="isol8 code execution", version=__version__, instructions=INSTRUCTIONS,
        # INFO would log every HTTP request of the client library to stderr.
        log_level="WARNING",
    )
    tools = Isol8Tools(target)
    methods: dict[str, Callable[..., Any]] = {
        "run_code": tools.run_code,
        "session_run": tools.session_run,
        "upload_file": tools.upload_file,
        "download_file": tools.download_file,
        "list_sessions": tools.list_sessions,
        "stop_session": tools.stop_session,
    }
    for name, method in methods.items():
        # The docstrings are written for the model; cleandoc drops their indentation.
        server.add_tool(method, name=name, description=inspect.cleandoc(method.__doc__ or ""),
                        annotations=TOOL_ANNOTATIONS[name])
    return server


# -- results -------------------------------------------------------------------------


def structured(output: BaseModel, text: str, extra: list[ContentBlock] | None = None) -> CallToolResult:
    """A result with structured content and a text block for hosts that show only text."""
    return CallToolResult(content=[TextContent(text=text), *(extra or [])],
                          structured_content=output.model_dump(mode="json"))


def error_result(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=message)], is_error=True)


def tool_error(exc: Isol8Error) -> CallToolResult:
    """The server's refusal as an MCP tool error: its sentence, status and code, and when to retry."""
    message = str(exc)  # "Session not found (404 not_found)"; a connection error has no status
    if exc.retry_after is not None:
        message += f"; the server asks to retry after {exc.retry_after:g} s"
    return error_result(message)


def run_result(result: ExecutionResult, *, session_id: str | None = None) -> CallToolResult:
    """An execution's result: the structured fields, a readable summary, and any rich output."""
    output = RunOutput(
        stdout=result.stdout, stderr=result.stderr, exitCode=result.exit_code, durationMs=result.duration_ms,
        executionId=result.execution_id, timedOut=result.timed_out, truncated=result.truncated,
        status=result.status, runtime=result.runtime,
    )
    if session_id is not None:
        output = SessionRunOutput(**output.model_dump(), sessionId=session_id)
    return structured(output, run_text(result, session_id), rich_content(result))


def run_text(result: ExecutionResult, session_id: str | None) -> str:
    """What a person (or a host that ignores structured content) reads."""
    head = f"exit code {result.exit_code} ({result.status}, {result.duration_ms} ms)"
    if session_id is not None:
        head += f" in session {session_id}"
    lines = [head]
    if result.timed_out:
        lines.append("The program was killed at its time limit.")
    if result.truncated:
        lines.append("Output passed the server's output limit and was truncated.")
    lines += ["stdout:", result.stdout] if result.stdout else ["stdout: (empty)"]
    lines += ["stderr:", result.stderr] if result.stderr else ["stderr: (empty)"]
    if result.value is not None and isinstance(result.value.get("text/plain"), str):
        lines += ["value:", result.value["text/plain"]]  # a stateful session's cell: its last expression
    if result.state_lost:
        lines.append("The session's interpreter was restarted: variables of earlier cells are gone.")
    return "\n".join(lines)


def rich_content(result: ExecutionResult) -> list[ContentBlock]:
    """A stateful cell's pictures for the model: each ``image/png`` / ``image/jpeg`` of its displays and value.

    Bundles whose image is not valid base64 are left out (the text part still
    says what the cell gave).
    """
    blocks: list[ContentBlock] = []
    bundles = [o.get("data") for o in result.outputs if isinstance(o, dict)]
    for bundle in [*bundles, result.value]:
        if not isinstance(bundle, dict):
            continue
        for mime_type in ("image/png", "image/jpeg"):
            data = bundle.get(mime_type)
            if isinstance(data, str):
                try:
                    blocks.append(image_block(base64.b64decode(data, validate=True), mime_type))
                except ValueError:
                    pass
    return blocks


def image_block(data: bytes, mime_type: str) -> ImageContent:
    return ImageContent(data=base64.b64encode(data).decode("ascii"), mime_type=mime_type)


def image_type(data: bytes) -> str | None:
    """The MIME type of a PNG, JPEG or GIF by its first bytes, else None."""
    for signature, mime_type in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime_type
    return None


def download_result(session_id: str, path: str, data: bytes) -> CallToolResult:
    """A downloaded file: text when it is UTF-8, else base64 (and an image block for images)."""
    mime_type = image_type(data)
    # An image is never text, even in the rare case that its bytes decode as UTF-8.
    text = None if mime_type else utf8_or_none(data)
    encoding: Encoding = "utf-8" if text is not None else "base64"
    if text is None:
        text = base64.b64encode(data).decode("ascii")
    output = DownloadOutput(sessionId=session_id, path=path, encoding=encoding, content=text,
                            sizeBytes=len(data), mimeType=mime_type)
    if encoding == "utf-8":
        summary = f"{path} ({len(data)} bytes, UTF-8 text):\n{text}"
    else:
        kind = mime_type or "binary, not UTF-8"
        summary = f"{path} ({len(data)} bytes, {kind}), base64:\n{text}"
    extra: list[ContentBlock] = [image_block(data, mime_type)] if mime_type else []
    return structured(output, summary, extra)


def utf8_or_none(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def sessions_result(sessions: list[SessionInfo]) -> CallToolResult:
    rows = [
        SessionOutput(id=s.id, isActive=s.is_active, runtime=s.runtime, state=s.state, createdAt=s.created_at,
                      lastAccessedAt=s.last_accessed_at)
        for s in sessions
    ]
    if not rows:
        text = "No open sessions."
    else:
        text = f"{len(rows)} open session(s):\n" + "\n".join(
            f"- {s.id}: {s.runtime or '?'}, {'busy' if s.isActive else 'idle'}, last used {s.lastAccessedAt or '-'}"
            for s in rows
        )
    return structured(SessionListOutput(sessions=rows), text)


# -- running ---------------------------------------------------------------------------


def serve(*, target: Isol8Target, transport: Literal["stdio", "http"], bind: str, port: int) -> int:
    """Run the MCP server until its client disconnects (stdio) or it is interrupted (HTTP)."""
    anyio.run(_serve, target, transport, bind, port)
    return 0


async def _serve(target: Isol8Target, transport: str, bind: str, port: int) -> None:
    await probe(target)
    server = build_server(target)
    if transport == "stdio":
        await server.run_stdio_async()
        return
    # stdout stays quiet in both modes; what a person needs to know goes to stderr.
    display = f"[{bind}]" if ":" in bind else bind
    _note(f"Starting the isol8 MCP server at http://{display}:{port}/mcp, calling {target.host}")
    if not is_loopback(bind):
        _note(f"[WARN] {bind} is reachable from other machines, and the MCP endpoint has no authentication "
              "of its own: anyone who can connect runs code with this isol8 API key.")
    await server.run_streamable_http_async(host=bind, port=port)


async def probe(target: Isol8Target) -> None:
    """Check that the isol8 server answers GET /health, and say so on stderr if it does not.

    It does not stop the MCP server: a host starts its servers once, and an
    isol8 server that comes up later should still be usable. Until then every
    tool call reports the connection error to the model.
    """
    client = AsyncRemoteIsol8(target.host, target.api_key, transport=target.transport)
    try:
        await client.start()
    except Isol8Error as exc:
        _note(f"[WARN] The isol8 server at {client.host} is not ready: {exc}. Tool calls will fail until it is.")
    finally:
        await client.close()


def is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def _note(message: str) -> None:
    # Never stdout: in stdio mode it carries the MCP protocol.
    print(message, file=sys.stderr, flush=True)
