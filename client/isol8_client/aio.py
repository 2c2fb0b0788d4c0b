"""``AsyncRemoteIsol8``: the asyncio twin of :class:`isol8_client.RemoteIsol8`.

Same constructor, same methods, awaited; ``execute_stream`` is an async
iterator. The protocol itself lives in ``_protocol`` so both stay identical.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from isol8_client import _protocol as proto
from isol8_client.errors import Isol8Error, NotFoundError
from isol8_client.models import ExecutionResult, SessionInfo, StreamEvent


class AsyncRemoteIsol8:
    """An asyncio connection to one isol8 server, optionally bound to one session.

    See :class:`isol8_client.RemoteIsol8` for the options, ``stateful`` and the retry policy.
    """

    def __init__(
        self,
        host: str,
        api_key: str,
        session_id: str | None = None,
        *,
        stateful: bool = False,
        retry: bool = False,
        max_retries: int = 3,
        max_retry_wait: float = 60.0,
        timeout: float | httpx.Timeout | None = proto.DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Any,
    ) -> None:
        proto.check_stateful(session_id, stateful)
        self.host = proto.normalize_host(host)
        self.session_id = session_id
        self.stateful = stateful
        self.last_execution_id: str | None = None  # see RemoteIsol8.last_execution_id
        self.options = proto.options_to_wire(options)
        self.retry_policy = proto.RetryPolicy(retry, max_retries, max_retry_wait)
        self._http = httpx.AsyncClient(
            base_url=self.host, headers=proto.auth_headers(api_key), timeout=timeout, transport=transport
        )

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Check that the server answers GET /health with 2xx; it creates no session."""
        await self._call("GET", "/health")

    async def stop(self) -> None:
        """Delete this client's session (if it has one), then close the connection pool."""
        try:
            if self.session_id is not None:
                try:
                    await self.delete_session(self.session_id)
                except NotFoundError:
                    pass
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the HTTP connections without touching the session (it stays on the server)."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRemoteIsol8:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.stop()
            return
        # An error while cleaning up must not hide the one that ended the block.
        try:
            await self.stop()
        except Isol8Error:
            pass

    # -- executions --------------------------------------------------------

    async def execute(
        self,
        code: str | None = None,
        *,
        runtime: str = "python",
        cmd: str | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        files: Mapping[str, str | bytes] | None = None,
        output_paths: Sequence[str] | None = None,
        timeout_ms: int | None = None,
        file_extension: str | None = None,
        workdir: str | None = None,
        setup_script: str | None = None,
    ) -> ExecutionResult:
        """Run code (or ``cmd``) and wait for the whole result (POST /execute)."""
        request = proto.build_request(
            code=code, runtime=runtime, cmd=cmd, stdin=stdin, env=env, files=files,
            output_paths=output_paths, timeout_ms=timeout_ms, file_extension=file_extension,
            workdir=workdir, setup_script=setup_script,
        )
        response = await self._call("POST", "/execute", json=self._body(request))
        return ExecutionResult.from_json(response.json())

    def execute_stream(
        self,
        code: str | None = None,
        *,
        runtime: str = "python",
        cmd: str | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        files: Mapping[str, str | bytes] | None = None,
        output_paths: Sequence[str] | None = None,
        timeout_ms: int | None = None,
        file_extension: str | None = None,
        workdir: str | None = None,
        setup_script: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Run code and yield its events as they arrive: ``async for event in c.execute_stream(...)``.

        The request is sent when iteration starts; errors the server gives
        before the stream are raised from the first ``__anext__``.
        """
        request = proto.build_request(
            code=code, runtime=runtime, cmd=cmd, stdin=stdin, env=env, files=files,
            output_paths=output_paths, timeout_ms=timeout_ms, file_extension=file_extension,
            workdir=workdir, setup_script=setup_script,
        )
        return self._stream(self._body(request))

    async def cancel(self, execution_id: str) -> None:
        """Kill a queued or running execution (POST /executions/{id}/cancel)."""
        await self._call("POST", f"/executions/{execution_id}/cancel")

    async def get_execution(self, execution_id: str) -> ExecutionResult:
        """One finished execution from the history (GET /executions/{id}); see RemoteIsol8.get_execution."""
        response = await self._call("GET", f"/executions/{execution_id}")
        return ExecutionResult.from_json(response.json())

    # -- sessions and files --------------------------------------------------

    async def put_file(self, path: str, content: bytes | str) -> None:
        """Upload a file into this client's session (text is sent as UTF-8)."""
        body = proto.file_body(proto.require_session(self.session_id), path, content)
        await self._call("POST", "/file", json=body)

    async def get_file(self, path: str) -> bytes:
        """Download a file from this client's session."""
        params = {"sessionId": proto.require_session(self.session_id), "path": path}
        response = await self._call("GET", "/file", params=params)
        return proto.decode_file(response.json())

    async def list_sessions(self) -> list[SessionInfo]:
        """The caller's live sessions."""
        body = (await self._call("GET", "/sessions")).json()
        return [SessionInfo.from_json(item) for item in body.get("sessions", [])]

    async def delete_session(self, session_id: str) -> None:
        """Stop and remove one of the caller's sessions and its container."""
        await self._call("DELETE", f"/session/{session_id}")

    async def restart(self) -> dict[str, Any]:
        """Restart this client's stateful session's interpreter (POST /session/{id}/restart).

        Returns ``{"ok": True, "restarted": True}``; see RemoteIsol8.restart for the errors.
        """
        session_id = proto.require_session(self.session_id, proto.NO_SESSION_FOR_RESTART)
        return proto.json_object(await self._call("POST", f"/session/{session_id}/restart"), "restart")

    # -- plumbing ----------------------------------------------------------------

    def _body(self, request: dict[str, Any]) -> dict[str, Any]:
        return proto.execute_body(request, self.options, self.session_id, self.stateful)

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call, raising the server's error, retried when the policy allows."""
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise proto.connection_error(exc, self.host) from exc
            error = proto.error_from_response(response)
            if error is None:
                return response
            await self._wait_or_raise(error, attempt)
            attempt += 1

    async def _wait_or_raise(self, error: Isol8Error, attempt: int) -> None:
        delay = self.retry_policy.delay(error, attempt)
        if delay is None:
            raise error
        await asyncio.sleep(delay)

    async def _open_stream(self, body: dict[str, Any]) -> httpx.Response:
        """Send the stream request and return the open 2xx response (retrying like _call)."""
        attempt = 0
        while True:
            request = self._http.build_request("POST", "/execute/stream", json=body, headers=proto.STREAM_HEADERS)
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise proto.connection_error(exc, self.host) from exc
            if response.is_success:
                self.last_execution_id = response.headers.get("X-Execution-Id")
                return response
            try:
                await response.aread()
            finally:
                await response.aclose()
            error = proto.error_from_response(response)
            assert error is not None
            await self._wait_or_raise(error, attempt)
            attempt += 1

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[StreamEvent]:
        response = await self._open_stream(body)
        parser = proto.SseParser()
        try:
            # aiter_text yields each chunk as it comes off the socket: no buffering.
            async for chunk in response.aiter_text():
                for event in parser.feed(chunk):
                    yield event
            for event in parser.finish():
                yield event
        except httpx.TransportError as exc:
            raise proto.connection_error(exc, self.host) from exc
        finally:
            await response.aclose()
