"""relay.py: the egress relay, real sockets on both sides.

A stand-in gateway listens on a Unix socket in a directory of the test's own
(Unix socket paths are short; as root, the relay's uid must reach it). The
relay runs in a thread of the test (``relay`` fixture: a Relay on a free port)
or as the program the launcher starts (``relay.start``), and TCP clients
connect to it.
"""

from __future__ import annotations

import functools
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from isol8_launcher import relay as relay_module
from isol8_launcher.relay import BUFFER, RELAY_PROGRAM, RELAY_UID, Relay

ROOT = Path(__file__).resolve().parents[3]
MIB = 1024 * 1024
Handler = Callable[[socket.socket, "Gateway"], None]


def wait_until(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def read_to_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(MIB):
        data += chunk
    return bytes(data)


# ------------------------------------------------------------ the stand-in gateway


def upper(conn: socket.socket, gateway: Gateway) -> None:
    """Sends back what it reads, upper-cased, as it comes; at EOF it says ``<EOF>`` and closes."""
    received = 0
    while chunk := conn.recv(65536):
        received += len(chunk)
        conn.sendall(chunk.upper())
    conn.sendall(b"<EOF>")
    gateway.received.append(received)


def greet_then_read(conn: socket.socket, gateway: Gateway) -> None:
    """Says hello and shuts its side down for writing, then keeps reading until the client's EOF."""
    conn.sendall(b"hello")
    conn.shutdown(socket.SHUT_WR)
    gateway.received.append(read_to_eof(conn))


def hold(conn: socket.socket, gateway: Gateway) -> None:
    """Reads nothing until the test is over."""
    gateway.released.wait(10)


class Gateway:
    """A Unix socket server; each connection is served by ``handler`` in a thread of its own."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.received: list[object] = []  # what the handlers saw, once each connection is over
        self.errors: list[OSError] = []
        self.released = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)  # as the gateway does: the relay runs as another uid
        self.sock.listen(512)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                self.handler(conn, self)
            except OSError as exc:  # the relay closed the connection (a client's reset)
                self.errors.append(exc)

    def close(self) -> None:
        self.released.set()
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A short directory that uid 65534 can reach (a relay started as root becomes it)."""
    path = tempfile.mkdtemp(prefix="isol8-relay-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def gateway(shared_dir: str) -> Iterator[Callable[[Handler], Gateway]]:
    started: list[Gateway] = []

    def start(handler: Handler) -> Gateway:
        server = Gateway(os.path.join(shared_dir, "proxy.sock"), handler)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


class Running:
    """A Relay stepped by a thread of the test until ``stop``."""

    def __init__(self, socket_path: str, **kwargs: int) -> None:
        self.relay = Relay(relay_module.listen(0), socket_path, **kwargs)
        self.port = self.relay.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.steps = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.relay.step(0.02)
            self.steps += 1

    def connect(self) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return client

    def connections(self) -> int:
        return len(self.relay.pairs)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "the relay's loop did not stop"
        self.relay.close_all()


@pytest.fixture
def relay() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(socket_path: str, **kwargs: int) -> Running:
        running = Running(socket_path, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def round_trip(running: Running, message: bytes) -> bytes:
    with running.connect() as client:
        client.sendall(message)
        client.shutdown(socket.SHUT_WR)
        return read_to_eof(client)


# ------------------------------------------------------------ relaying


def test_bytes_are_relayed_both_ways_unchanged(gateway, relay):
    server = gateway(upper)
    running = relay(server.path)
    with running.connect() as client:
        client.sendall(b"hello")
        assert client.recv(100) == b"HELLO"
        every_byte = bytes(range(256))
        client.sendall(every_byte)
        got = b""
        while len(got) < 256:
            got += client.recv(1000)
        assert got == every_byte.upper()


def test_five_mib_each_way_at_once_do_not_deadlock(gateway, relay):
    """The client writes 5 MiB while reading 5 MiB back: buffers fill and empty on both sides."""
    server = gateway(upper)
    running = relay(server.path)
    data = os.urandom(5 * MIB)
    with running.connect() as client:

        def send() -> None:
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = read_to_eof(client)
        sender.join(5)
    assert got == data.upper() + b"<EOF>"
    assert server.received == [len(data)]


def test_a_full_buffer_stops_reading_the_client_and_memory_stays_bounded(gateway, relay):
    """The gateway reads nothing: the client's writes stall, the relay holds at most BUFFER bytes a direction."""
    first = threading.Event()

    def hold_the_first(conn: socket.socket, gw: Gateway) -> None:
        if first.is_set():
            upper(conn, gw)
        else:
            first.set()
            hold(conn, gw)

    server = gateway(hold_the_first)
    running = relay(server.path)
    with running.connect() as client:
        client.setblocking(False)
        sent = 0
        chunk = b"x" * 65536
        while sent < 256 * MIB:
            try:
                sent += client.send(chunk)
            except BlockingIOError:
                _, writable, _ = select.select([], [client], [], 0.3)
                if not writable:
                    break  # stalled: the relay stopped reading
        assert sent < 256 * MIB, "the client could write without end: the relay kept reading"
        assert running.connections() == 1
        (pair,) = list(running.relay.pairs)
        assert len(pair.bufs[0]) == BUFFER  # full, and no more than that
        assert len(pair.bufs[1]) == 0
        # Nor does it spin on the client's readable socket: it only wakes at its step's timeout (0.02 s).
        steps = running.steps
        time.sleep(0.2)
        assert running.steps - steps < 30
        # The relay still serves others while this connection is stuck.
        assert round_trip(running, b"next") == b"NEXT<EOF>"


def test_the_clients_half_close_reaches_the_gateway_and_its_reply_still_arrives(gateway, relay):
    server = gateway(upper)
    running = relay(server.path)
    assert round_trip(running, b"question") == b"QUESTION<EOF>"  # <EOF>: the gateway saw the client's EOF
    assert wait_until(lambda: running.connections() == 0)


def test_the_gateways_half_close_reaches_the_client_which_can_still_write(gateway, relay):
    server = gateway(greet_then_read)
    running = relay(server.path)
    with running.connect() as client:
        assert read_to_eof(client) == b"hello"
        client.sendall(b"still here")
        client.shutdown(socket.SHUT_WR)
        assert wait_until(lambda: server.received == [b"still here"])
        assert read_to_eof(client) == b""
    assert wait_until(lambda: running.connections() == 0)


@pytest.mark.parametrize("state", ["absent", "not listening"])
def test_without_a_listening_gateway_the_client_is_closed_at_once(shared_dir, relay, state):
    path = os.path.join(shared_dir, "proxy.sock")
    if state == "not listening":
        left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        left.bind(path)  # the socket file exists, nobody listens: ECONNREFUSED
        left.close()
    running = relay(path)
    started = time.monotonic()
    with running.connect() as client:
        client.settimeout(2)
        client.sendall(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        try:
            assert client.recv(100) == b""
        except ConnectionResetError:
            pass
    assert time.monotonic() - started < 1.0
    assert running.connections() == 0


def test_many_connections_at_once(gateway, relay):
    server = gateway(upper)
    running = relay(server.path)
    clients = [running.connect() for _ in range(100)]
    try:
        for n, client in enumerate(clients):
            client.sendall(b"client %d" % n)
        for client in clients:
            client.shutdown(socket.SHUT_WR)
        replies = [read_to_eof(client) for client in clients]
    finally:
        for client in clients:
            client.close()
    assert replies == [b"CLIENT %d<EOF>" % n for n in range(100)]
    assert wait_until(lambda: running.connections() == 0)


def test_connections_beyond_the_limit_are_closed_and_a_freed_slot_is_used_again(gateway, relay):
    server = gateway(upper)
    running = relay(server.path, max_connections=3)
    held = [running.connect() for _ in range(3)]
    try:
        for client in held:
            client.sendall(b"in")
            assert client.recv(10) == b"IN"
        assert running.connections() == 3
        with running.connect() as extra:
            try:
                assert extra.recv(10) == b""
            except ConnectionResetError:
                pass
        held.pop().close()
        assert wait_until(lambda: running.connections() == 2)
        assert round_trip(running, b"again") == b"AGAIN<EOF>"
    finally:
        for client in held:
            client.close()


def test_a_client_that_resets_mid_stream_does_not_stop_the_relay(gateway, relay):
    server = gateway(upper)
    running = relay(server.path)
    client = running.connect()
    client.sendall(os.urandom(MIB))  # the reply is left unread
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # linger 0: a reset
    assert wait_until(lambda: running.connections() == 0)
    assert wait_until(lambda: len(server.received) + len(server.errors) == 1)  # the gateway saw it end
    assert round_trip(running, b"next one") == b"NEXT ONE<EOF>"


# ------------------------------------------------------------ the relay program, as the launcher starts it


@functools.cache
def python_for_relay() -> str | None:
    """A python that can run RELAY_PROGRAM as the relay's uid when the tests run as root (the venv's may be
    out of its reach)."""
    if os.getuid() != 0:
        return sys.executable
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if candidate is None:
            continue
        try:
            done = subprocess.run(
                [candidate, "-I", RELAY_PROGRAM],
                user=RELAY_UID,
                group=RELAY_UID,
                extra_groups=[],
                capture_output=True,
                timeout=10,
            )
        except OSError:
            continue
        if done.returncode == 2 and b"usage" in done.stderr:
            return candidate
    return None


@pytest.fixture
def relay_python() -> str:
    python = python_for_relay()
    if python is None:
        pytest.skip(f"no python that uid {RELAY_UID} can run the relay with")
    return python


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def status_fields(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as fh:
        return {key: value.split() for key, _, value in (line.partition(":") for line in fh)}


def test_the_started_relay_relays_and_holds_nothing_of_the_launcher(gateway, relay_python):
    server = gateway(upper)
    port = free_port()
    proc = relay_module.start(server.path, port=port, python=relay_python)
    assert proc is not None
    try:
        # The launcher bound the port: a connection works before the relay's python is even up.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"through the program")
            client.shutdown(socket.SHUT_WR)
            assert read_to_eof(client) == b"THROUGH THE PROGRAM<EOF>"
        assert os.readlink(f"/proc/{proc.pid}/fd/0") == os.devnull
        assert os.readlink(f"/proc/{proc.pid}/fd/1") == os.devnull

        def descriptors() -> list[str]:
            fds = [int(fd) for fd in os.listdir(f"/proc/{proc.pid}/fd")]
            return sorted(os.readlink(f"/proc/{proc.pid}/fd/{fd}").split(":")[0] for fd in fds if fd > 2)

        # Beyond stdin, stdout and stderr: the listener and the selector's epoll (the pair is closed).
        assert wait_until(lambda: descriptors() == ["anon_inode", "socket"]), descriptors()
    finally:
        proc.kill()
        proc.wait(5)


IMITATION_LAUNCHER = """
import os, sys, time
sys.path.insert(0, {common!r})
from isol8_launcher import relay
if os.getuid() == 0:
    os.setgroups([4242])  # groups of its own, which the relay must not keep
proc = relay.start({socket!r}, port={port}, python={python!r})
print(proc.pid, flush=True)
time.sleep(30)
"""


def test_the_relay_is_not_root_and_ends_with_the_launcher(shared_dir, relay_python):
    """A process that starts the relay as the launcher does; as root, the relay becomes uid and gid 65534."""
    port = free_port()
    code = IMITATION_LAUNCHER.format(
        common=str(ROOT / "images" / "common"),
        socket=os.path.join(shared_dir, "proxy.sock"),
        port=port,
        python=relay_python,
    )
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert launcher.stdout is not None
        relay_pid = int(launcher.stdout.readline())

        def running() -> bool:
            try:
                return status_fields(relay_pid)["State"][0] not in ("Z", "X")
            except FileNotFoundError:
                return False

        # Once the relay serves (it closes a connection at once: no gateway), its launcher dies.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            assert client.recv(10) == b""
        status = status_fields(relay_pid)
        assert status["PPid"] == [str(launcher.pid)]
        if os.getuid() == 0:
            assert status["Uid"] == status["Gid"] == [str(RELAY_UID)] * 4
            assert status["Groups"] == []
            assert status["CapEff"] == status["CapPrm"] == ["0000000000000000"]
        else:
            assert status["Uid"] == [str(os.getuid())] * 4
    finally:
        launcher.kill()
        launcher.wait(5)
    assert wait_until(lambda: not running(), timeout=3), "the relay outlived its launcher"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_start_says_why_when_the_port_is_taken(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        assert relay_module.start("/nonexistent/proxy.sock", port=taken.getsockname()[1]) is None
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_the_program_wants_its_three_arguments(capsys):
    assert relay_module.main(["relay.py", "/run/isol8-egress/proxy.sock"]) == 2
    assert "usage" in capsys.readouterr().err
