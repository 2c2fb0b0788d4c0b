"""The launcher protocol, the worker's side (images/common/isol8_launcher/protocol.py is the other).

Requests are a 4-byte big-endian length and a JSON object. Replies are frames:
a 4-byte big-endian payload length, one kind byte, the payload. They travel
inside Docker's multiplexed attach/exec stream (8-byte headers: stream number,
length), which FrameReader takes apart.

    o / e   a chunk of the program's stdout / stderr     (raw bytes)
    O / E   a chunk of the setup script's stdout / stderr (raw bytes)
    t       a stream just passed maxOutput                (JSON: kind, bytes)
    x       the end of a run                              (JSON)
    r       the reply to any other operation              (JSON)
    c       the acknowledgement of a cancel that arrived after its run (skipped)
    i       an interactive run's program read this much stdin       (JSON: bytes)
    d       a stateful cell's display: a MIME bundle                  (JSON)

During a run the worker may send control requests: ``cancel``, and for an
interactive run ``stdin`` (base64 ``data`` or ``eof``), ``signal`` and
``resize`` (never answered; dropped when no run is in progress).
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from sandbox.errors import SandboxError

logger = logging.getLogger(__name__)

REQUEST_HEADER = struct.Struct(">I")
FRAME_HEADER = struct.Struct(">IB")
MUX_HEADER = struct.Struct(">BxxxI")
END_KINDS = ("x", "r")  # the frame that ends a request's answer


def encode_request(request: dict[str, Any]) -> bytes:
    body = json.dumps(request).encode()
    return REQUEST_HEADER.pack(len(body)) + body


@dataclass
class Frame:
    kind: str
    payload: bytes

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.payload))


class FrameReader:
    """Reads launcher frames out of Docker's multiplexed attach/exec stream."""

    def __init__(self, sock: socket.socket, container_id: str) -> None:
        self.sock = sock
        self.container_id = container_id
        self.raw = bytearray()
        self.stdout = bytearray()

    def read(self, deadline: float) -> Frame:
        while True:
            frame = self.next_frame()
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxError("the launcher did not answer in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(262144)
            except TimeoutError as exc:
                raise SandboxError("the launcher did not answer in time") from exc
            except OSError as exc:
                logger.warning("sandbox %s: connection lost: %s", self.container_id[:12], exc)
                raise SandboxError("lost the connection to the sandbox") from exc
            if not data:
                raise SandboxError("the sandbox closed its stream (container died?)")
            self.feed(data)

    def feed(self, data: bytes) -> None:
        """Take bytes of the multiplexed stream: stdout carries frames, stderr is the launcher's log."""
        self.raw += data
        while len(self.raw) >= MUX_HEADER.size:
            stream, length = MUX_HEADER.unpack_from(self.raw)
            end = MUX_HEADER.size + length
            if len(self.raw) < end:
                return
            chunk = bytes(self.raw[MUX_HEADER.size : end])
            del self.raw[:end]
            if stream == 1:
                self.stdout += chunk
            else:
                logger.warning("launcher %s: %s", self.container_id[:12], chunk.decode(errors="replace").rstrip())

    def next_frame(self) -> Frame | None:
        """The next complete frame already received, if any (late cancel acknowledgements skipped)."""
        while len(self.stdout) >= FRAME_HEADER.size:
            length, kind = FRAME_HEADER.unpack_from(self.stdout)
            end = FRAME_HEADER.size + length
            if len(self.stdout) < end:
                return None
            payload = bytes(self.stdout[FRAME_HEADER.size : end])
            del self.stdout[:end]
            if kind != ord("c"):
                return Frame(chr(kind), payload)
        return None
