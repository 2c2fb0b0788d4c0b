"""GET /execute/ws: isol8's WebSocket protocol, and what isol8 only reserved (live stdin, signals).

One execution per connection, as isol8. The upgrade request is authenticated
by its ``Authorization`` header like every route (no key in query strings);
a refused upgrade is answered with the usual JSON error and its status. A
browser, which cannot set that header, comes with ``?token=`` from
``POST /session/{id}/token`` instead: its execute must then run in that
session (tenants/tokens.py).

Client messages (JSON text frames):

``{"type":"execute","request":{...},"options":{...},"sessionId":"..."}``
    Starts the run: the same validation, policy and quotas as POST /execute
    (``request.tty: true`` runs the program on a pseudo-terminal).
``{"type":"stdin","data":"..."}`` / ``{"type":"stdin","eof":true}``
    Writes to the running program's stdin / closes it.
``{"type":"signal","signal":"SIGINT"|"SIGTERM"|"SIGKILL"}``
    Sent to the program's process group (a terminal's foreground group).
``{"type":"resize","cols":N,"rows":N}``
    The terminal's size (runs with ``tty``).

Server messages are the SSE event objects (``{"type":"stdout"|"stderr"|"exit"|
"error","data":...,"phase":...}``), read from the same event storage as the
SSE routes; an error this route reports itself also carries ``code``. The
socket is closed with 1000 after ``exit`` (or after an execute that was
refused), with 1003 after a frame that is not JSON. Closing the socket before
``exit`` cancels the run (its history says ``cancelled``).

Back-pressure: stdin goes to the worker through a short Redis list
(wire.INPUT_MAX_QUEUED messages of at most STDIN_MESSAGE_MAX bytes); while it
is full this consumer stops reading the socket, so a client that floods stdin
is slowed to what the program reads, and no buffer on the way grows without
bound (uvicorn queues at most ``--ws-max-queue`` frames of ``--ws-max-size``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any
from urllib.parse import parse_qs

import redis
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from executions import events, services
from executions.apis import start_execution
from executions.models import FINISHED, Execution
from isol8_site import errors, wire
from isol8_site.errors import DomainError, ValidationFailed, unauthorized
from tenants.authentication import Principal, authenticate_headers
from tenants.tokens import TokenInvalidError, session_scope, session_token_read

logger = logging.getLogger(__name__)

STDIN_MESSAGE_MAX = 64 * 1024  # bytes of stdin in one message
SIGNALS = ("SIGINT", "SIGTERM", "SIGKILL")
MAX_TERMINAL_SIDE = 1000
INPUT_WAIT_SECONDS = 0.02  # how often a full input list is looked at again


def sse_data(text: str) -> list[str]:
    """The ``data`` of each event in a chunk of SSE text (comments and keep-alives dropped)."""
    found = []
    for block in text.split("\n\n"):
        lines = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if lines:
            found.append("\n".join(lines))
    return found


def error_message(data: str, code: str, *, status: int | None = None) -> str:
    """An error this route reports itself; ``status`` (the HTTP route's) only on a refused execute."""
    message: dict[str, object] = {"type": "error", "data": data, "code": code}
    if status is not None:
        message["status"] = status
    return json.dumps(message)


def described(exc: BaseException) -> tuple[str, str, int]:
    """(code, sentence, status) of a refused execute, in the words of the HTTP routes' errors."""
    response = errors.exception_handler(exc, {"view": "ExecuteSocket"}) if isinstance(exc, Exception) else None
    if response is None or not isinstance(response.data, dict):
        return "internal_error", errors.INTERNAL_MESSAGE, 500
    return str(response.data.get("code", "error")), str(response.data.get("error", "")), response.status_code


class ExecuteSocket(AsyncWebsocketConsumer):
    """One WebSocket connection: at most one execution, its events out, its input in."""

    principal: Principal
    execution: Execution | None = None
    forward: asyncio.Task[None] | None = None
    ended = False  # the execution's exit was sent (or it never started)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # A thread of its own for this connection's database work (as Django
        # gives each HTTP request): one connection's wait for a quota slot
        # never holds up another's.
        async with ThreadSensitiveContext():
            await super().__call__(scope, receive, send)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        try:
            self.principal = await database_sync_to_async(authenticate_upgrade)(self.scope)
        except DomainError as exc:
            await self.refuse_upgrade(exc)
            raise StopConsumer() from None
        await self.accept()

    async def refuse_upgrade(self, exc: DomainError) -> None:
        """The upgrade's answer is the JSON error with its status (403 close where the server cannot)."""
        if "websocket.http.response" not in self.scope.get("extensions", {}):
            await self.close(code=1008)
            return
        body = json.dumps(errors.error_body(exc.code, exc.message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in errors.http_headers(exc).items()]
        await self.base_send(
            {"type": "websocket.http.response.start", "status": errors.http_status(exc.code), "headers": headers}
        )
        await self.base_send({"type": "websocket.http.response.body", "body": body})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = json.loads(text_data) if text_data is not None else None
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self.send(text_data=error_message("Invalid JSON message", "invalid_json"))
            await self.close(code=1003)
            return
        kind = message.get("type")
        handler = {
            "execute": self.on_execute,
            "stdin": self.on_stdin,
            "signal": self.on_signal,
            "resize": self.on_resize,
        }.get(kind if isinstance(kind, str) else "")
        if handler is None:
            shown = kind if isinstance(kind, str) else json.dumps(kind)
            await self.send(text_data=error_message(f"Unknown message type: {shown[:40]}", "bad_request"))
            return
        await handler(message)

    # ------------------------------------------------------------- execute

    async def on_execute(self, message: dict[str, Any]) -> None:
        if self.execution is not None:
            await self.send(
                text_data=error_message("One execution per connection; open another one for the next", "bad_request")
            )
            return
        body = {key: message[key] for key in ("request", "options", "sessionId", "stateful") if key in message}
        bound = self.principal.scope
        if bound is not None and session_scope(str(body.get("sessionId"))) != bound:
            await self.send(text_data=error_message(
                f"This connection's token is for session {bound.removeprefix('session:')}: "
                "the execute message must name it as sessionId", "forbidden", status=403))
            self.ended = True
            await self.close(code=1000)
            return
        slot = events.StreamSlot(self.principal.tenant.slug)
        try:
            await sync_to_async(slot.acquire)()
            try:
                start = database_sync_to_async(start_execution)
                self.execution = await start(self.principal, body, streamed=True, interactive=True)
            except BaseException:
                await slot.release()
                raise
        except Exception as exc:  # noqa: BLE001 - every refusal becomes its error message
            code, text, status = described(exc)
            await self.send(text_data=error_message(text, code, status=status))
            self.ended = True
            await self.close(code=1000)
            return
        self.forward = asyncio.create_task(self.send_events(self.execution.pk, slot))

    async def send_events(self, execution_id: object, slot: events.StreamSlot) -> None:
        """The execution's events, as they come, then close with 1000."""
        try:
            stream = events.stream_events(execution_id, after=0, fresh=True, on_tick=slot.refresh)
            async for text in stream:
                for data in sse_data(text):
                    await self.send(text_data=data)
            self.ended = True
            await self.close(code=1000, reason="Execution complete")
        finally:
            await slot.release()

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """The client left: a run still going is cancelled; nothing of this connection stays."""
        if self.forward is not None and not self.forward.done():
            self.forward.cancel()
        execution = self.execution
        if execution is not None and not self.ended:
            await database_sync_to_async(cancel_unfinished)(str(execution.pk))
        raise StopConsumer()

    # --------------------------------------------------------------- input

    async def running(self) -> str | None:
        """The id of this connection's execution while it can still take input, else None (said why)."""
        if self.execution is None:
            await self.send(text_data=error_message("No execution is running on this connection yet", "bad_request"))
            return None
        if self.ended:
            return None  # input after the end is dropped, as a closed stdin would
        return str(self.execution.pk)

    async def queue_input(self, execution_id: str, message: dict[str, Any]) -> None:
        """Hand one message to the run's worker, waiting while its queue is full (back-pressure)."""
        while not self.ended:
            try:
                queued = await sync_to_async(wire.push_input, thread_sensitive=False)(execution_id, message)
            except redis.RedisError:
                queued = 0  # a Redis restart: try again shortly, the run may still be going
            if queued:
                return  # 1: queued; -1: the run ended and its input is closed
            await asyncio.sleep(INPUT_WAIT_SECONDS)  # full: the program has not read yet

    async def on_stdin(self, message: dict[str, Any]) -> None:
        data, eof = message.get("data", ""), message.get("eof", False)
        if not isinstance(data, str) or not isinstance(eof, bool):
            await self.refuse(ValidationFailed('stdin: "data" is a string and "eof" true or false'))
            return
        raw = data.encode()
        if len(raw) > STDIN_MESSAGE_MAX:
            await self.refuse(ValidationFailed(f"stdin: at most {STDIN_MESSAGE_MAX} bytes per message"))
            return
        execution_id = await self.running()
        if execution_id is None:
            return
        if raw:
            await self.queue_input(execution_id, {"op": "stdin", "data": base64.b64encode(raw).decode()})
        if eof:
            await self.queue_input(execution_id, {"op": "stdin", "eof": True})

    async def on_signal(self, message: dict[str, Any]) -> None:
        name = message.get("signal")
        if name not in SIGNALS:
            await self.refuse(ValidationFailed(f"signal: one of {', '.join(SIGNALS)}"))
            return
        execution_id = await self.running()
        if execution_id is not None:
            await self.queue_input(execution_id, {"op": "signal", "signal": name})

    async def on_resize(self, message: dict[str, Any]) -> None:
        cols, rows = message.get("cols"), message.get("rows")
        if not all(type(n) is int and 1 <= n <= MAX_TERMINAL_SIDE for n in (cols, rows)):
            await self.refuse(ValidationFailed(f"resize: cols and rows are integers from 1 to {MAX_TERMINAL_SIDE}"))
            return
        execution_id = await self.running()
        if execution_id is not None:
            await self.queue_input(execution_id, {"op": "resize", "cols": cols, "rows": rows})

    async def refuse(self, exc: DomainError) -> None:
        """A bad input message: its error, and the connection stays open."""
        await self.send(text_data=error_message(exc.message, exc.code))


def authenticate_upgrade(scope: dict[str, Any]) -> Principal:
    """The caller of an upgrade: its Authorization header, or else a session token in ``?token=``."""
    has_header = any(name == b"authorization" for name, _ in scope.get("headers", []))
    token = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1")).get("token", [""])[0]
    if has_header or not token:
        return authenticate_headers(scope)
    try:
        tenant, api_key, session_id = session_token_read(token=token)
    except TokenInvalidError as exc:
        raise unauthorized(str(exc)) from exc
    return Principal(tenant=tenant, api_key=api_key, is_master=False, scope=session_scope(session_id))


def cancel_unfinished(execution_id: str) -> None:
    execution = Execution.objects.filter(pk=execution_id).first()
    if execution is not None and execution.status not in FINISHED:
        logger.info("WebSocket of %s closed before its exit: cancelling it", execution_id)
        services.execution_cancel(execution=execution)
