"""``RemoteIsol8``: the blocking client, a Python twin of isol8's TypeScript RemoteIsol8.

``execute``, ``execute_stream`` and the file and session calls speak HTTP +
SSE, so they work against this server and against the original one.
``interactive()`` (and ``execute_stream(stdin=<iterable>)``) use this server's
``GET /execute/ws`` with live stdin, signals and terminals (isol8 only
reserved those messages).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from isol8_client import _protocol as proto
from isol8_client.errors import Isol8Error, NotFoundError
from isol8_client.interactive import InteractiveRun, open_run
from isol8_client.models import ExecutionResult, SessionInfo, StreamEvent

logger = logging.getLogger(__name__)


class RemoteIsol8:
    """A connection to one isol8 server, optionally bound to one persistent session.

    ``options`` are isol8's ``Isol8Options`` in snake_case (``memory_limit="256m"``,
    ``cpu_limit=0.5``, ``timeout_ms``, ``pids_limit``, ``max_output_size``,
    ``secrets={...}``, ``network``...); they are sent, camelCased, with every
    execution. ``retry=True`` retries 429/503 answers up to ``max_retries``
    times, waiting what ``Retry-After`` says (at most ``max_retry_wait`` s).

    ``stateful=True`` (with a ``session_id``; without one it is a ValueError)
    makes the session keep one interpreter: each execute is a cell that sees the
    variables of the earlier ones, and its result carries ``value``,
    ``outputs``, ``exception`` and ``state_lost``.
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
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> None:
        proto.check_stateful(session_id, stateful)
        self.host = proto.normalize_host(host)
        self.session_id = session_id
        self.stateful = stateful
        # The id of the execution most recently started with execute_stream()
        # (the server's X-Execution-Id), so a caller can cancel() it.
        self.last_execution_id: str | None = None
        self.options = proto.options_to_wire(options)
        self.retry_policy = proto.RetryPolicy(retry, max_retries, max_retry_wait)
        self._headers = proto.auth_headers(api_key)
        self._connect_timeout = timeout.connect if isinstance(timeout, httpx.Timeout) else timeout
        self._http = httpx.Client(base_url=self.host, headers=self._headers, timeout=timeout, transport=transport)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Check that the server answers GET /health with 2xx; it creates no session."""
        self._call("GET", "/health")

    def stop(self) -> None:
        """Delete this client's session (if it has one), then close the connection pool.

        A session that is already gone is fine: stopping is idempotent.
        """
        try:
            if self.session_id is not None:
                try:
                    self.delete_session(self.session_id)
                except NotFoundError:
                    pass
        finally:
            self.close()

    def close(self) -> None:
        """Close the HTTP connections without touching the session (it stays on the server)."""
        self._http.close()

    def __enter__(self) -> RemoteIsol8:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.stop()
            return
        # An error while cleaning up must not hide the one that ended the block.
        try:
            self.stop()
        except Isol8Error:
            pass

    # -- executions --------------------------------------------------------

    def execute(
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
        response = self._call("POST", "/execute", json=self._body(request))
        return ExecutionResult.from_json(response.json())

    def execute_stream(
        self,
        code: str | None = None,
        *,
        runtime: str = "python",
        cmd: str | None = None,
        stdin: str | Iterable[str | bytes] | None = None,
        env: Mapping[str, str] | None = None,
        files: Mapping[str, str | bytes] | None = None,
        output_paths: Sequence[str] | None = None,
        timeout_ms: int | None = None,
        file_extension: str | None = None,
        workdir: str | None = None,
        setup_script: str | None = None,
    ) -> Iterator[StreamEvent]:
        """Run code and yield its events as the server sends them (POST /execute/stream).

        The request is sent when iteration starts; errors the server gives
        before the stream (401, 429...) are raised from the first ``next()``.
        Leaving the loop early closes the connection.

        ``stdin`` as a string is the program's whole input, as in isol8. Any
        other iterable (a file, a generator, a queue's iterator) is fed to the
        running program item by item as the iterable yields them, over
        GET /execute/ws, then its stdin is closed; leaving the loop early then
        cancels the run.
        """
        whole = stdin if isinstance(stdin, str) else None
        request = proto.build_request(
            code=code, runtime=runtime, cmd=cmd, stdin=whole, env=env, files=files,
            output_paths=output_paths, timeout_ms=timeout_ms, file_extension=file_extension,
            workdir=workdir, setup_script=setup_script,
        )
        if stdin is not None and not isinstance(stdin, str):
            return self._fed(request, stdin)
        return self._stream(self._body(request))

    def interactive(
        self,
        code: str | None = None,
        *,
        runtime: str = "python",
        cmd: str | None = None,
        tty: bool = False,
        env: Mapping[str, str] | None = None,
        files: Mapping[str, str | bytes] | None = None,
        timeout_ms: int | None = None,
        file_extension: str | None = None,
        workdir: str | None = None,
    ) -> InteractiveRun:
        """Start a run over GET /execute/ws and return it while it runs.

        Iterate the returned ``InteractiveRun`` for its events; from any
        thread, ``send()`` writes to its stdin, ``close_stdin()`` ends it,
        ``signal("SIGINT")`` interrupts it and, with ``tty=True`` (the program
        on a pseudo-terminal: REPLs, ``bash -i``), ``resize(cols, rows)`` sets
        the terminal's size. Closing it (or its ``with`` block) before the
        ``exit`` event cancels the run. It runs in this client's session, if
        it has one.
        """
        request = proto.build_request(
            code=code, runtime=runtime, cmd=cmd, stdin=None, env=env, files=files, output_paths=None,
            timeout_ms=timeout_ms, file_extension=file_extension, workdir=workdir, setup_script=None,
        )
        if tty:
            request["tty"] = True
        return open_run(self.host, self._headers, self._body(request), open_timeout=self._connect_timeout)

    def cancel(self, execution_id: str) -> None:
        """Kill a queued or running execution (POST /executions/{id}/cancel).

        Closing a stream does not stop its program on the server (it keeps
        running into the history); this does.
        """
        self._call("POST", f"/executions/{execution_id}/cancel")

    def get_execution(self, execution_id: str) -> ExecutionResult:
        """One finished execution of this tenant from the history (GET /executions/{id}, this server's).

        After ``execute_stream()`` (whose ``exit`` event carries only the exit
        code), it gives the whole result, a stateful cell's ``value`` included.
        """
        return ExecutionResult.from_json(self._call("GET", f"/executions/{execution_id}").json())

    # -- sessions and files --------------------------------------------------

    def put_file(self, path: str, content: bytes | str) -> None:
        """Upload a file into this client's session (text is sent as UTF-8)."""
        body = proto.file_body(proto.require_session(self.session_id), path, content)
        self._call("POST", "/file", json=body)

    def get_file(self, path: str) -> bytes:
        """Download a file from this client's session."""
        params = {"sessionId": proto.require_session(self.session_id), "path": path}
        return proto.decode_file(self._call("GET", "/file", params=params).json())

    def list_sessions(self) -> list[SessionInfo]:
        """The caller's live sessions."""
        body = self._call("GET", "/sessions").json()
        return [SessionInfo.from_json(item) for item in body.get("sessions", [])]

    def delete_session(self, session_id: str) -> None:
        """Stop and remove one of the caller's sessions and its container."""
        self._call("DELETE", f"/session/{session_id}")

    def restart(self) -> dict[str, Any]:
        """Restart this client's stateful session's interpreter (POST /session/{id}/restart).

        Variables are gone afterwards; files in /sandbox stay. Returns the
        server's answer, ``{"ok": True, "restarted": True}``. The server refuses
        a session that is not stateful (BadRequestError), an unknown one
        (NotFoundError) and one that is running a cell (ConflictError).
        """
        session_id = proto.require_session(self.session_id, proto.NO_SESSION_FOR_RESTART)
        return proto.json_object(self._call("POST", f"/session/{session_id}/restart"), "restart")

    # -- plumbing ----------------------------------------------------------------

    def _body(self, request: dict[str, Any]) -> dict[str, Any]:
        return proto.execute_body(request, self.options, self.session_id, self.stateful)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call, raising the server's error, retried when the policy allows."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise proto.connection_error(exc, self.host) from exc
            error = proto.error_from_response(response)
            if error is None:
                return response
            self._wait_or_raise(error, attempt)
            attempt += 1

    def _wait_or_raise(self, error: Isol8Error, attempt: int) -> None:
        delay = self.retry_policy.delay(error, attempt)
        if delay is None:
            raise error
        time.sleep(delay)

    def _open_stream(self, body: dict[str, Any]) -> httpx.Response:
        """Send the stream request and return the open 2xx response (retrying like _call)."""
        attempt = 0
        while True:
            request = self._http.build_request("POST", "/execute/stream", json=body, headers=proto.STREAM_HEADERS)
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise proto.connection_error(exc, self.host) from exc
            if response.is_success:
                self.last_execution_id = response.headers.get("X-Execution-Id")
                return response
            try:
                response.read()
            finally:
                response.close()
            error = proto.error_from_response(response)
            assert error is not None
            self._wait_or_raise(error, attempt)
            attempt += 1

    def _fed(self, request: dict[str, Any], stdin: Iterable[str | bytes]) -> Iterator[StreamEvent]:
        """A run over the WebSocket whose stdin a thread feeds from ``stdin`` while its events are read."""
        run = open_run(self.host, self._headers, self._body(request), open_timeout=self._connect_timeout)

        def feed() -> None:
            try:
                for chunk in stdin:
                    run.send(chunk)
            except Exception:
                # The iterable failed: the program gets no more input, nor waits for it.
                logger.exception("the stdin iterable of execution_stream() failed; closing the run's stdin")
            finally:
                run.close_stdin()

        feeder = threading.Thread(target=feed, name="isol8-stdin", daemon=True)
        with run:
            feeder.start()
            yield from run

    def _stream(self, body: dict[str, Any]) -> Iterator[StreamEvent]:
        response = self._open_stream(body)
        parser = proto.SseParser()
        try:
            # iter_text yields each chunk as it comes off the socket: no buffering.
            for chunk in response.iter_text():
                yield from parser.feed(chunk)
            yield from parser.finish()
        except httpx.TransportError as exc:
            raise proto.connection_error(exc, self.host) from exc
        finally:
            response.close()
