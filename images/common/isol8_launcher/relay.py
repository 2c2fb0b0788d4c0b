"""The egress relay of ``network: "filtered"`` sandboxes: ``python3 -I relay.py SOCKET FD PARENT``.

A filtered sandbox has no network (only ``lo``). Its one way out is the Unix
socket of the host's egress gateway, bind-mounted read-only as SOCKET
(/run/isol8-egress/proxy.sock), and its programs are told
``HTTP_PROXY=http://127.0.0.1:3128``. The relay turns each TCP connection to
that address into a new connection on SOCKET and copies the bytes both ways,
unchanged: what may be reached is decided by the gateway, for each connection;
the relay knows nothing of HTTP.

The launcher (``serve`` or ``keepalive`` with ``--egress SOCKET``) starts it
with ``start``, and does not wait for it. It binds 127.0.0.1:3128 itself and
hands the listening socket (FD) to this program, run as a file next to the
package like forkserver.py: a connection made before the relay is up waits in
the listen queue instead of being refused. As root, the launcher has the
relay become uid and gid 65534 with no supplementary group before it executes
anything: the relay is neither root nor the code user, whom the kernel does
not let signal or ptrace it and whose reset (kill every process of the code
uid) does not reach it. It ends with the launcher (PARENT): PR_SET_PDEATHSIG,
and its parent's pid checked every PARENT_POLL seconds.

One thread and one selectors loop (a thread per connection would count
against the sandbox's pids limit), at most MAX_CONNECTIONS connections (more
are accepted and closed at once). Each direction of a connection holds at
most BUFFER bytes, and a side is not read while the buffer towards its peer is
full: memory stays bounded and a slow reader slows its writer down. When a
side ends (EOF), its peer is shut down for writing once the bytes read before
are written; a connection is closed when both directions ended, or at the
first error of either side (a reset). A client cannot make the relay stop.

Standard library only, and no import of the package: this file runs as a
program; the launcher and the tests import it as isol8_launcher.relay.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

PORT = 3128
BUFFER = 64 * 1024  # bytes held, at most, for each direction of a connection
MAX_CONNECTIONS = 256
RELAY_UID = 65534  # nobody: not root, not the code user (the relay's gid too)
PARENT_POLL = 1.0  # seconds between two checks that the launcher is still there
ACCEPT_BATCH = 64  # connections accepted in a row before the others get a turn
ACCEPT_PAUSE = 0.1  # seconds without accepting after running out of descriptors (unless one is freed)
LISTEN_BACKLOG = 128
PR_SET_PDEATHSIG = 1
# The relay's program, run as a file (root-owned, like the whole package).
RELAY_PROGRAM = os.path.abspath(__file__)

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


def warn(message: str) -> None:
    print(f"isol8 egress relay: {message}", file=sys.stderr, flush=True)


def listen(port: int = PORT) -> socket.socket:
    """The relay's listening socket: TCP on 127.0.0.1:``port``."""
    return socket.create_server(("127.0.0.1", port), backlog=LISTEN_BACKLOG)


def start(socket_path: str, *, port: int = PORT, python: str = sys.executable) -> subprocess.Popen[bytes] | None:
    """In the launcher: listen on 127.0.0.1:``port`` and start the relay program on it; do not wait for it.

    The relay's stdin and stdout are /dev/null (the launcher's are the
    worker's request and frame streams); its stderr is the launcher's. It gets
    no other descriptor of the launcher, and keeps its own sockets to itself
    (it is a process of its own, and they are close-on-exec). As root the
    relay becomes RELAY_UID, in the child, before its program is executed.
    Returns None, having said why on stderr, when the relay cannot be
    started: the sandbox then has no way out (its connections are refused).
    """
    try:
        listener = listen(port)
    except OSError as exc:
        warn(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}")
        return None
    root = os.getuid() == 0
    with listener:
        try:
            return subprocess.Popen(
                [python, "-I", RELAY_PROGRAM, socket_path, str(listener.fileno()), str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(listener.fileno(),),
                cwd="/",
                env={},
                user=RELAY_UID if root else None,
                group=RELAY_UID if root else None,
                extra_groups=[] if root else None,
            )
        except (OSError, subprocess.SubprocessError) as exc:  # no process slot left, no python
            warn(f"cannot start: {exc}")
            return None


def die_with_parent(parent: int) -> bool:
    """Be killed when the launcher ends (set after the uid change, which clears it); False if it already did."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl: the loop's check of the parent's pid remains
    return os.getppid() == parent


class Pair:
    """One relayed connection: ``socks`` is (the client's TCP socket, its Unix socket to the gateway).

    Direction ``i`` goes from ``socks[i]`` to the other side: ``bufs[i]`` holds
    what was read from ``socks[i]`` and not yet written, ``eof[i]`` says that
    ``socks[i]`` ended, and ``shut[1 - i]`` that the direction is over (the
    other side was shut down for writing). ``events[i]`` is what the selector
    watches ``socks[i]`` for (0: not registered).
    """

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.socks = (client, upstream)
        self.bufs = (bytearray(), bytearray())
        self.eof = [False, False]
        self.shut = [False, False]
        self.events = [0, 0]
        self.closed = False

    def wanted(self, i: int) -> int:
        """The events ``socks[i]`` is to be watched for: readable while its buffer has room, writable while
        the other side's buffer has bytes for it."""
        events = 0
        if not self.eof[i] and len(self.bufs[i]) < BUFFER:
            events |= READ
        if self.bufs[1 - i]:
            events |= WRITE
        return events

    def done(self) -> bool:
        return self.shut[0] and self.shut[1]

    def receive(self, i: int) -> None:
        """Read what ``socks[i]`` has (as much as its buffer has room for); b"" is its EOF."""
        room = BUFFER - len(self.bufs[i])
        if not room:
            return
        try:
            data = self.socks[i].recv(room)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            self.bufs[i].extend(data)
        else:
            self.eof[i] = True

    def flush(self, i: int) -> None:
        """Write direction ``i``'s bytes to the other side, as much as it takes; once they are all written
        after ``socks[i]``'s EOF, shut the other side down for writing."""
        buf, peer = self.bufs[i], self.socks[1 - i]
        if buf:
            try:
                sent = peer.send(buf, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return
            del buf[:sent]
        if not buf and self.eof[i] and not self.shut[1 - i]:
            peer.shutdown(socket.SHUT_WR)
            self.shut[1 - i] = True


class Relay:
    """Relays the connections accepted on ``listener`` to new connections on the Unix socket ``socket_path``.

    ``step`` serves what is ready (waiting up to ``timeout`` seconds);
    ``serve`` steps until the parent is gone.
    """

    def __init__(self, listener: socket.socket, socket_path: str, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.listener = listener
        self.socket_path = socket_path
        self.max_connections = max_connections
        self.pairs: set[Pair] = set()
        self.sel = selectors.DefaultSelector()
        listener.setblocking(False)
        self.sel.register(listener, READ, None)
        self.accepting = True
        self.resume_at = 0.0  # when accepting, paused, starts again

    def serve(self, parent: int) -> None:
        while os.getppid() == parent:
            self.step(PARENT_POLL)

    def step(self, timeout: float) -> None:
        if not self.accepting:
            wait = self.resume_at - time.monotonic()
            if wait > 0:
                timeout = min(timeout, wait)
            else:
                self.sel.register(self.listener, READ, None)
                self.accepting = True
        for key, events in self.sel.select(timeout):
            if key.data is None:
                self.accept()
                continue
            pair, i = key.data
            if not pair.closed:  # an earlier event of this round may have closed it
                self.pump(pair, i, events)

    def accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                client, _ = self.listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener stays readable, so pause
                self.sel.unregister(self.listener)
                self.accepting = False
                self.resume_at = time.monotonic() + ACCEPT_PAUSE
                return
            upstream = self.connect() if len(self.pairs) < self.max_connections else None
            if upstream is None:
                client.close()  # over the limit, or the gateway does not listen: the client sees it at once
                continue
            try:
                client.setblocking(False)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # already reset
                client.close()
                upstream.close()
                continue
            pair = Pair(client, upstream)
            self.pairs.add(pair)
            self.watch(pair)

    def connect(self) -> socket.socket | None:
        """A new connection to the gateway; None when it cannot be made now (ENOENT, ECONNREFUSED, EAGAIN)."""
        try:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            return None
        try:
            upstream.setblocking(False)
            upstream.connect(self.socket_path)  # a Unix socket's connect completes at once, or fails
        except OSError:
            upstream.close()
            return None
        return upstream

    def pump(self, pair: Pair, i: int, events: int) -> None:
        """``socks[i]`` is ready: read from it and write what it read, write to it; then watch what is left."""
        try:
            if events & READ:
                pair.receive(i)
                pair.flush(i)
            if events & WRITE:
                pair.flush(1 - i)
        except OSError:  # a reset, a broken pipe: the connection is over
            self.close(pair)
            return
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not end the others
            warn(f"dropped a connection: {type(exc).__name__}: {exc}")
            self.close(pair)
            return
        if pair.done():
            self.close(pair)
        else:
            self.watch(pair)

    def watch(self, pair: Pair) -> None:
        for i, sock in enumerate(pair.socks):
            wanted = pair.wanted(i)
            if wanted == pair.events[i]:
                continue
            if not pair.events[i]:
                self.sel.register(sock, wanted, (pair, i))
            elif not wanted:
                self.sel.unregister(sock)
            else:
                self.sel.modify(sock, wanted, (pair, i))
            pair.events[i] = wanted

    def close(self, pair: Pair) -> None:
        for i, sock in enumerate(pair.socks):
            if pair.events[i]:
                self.sel.unregister(sock)
            sock.close()
        pair.closed = True
        self.pairs.discard(pair)
        self.resume_at = 0.0  # descriptors were freed: accept again (if paused) at the next step

    def close_all(self) -> None:
        """Close every connection, the listening socket and the selector."""
        for pair in list(self.pairs):
            self.close(pair)
        self.sel.close()
        self.listener.close()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        warn("usage: relay.py SOCKET FD PARENT")
        return 2
    socket_path, fd, parent = argv[1], int(argv[2]), int(argv[3])
    if os.getuid() == 0 or os.geteuid() == 0:
        warn("refusing to run as root")
        return 2
    if not die_with_parent(parent):
        return 0
    os.set_inheritable(fd, False)
    Relay(socket.socket(fileno=fd), socket_path).serve(parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
