"""The worker's side of the launcher protocol: requests out, frames back out of Docker's multiplexed stream."""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest

from sandbox.errors import SandboxError
from sandbox.protocol import FRAME_HEADER, MUX_HEADER, FrameReader, encode_request


def frame(kind: str, payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload), ord(kind)) + payload


def mux(stream: int, data: bytes) -> bytes:
    return MUX_HEADER.pack(stream, len(data)) + data


def test_a_request_is_its_length_then_its_json():
    raw = encode_request({"op": "ping", "nonce": "n"})
    (length,) = struct.unpack(">I", raw[:4])
    assert length == len(raw) - 4 and json.loads(raw[4:]) == {"op": "ping", "nonce": "n"}


def test_frames_split_anywhere_across_multiplexed_chunks_come_out_whole():
    stream = frame("o", b"hello") + frame("c", b"{}") + frame("x", b'{"exitCode": 0}')
    reader = FrameReader(socket.socket(), "c" * 64)
    for i in range(0, len(stream), 3):  # 3-byte docker chunks: headers and payloads are cut everywhere
        reader.feed(mux(1, stream[i : i + 3])[:8] + stream[i : i + 3])
    first, second = reader.next_frame(), reader.next_frame()
    assert first is not None and (first.kind, first.payload) == ("o", b"hello")
    # The late cancel ack is skipped.
    assert second is not None and second.kind == "x" and second.json() == {"exitCode": 0}
    assert reader.next_frame() is None


def test_a_multiplexed_chunk_split_in_its_header_waits_for_the_rest():
    reader = FrameReader(socket.socket(), "c" * 64)
    data = mux(1, frame("r", b'{"ok": true}'))
    reader.feed(data[:5])
    assert reader.next_frame() is None
    reader.feed(data[5:])
    got = reader.next_frame()
    assert got is not None and got.json() == {"ok": True}


def test_the_launchers_stderr_is_logged_not_taken_for_frames(caplog):
    reader = FrameReader(socket.socket(), "c" * 64)
    reader.feed(mux(2, b"isol8 launcher: bad request"))
    assert reader.next_frame() is None and "bad request" in caplog.text


def test_a_closed_stream_and_a_silent_launcher_are_sandbox_errors():
    ours, theirs = socket.socketpair()
    reader = FrameReader(ours, "c" * 64)
    with pytest.raises(SandboxError, match="did not answer in time"):
        reader.read(time.monotonic() + 0.05)
    theirs.close()
    with pytest.raises(SandboxError, match="closed its stream"):
        reader.read(time.monotonic() + 1)
    ours.close()
