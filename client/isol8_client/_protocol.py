"""The isol8 wire protocol, shared by the sync and async clients.

Everything here is free of I/O so the two clients stay thin and cannot drift
apart: request bodies, option names, error decoding, the retry policy and the
SSE parser all live in one place.
"""

from __future__ import annotations

import base64
import email.utils
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from isol8_client._version import __version__
from isol8_client.errors import Isol8ConnectionError, Isol8Error, error_class_for
from isol8_client.models import StreamEvent, is_known_event

# A long read timeout, because POST /execute only answers when the program
# ends (up to the tenant's timeout cap, 300 s by default, plus queueing); a
# short connect timeout, so that a wrong host fails fast.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)

# Option names whose camelCase spelling is not the plain conversion.
_OPTION_ALIASES = {"readonly_rootfs": "readonlyRootFs"}

# Statuses a retry can cure: a used-up quota (answered before the run is even
# created) and no capacity (the documented 503 unavailable).
RETRYABLE_STATUSES = frozenset({429, 503})


def normalize_host(host: str) -> str:
    """``localhost:3000/`` → ``http://localhost:3000``: isol8 strips the slash, we also add a scheme."""
    host = host.strip()
    if "://" not in host:
        host = "http://" + host
    return host.rstrip("/")


def auth_headers(api_key: str) -> dict[str, str]:
    """Headers of every call; isol8 sends the Bearer key even on GET /health."""
    return {
        "Authorization": f"Bearer {api_key}",
        "Accept": "application/json",
        "User-Agent": f"isol8-client-python/{__version__}",
    }


# The stream route answers text/event-stream (and 406 to an Accept that excludes it).
STREAM_HEADERS = {"Accept": "text/event-stream"}


def to_camel(name: str) -> str:
    """``memory_limit`` → ``memoryLimit``; names already in camelCase pass through."""
    if name in _OPTION_ALIASES:
        return _OPTION_ALIASES[name]
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def options_to_wire(options: Mapping[str, Any]) -> dict[str, Any]:
    """Python keyword options → isol8's ``Isol8Options`` object; None means "server default"."""
    return {to_camel(name): value for name, value in options.items() if value is not None}


def _text(value: str | bytes, what: str) -> str:
    """Files travel as JSON text; bytes must therefore be UTF-8 (use put_file for binary)."""
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not UTF-8 text; upload binary files with put_file()") from exc


def build_request(
    *,
    code: str | None,
    runtime: str,
    cmd: str | None,
    stdin: str | None,
    env: Mapping[str, str] | None,
    files: Mapping[str, str | bytes] | None,
    output_paths: Sequence[str] | None,
    timeout_ms: int | None,
    file_extension: str | None,
    workdir: str | None,
    setup_script: str | None,
) -> dict[str, Any]:
    """isol8's ``ExecutionRequest``; absent fields are left out, as JSON.stringify does."""
    request: dict[str, Any] = {
        "runtime": runtime,
        "code": code,
        "cmd": cmd,
        "stdin": stdin,
        "env": dict(env) if env is not None else None,
        "files": {p: _text(v, f"files[{p!r}]") for p, v in files.items()} if files is not None else None,
        "outputPaths": list(output_paths) if output_paths is not None else None,
        "timeoutMs": timeout_ms,
        "fileExtension": file_extension,
        "workdir": workdir,
        "setupScript": setup_script,
    }
    return {key: value for key, value in request.items() if value is not None}


def execute_body(
    request: Mapping[str, Any], options: Mapping[str, Any], session_id: str | None, stateful: bool = False
) -> dict[str, Any]:
    """The body of POST /execute, /execute/stream and the WebSocket ``execute`` message.

    ``stateful`` goes next to ``sessionId``, and only with it: the server
    refuses a stateful run without a session.
    """
    body: dict[str, Any] = {"request": dict(request)}
    if options:
        body["options"] = dict(options)
    if session_id is not None:
        body["sessionId"] = session_id
        if stateful:
            body["stateful"] = True
    return body


def check_stateful(session_id: str | None, stateful: bool) -> None:
    """A stateful client needs a session: the interpreter's state lives in it."""
    if stateful and session_id is None:
        raise ValueError("stateful=True requires a session_id: the interpreter's state lives in a session")


def file_body(session_id: str, path: str, content: bytes | str) -> dict[str, Any]:
    """The body of POST /file: the content travels base64-encoded, so binary survives."""
    raw = content.encode("utf-8") if isinstance(content, str) else content
    return {"sessionId": session_id, "path": path, "content": base64.b64encode(raw).decode("ascii")}


NO_SESSION_FOR_FILES = "File operations require a session_id (persistent mode)"
NO_SESSION_FOR_RESTART = "restart() requires a session_id: it restarts that session's interpreter"


def require_session(session_id: str | None, message: str = NO_SESSION_FOR_FILES) -> str:
    """File transfer (or a restart) only makes sense in a persistent session (isol8 says the same)."""
    if session_id is None:
        raise ValueError(message)
    return session_id


def json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    """The JSON object a 2xx answer carries; anything else is the server's mistake."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise Isol8Error(f"The server's {what} answer is not a JSON object")
    return body


def decode_file(body: Any) -> bytes:
    """The bytes of a GET /file answer ``{"content": <base64>}``."""
    if not isinstance(body, dict) or not isinstance(body.get("content"), str):
        raise Isol8Error("The server's file download answer has no content")
    return base64.b64decode(body["content"])


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either a number or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: httpx.Response) -> Isol8Error | None:
    """None for a 2xx answer, else the exception the server's JSON error stands for.

    The body must have been read already (``read()``/``aread()`` on streams).
    """
    if response.is_success:
        return None
    message, code, details = _error_fields(response)
    return error_class_for(response.status_code)(
        message,
        status=response.status_code,
        code=code,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        details=details,
    )


def _error_fields(response: httpx.Response) -> tuple[str, str | None, Any]:
    """Message, code and details of an error body; a non-JSON body still gives a message."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        code = body.get("code")
        return str(body["error"]), None if code is None else str(code), body.get("details")
    if isinstance(body, dict) and body.get("status"):  # GET /health's "degraded" answer
        return f"Server is {body['status']}: {json.dumps(body.get('checks', {}))}", None, body
    snippet = response.text.strip()[:200]
    summary = f"HTTP {response.status_code} {response.reason_phrase or 'error'}"
    return (f"{summary}: {snippet}" if snippet else summary), None, None


def connection_error(exc: httpx.TransportError, host: str) -> Isol8ConnectionError:
    """Translate httpx's transport failures into one exception with a sentence a person can act on."""
    if isinstance(exc, httpx.ConnectError):
        text = f"Cannot connect to the isol8 server at {host}: {exc or 'connection failed'}"
    elif isinstance(exc, httpx.TimeoutException):
        text = f"Timed out talking to the isol8 server at {host} ({type(exc).__name__})"
    else:
        text = f"Connection to the isol8 server at {host} failed: {exc or type(exc).__name__}"
    return Isol8ConnectionError(text, code="connection_error")


@dataclass(frozen=True)
class RetryPolicy:
    """Opt-in retries of 429/503 answers, bounded in count and in time.

    Opt-in because of one case: a POST /execute whose worker died mid-run is
    also answered 503 today, and retrying it runs the program again. Other
    errors (500s, dropped connections) are never retried for the same reason.
    Without a Retry-After header the wait doubles from one second.
    """

    enabled: bool = False
    max_retries: int = 3
    max_wait: float = 60.0

    def delay(self, error: Isol8Error, attempt: int) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``, or None to give up."""
        if not self.enabled or attempt >= self.max_retries or error.status not in RETRYABLE_STATUSES:
            return None
        wait = error.retry_after if error.retry_after is not None else float(2**attempt)
        return min(wait, self.max_wait)


class SseParser:
    """Incremental SSE parser that reads events exactly as isol8's RemoteIsol8 does.

    Text is split on ``"\\n"``; a partial last line waits for the next chunk.
    Only lines starting with ``"data: "`` (with the space) count; each one is
    a whole JSON event. ``event:``, ``id:``, comments and blank lines are
    ignored, so keep-alive comments and resumable ids do no harm.
    """

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, chunk: str) -> list[StreamEvent]:
        """Events completed by this chunk of text."""
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split("\n")
        return [event for line in lines if (event := self._parse_line(line)) is not None]

    def finish(self) -> list[StreamEvent]:
        """Events from a last line the stream ended without a newline after."""
        line, self._buffer = self._buffer, ""
        event = self._parse_line(line)
        return [] if event is None else [event]

    @staticmethod
    def _parse_line(line: str) -> StreamEvent | None:
        if not line.startswith("data: "):
            return None
        payload = line[6:].strip()
        try:
            body = json.loads(payload)
        except ValueError as exc:
            raise Isol8Error(f"Malformed stream event from the server: {payload[:200]!r}") from exc
        if not isinstance(body, dict):
            raise Isol8Error(f"Malformed stream event from the server: {payload[:200]!r}")
        if not is_known_event(body):
            return None  # a type from a newer server: skipped, as the protocol asks
        return StreamEvent.from_json(body)
