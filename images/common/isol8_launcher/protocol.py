"""The launcher protocol, the launcher's side (sandbox/protocol.py is the worker's).

Requests are a 4-byte big-endian length followed by a JSON object.
Replies are frames: a 4-byte big-endian payload length, one kind byte, the payload.

    o / e   a chunk of the program's stdout / stderr     (raw bytes)
    O / E   a chunk of the setup script's stdout / stderr (raw bytes)
    t       a stream just passed maxOutput                (JSON: kind, bytes)
    x       the end of a run                              (JSON)
    r       the reply to any other operation              (JSON)
    c       the acknowledgement of a cancel that arrived after its run
    i       an interactive run's program read this much stdin       (JSON: bytes)
    d       a stateful cell's display: a MIME bundle                  (JSON)

A ``cell`` request (stateful sessions, kernel.py) is answered like a run:
output frames, ``d`` frames, then ``x`` with the cell's value and exception.

During a run the worker may send: ``cancel``; for an interactive run,
``stdin`` (base64 ``data``, or ``eof``), ``signal`` and ``resize``. These
live messages are never answered, and dropped when no run is in progress.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

REQUEST_HEADER = struct.Struct(">I")
FRAME_HEADER = struct.Struct(">IB")
MAX_REQUEST_BYTES = 64 * 1024 * 1024
READ_CHUNK = 65536


class OpError(Exception):
    """A refused operation; ``code`` is the API error code the worker maps it to."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def read_exact(fd: int, n: int) -> bytes | None:
    """Exactly ``n`` bytes from ``fd``, or None at EOF before they all came."""
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_request(fd: int) -> dict[str, Any] | None:
    """The next request on ``fd`` (the launcher's stdin, 0); None at EOF.

    Raises OpError for a length past MAX_REQUEST_BYTES (nothing of the body
    is read) or a body that is not a JSON object, ValueError for one that is
    not JSON.
    """
    header = read_exact(fd, REQUEST_HEADER.size)
    if header is None:
        return None
    (length,) = REQUEST_HEADER.unpack(header)
    if length > MAX_REQUEST_BYTES:
        raise OpError("payload_too_large", "request too large")
    body = read_exact(fd, length)
    if body is None:
        return None
    request = json.loads(body)
    if not isinstance(request, dict):
        raise OpError("bad_request", "request must be an object")
    return request


class FrameWriter:
    """Writes reply frames to ``fd`` (the launcher's stdout, 1), each whole, in order."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd

    def send(self, kind: bytes, payload: bytes) -> None:
        data = FRAME_HEADER.pack(len(payload), kind[0]) + payload
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def send_json(self, kind: bytes, obj: dict[str, Any]) -> None:
        self.send(kind, json.dumps(obj).encode())
