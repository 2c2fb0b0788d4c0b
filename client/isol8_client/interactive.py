"""``InteractiveRun``: one execution over ``GET /execute/ws``, with live stdin, signals and a terminal.

The WebSocket route speaks isol8's protocol (one ``execute`` message, then the
same event objects as the SSE stream) plus what isol8 only reserved: ``stdin``
while the program runs, ``signal`` and, for ``tty`` runs, ``resize``. This
module is the client's side of it, on the ``websockets`` library's blocking
client; sending is safe from another thread while one thread reads events,
which is how ``RemoteIsol8.execute_stream(stdin=<iterable>)`` and the CLI's
``run -i`` and ``shell`` use it.

Leaving before ``exit`` (``close()``, or the ``with`` block) cancels the run
on the server.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection, connect

from isol8_client import _protocol as proto
from isol8_client.errors import Isol8ConnectionError, Isol8Error, error_class_for
from isol8_client.models import StreamEvent, is_known_event

SIGNALS = ("SIGINT", "SIGTERM", "SIGKILL")


def websocket_url(host: str) -> str:
    """``http://h:3000`` → ``ws://h:3000/execute/ws`` (``https`` → ``wss``)."""
    scheme, _, rest = host.partition("://")
    return ("wss" if scheme == "https" else "ws") + "://" + rest + "/execute/ws"


class InteractiveRun:
    """A running execution: iterate it for its events, send it input as it runs.

    Made by ``RemoteIsol8.interactive()``; the connection is open and the
    ``execute`` message sent when it is returned. A refused execute (bad
    request, quota, busy session...) raises the same exception class as the
    HTTP routes, from the first ``next()``.
    """

    def __init__(self, connection: ClientConnection, host: str) -> None:
        self._ws = connection
        self._host = host
        self.exit_code: int | None = None
        # Bytes sent in pieces may split a UTF-8 character: decoded as one stream.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    # -- input ---------------------------------------------------------------

    def send(self, data: str | bytes) -> None:
        """Write to the program's stdin (bytes must be UTF-8: the protocol carries text)."""
        text = data if isinstance(data, str) else self._decoder.decode(data)
        if text:
            self._send({"type": "stdin", "data": text})

    def close_stdin(self) -> None:
        """End of input: the program reads EOF (on a terminal: Ctrl-D)."""
        self.send(self._decoder.decode(b"", final=True))
        self._send({"type": "stdin", "eof": True})

    def signal(self, name: str = "SIGINT") -> None:
        """Send SIGINT, SIGTERM or SIGKILL to the program's process group."""
        if name not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}")
        self._send({"type": "signal", "signal": name})

    def resize(self, cols: int, rows: int) -> None:
        """The terminal's size, for runs started with ``tty=True``."""
        self._send({"type": "resize", "cols": cols, "rows": rows})

    def _send(self, message: Mapping[str, Any]) -> None:
        try:
            self._ws.send(json.dumps(message))
        except ConnectionClosed:
            pass  # the run ended (or the server went away): there is no stdin left to write
        except WebSocketException as exc:
            raise Isol8ConnectionError(f"WebSocket to {self._host} failed: {exc}") from exc

    # -- output --------------------------------------------------------------

    def __iter__(self) -> Iterator[StreamEvent]:
        """The run's events until ``exit`` (then the server closes the connection)."""
        while True:
            try:
                # recv(), not iteration: websockets' iterator ends quietly on a
                # normal close, and a close before ``exit`` is a cut-off run.
                body = json.loads(self._ws.recv())
            except ConnectionClosed as exc:
                raise Isol8ConnectionError(
                    f"WebSocket to {self._host} closed before the run's exit: {exc}"
                ) from exc
            except ValueError as exc:
                raise Isol8Error(f"The server sent a frame that is not JSON: {exc}") from exc
            if not isinstance(body, dict):
                continue
            if body.get("type") == "error" and "status" in body:
                raise _refused(body)
            if not is_known_event(body):
                continue  # a type from a newer server: skipped, as the protocol asks
            event = StreamEvent.from_json(body)
            yield event
            if event.type == "exit":
                self.exit_code = event.exit_code
                return

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Close the connection; a run that has not exited yet is cancelled by the server."""
        self._ws.close()

    def __enter__(self) -> InteractiveRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_run(
    host: str, headers: Mapping[str, str], body: Mapping[str, Any], *, open_timeout: float | None
) -> InteractiveRun:
    """Connect to ``/execute/ws``, send the ``execute`` message, return the run."""
    try:
        # Entered by hand: websockets 17 wants connect() used as a context
        # manager (older releases return the connection, whose __enter__ is itself).
        connection = connect(
            websocket_url(host),
            additional_headers=dict(headers),
            open_timeout=open_timeout,
            max_size=None,  # the server bounds output; a frame is one event
        ).__enter__()
    except InvalidStatus as exc:
        answer = exc.response
        response = httpx.Response(
            answer.status_code, headers=list(answer.headers.raw_items()), content=bytes(answer.body)
        )
        error = proto.error_from_response(response)
        raise error if error is not None else Isol8Error(str(exc)) from exc
    except (OSError, InvalidURI, WebSocketException, TimeoutError) as exc:
        raise Isol8ConnectionError(f"Could not open a WebSocket to {host}: {exc}") from exc
    run = InteractiveRun(connection, host)
    run._send({"type": "execute", **body})
    return run


def _refused(body: Mapping[str, Any]) -> Isol8Error:
    """The exception for a refused execute, as the HTTP route would have raised it."""
    status = body.get("status")
    status = status if isinstance(status, int) else 500
    code = body.get("code")
    return error_class_for(status)(
        str(body.get("data", "")), status=status, code=None if code is None else str(code)
    )
