"""Request bodies, bounded before Django sees them (an ASGI layer in front of the app).

Django's ASGI handler reads a body whole, spooling it to a temporary file,
before any middleware runs: a 40 MiB chunked POST with no key was buffered in
full, a ``Content-Length`` promising 40 MiB and sending 1 MiB held a connection
for good. Here, before a body is read:

* a ``Content-Length`` over the route's limit is 413 at once;
* a request with a body to an API route must authenticate first (401/403
  without reading a byte of it); the principal is handed on to DRF, so the key
  is looked up once;
* the body is then read up to the limit (413 as soon as it goes over, also for
  chunked bodies) and within ISOL8_BODY_TIMEOUT seconds (408 after), and given
  to Django from memory.

Limits (api.md "Defaults"): 2 MiB on /execute*, 16 MiB on /file, the upload
limit on /admin, 1 MiB elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from isol8_site.errors import DomainError, error_body, http_headers, http_status

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
# Authenticates a request from its scope's headers, before its body is read,
# and leaves the principal in the scope for DRF; raises a DomainError.
Authenticate = Callable[[Scope], None]

# Routes that need no API key: the browser-facing admin (its own session and
# CSRF checks) and static files; everything else is the API.
KEYLESS_PREFIXES = ("/admin", "/static/")


def limit_for(path: str) -> int:
    if path.startswith("/file"):
        return int(settings.ISOL8_FILE_BODY_MAX)
    if path.startswith("/admin"):
        return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    if path.startswith("/execute"):
        return int(settings.ISOL8_EXECUTE_BODY_MAX)
    return 1024 * 1024


async def answer(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class BodyTooLargeError(Exception):
    pass


class BodyGuard:
    """``app`` behind the body limits; ``authenticate`` (tenants/authentication.py) is given by asgi.py."""

    def __init__(self, app: App, *, authenticate: Authenticate) -> None:
        self.app = app
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if "\x00" in path or b"%00" in scope.get("query_string", b""):
            # No id, slug or filter has one, and PostgreSQL refuses NUL in any text it is asked to compare.
            await answer(send, 400, error_body("validation_error", "The URL must not contain NUL characters"))
            return
        limit = limit_for(path)
        declared = _header(scope, b"content-length")
        chunked = "chunked" in (_header(scope, b"transfer-encoding") or "").lower()
        length = 0
        if declared is not None:
            if not declared.isdigit():
                await answer(send, 400, error_body("bad_request", "Invalid Content-Length"))
                return
            length = int(declared)
        if length > limit:
            await answer(send, 413, error_body("payload_too_large", f"Request body is larger than {limit} bytes"))
            return
        if not length and not chunked:
            await self.app(scope, receive, send)
            return
        if not path.startswith(KEYLESS_PREFIXES) and not await self._authenticate(scope, send):
            return
        try:
            body = await asyncio.wait_for(self._read(receive, limit), timeout=settings.ISOL8_BODY_TIMEOUT)
        except BodyTooLargeError:
            await answer(send, 413, error_body("payload_too_large", f"Request body is larger than {limit} bytes"))
            return
        except TimeoutError:
            await answer(send, 408, error_body(
                "request_timeout", f"The request body did not arrive within {settings.ISOL8_BODY_TIMEOUT:g} s"
            ))
            return
        if body is None:
            return  # the client went away
        await self.app(scope, _replay(body, receive), send)

    async def _authenticate(self, scope: Scope, send: Send) -> bool:
        """Authenticate a request before its body is read; answer and say False when it fails."""
        try:
            await sync_to_async(self.authenticate, thread_sensitive=True)(scope)
        except DomainError as exc:
            await answer(send, http_status(exc.code), error_body(exc.code, exc.message), http_headers(exc))
            return False
        return True

    async def _read(self, receive: Receive, limit: int) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the client's own messages (a disconnect ends a stream)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
