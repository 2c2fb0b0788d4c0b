"""protocol.py: requests read off a pipe, frames written to one, as sandbox/protocol.py (the worker) has them."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest
from isol8_launcher.protocol import FRAME_HEADER, MAX_REQUEST_BYTES, REQUEST_HEADER, OpError, read_request

from sandbox.protocol import MUX_HEADER, FrameReader, encode_request
from tests.unit.launcher.support import FramePipe


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        try:
            os.close(fd)
        except OSError:
            pass


def send_and_close(write_fd: int, data: bytes) -> None:
    os.write(write_fd, data)
    os.close(write_fd)


def test_a_request_encoded_by_the_worker_is_read_as_its_object(pipe):
    read_fd, write_fd = pipe
    send_and_close(write_fd, encode_request({"op": "ping", "nonce": "n1"}))
    assert read_request(read_fd) == {"op": "ping", "nonce": "n1"}


def test_requests_sent_back_to_back_are_read_one_at_a_time(pipe):
    read_fd, write_fd = pipe
    send_and_close(write_fd, encode_request({"op": "run", "n": 1}) + encode_request({"op": "cancel"}))
    assert read_request(read_fd) == {"op": "run", "n": 1}
    assert read_request(read_fd) == {"op": "cancel"}
    assert read_request(read_fd) is None


def test_eof_before_a_request_is_none(pipe):
    read_fd, write_fd = pipe
    os.close(write_fd)
    assert read_request(read_fd) is None


def test_eof_inside_the_length_header_is_none(pipe):
    read_fd, write_fd = pipe
    send_and_close(write_fd, encode_request({"op": "ping"})[:2])
    assert read_request(read_fd) is None


def test_eof_inside_the_body_is_none(pipe):
    read_fd, write_fd = pipe
    send_and_close(write_fd, encode_request({"op": "ping", "nonce": "abcdef"})[:-3])
    assert read_request(read_fd) is None


def test_a_length_past_the_limit_is_refused_without_reading_the_body(pipe):
    read_fd, write_fd = pipe
    send_and_close(write_fd, REQUEST_HEADER.pack(MAX_REQUEST_BYTES + 1) + b'{"op": "ping"}')
    with pytest.raises(OpError) as refused:
        read_request(read_fd)
    assert refused.value.code == "payload_too_large"
    assert os.read(read_fd, 100) == b'{"op": "ping"}'


def test_a_body_that_is_not_an_object_is_a_bad_request(pipe):
    read_fd, write_fd = pipe
    body = json.dumps(["op", "ping"]).encode()
    send_and_close(write_fd, REQUEST_HEADER.pack(len(body)) + body)
    with pytest.raises(OpError) as refused:
        read_request(read_fd)
    assert refused.value.code == "bad_request"


def test_a_body_that_is_not_json_raises_value_error(pipe):
    read_fd, write_fd = pipe
    send_and_close(write_fd, REQUEST_HEADER.pack(5) + b"{op: ")
    with pytest.raises(ValueError):
        read_request(read_fd)


def test_a_frame_is_its_length_its_kind_byte_then_its_payload():
    pipe = FramePipe()
    try:
        pipe.writer.send(b"o", b"hello")
        pipe.frames()
        data = bytes(pipe.received)
    finally:
        pipe.close()
    assert FRAME_HEADER.format == ">IB"
    assert data == (5).to_bytes(4, "big") + b"o" + b"hello"


def test_send_json_sends_the_object_as_the_payload():
    pipe = FramePipe()
    try:
        pipe.writer.send_json(b"r", {"ok": True, "pong": "n"})
        (frame,) = pipe.frames()
    finally:
        pipe.close()
    assert frame.kind == "r" and frame.json() == {"ok": True, "pong": "n"}


def test_only_the_first_byte_of_the_kind_is_written():
    pipe = FramePipe()
    try:
        pipe.writer.send(b"xyz", b"{}")
        (frame,) = pipe.frames()
    finally:
        pipe.close()
    assert frame.kind == "x" and frame.payload == b"{}"


def test_a_frame_larger_than_the_pipe_buffer_arrives_whole_and_in_order():
    big = os.urandom(1024 * 1024)
    pipe = FramePipe()
    try:
        pipe.writer.send(b"o", b"first")
        pipe.writer.send(b"e", big)
        pipe.writer.send(b"x", b"{}")
        frames = pipe.frames()
    finally:
        pipe.close()
    assert [(f.kind, len(f.payload)) for f in frames] == [("o", 5), ("e", len(big)), ("x", 2)]
    assert frames[1].payload == big


def test_the_workers_frame_reader_reads_the_launchers_frames():
    """The contract with sandbox/protocol.py: frames inside Docker's multiplexed stream, late cancels skipped."""
    pipe = FramePipe()
    try:
        pipe.writer.send(b"o", b"out")
        pipe.writer.send_json(b"c", {"late": True})
        pipe.writer.send_json(b"x", {"exitCode": 3})
        pipe.frames()
        data = bytes(pipe.received)
    finally:
        pipe.close()
    reader = FrameReader(socket.socket(), "c" * 64)
    try:
        reader.feed(MUX_HEADER.pack(1, len(data)) + data)
        first, second = reader.next_frame(), reader.next_frame()
    finally:
        reader.sock.close()
    assert first is not None and (first.kind, first.payload) == ("o", b"out")
    assert second is not None and second.kind == "x" and second.json() == {"exitCode": 3}
    assert reader.next_frame() is None

