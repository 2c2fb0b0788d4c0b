"""uvicorn's httptools protocol with bounds on a request's head (``--http`` of the web server).

httptools accepts a head of any size, sent as slowly as the client likes: an
8 MiB header was buffered whole, and connections that never finish their head
stayed open. Here a head (request line and headers) may be at most
ISOL8_MAX_HEAD_BYTES and must arrive within ISOL8_HEAD_TIMEOUT seconds of its
first byte (or of the connection). Bodies are bounded by the ASGI guard
(isol8_site/asgi.py), which knows each route's limit.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = int(os.environ.get("ISOL8_MAX_HEAD_BYTES", str(64 * 1024)))
HEAD_TIMEOUT = float(os.environ.get("ISOL8_HEAD_TIMEOUT", "10"))


class HeadTooLargeError(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_bytes = 0  # bytes received while the current head is incomplete
        self.head_size = 0  # request line and headers parsed so far
        self.head_timer: asyncio.TimerHandle | None = None

    # A head is "open" from its connection or its first byte until its headers are complete.
    def _open_head(self) -> None:
        self._close_head()
        self.head_bytes = self.head_size = 0
        self.head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timed_out)

    def _close_head(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _refuse(self, status: int, reason: bytes) -> None:
        self._close_head()
        if not self.transport.is_closing():
            body = b'{"error":"' + reason + b'","code":"bad_request"}'
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
            )
            self.transport.close()

    def _head_timed_out(self) -> None:
        self.head_timer = None
        self._refuse(408, b"Request Timeout")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._open_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._close_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.head_timer is not None:
            # Every byte before this chunk belonged to the head: it is too big
            # already, whatever this chunk holds (one read is at most 256 KiB).
            if self.head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, b"Request Header Fields Too Large")
                return
            self.head_bytes += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_timer is None:
            self._open_head()

    def _count(self, size: int) -> None:
        # Raising stops the parser; uvicorn answers 400 and closes the connection.
        self.head_size += size
        if self.head_size > MAX_HEAD_BYTES:
            raise HeadTooLargeError

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._close_head()
        super().on_headers_complete()
