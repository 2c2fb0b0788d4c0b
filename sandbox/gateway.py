"""The egress gateway: the filtering HTTP/CONNECT proxy of ``network: "filtered"`` runs.

A filtered sandbox has no network at all (Docker's ``none``: only ``lo``). Its
one way out is a Unix socket of this host, bind-mounted into the container;
the launcher's relay (images/common/isol8_launcher/relay.py) turns the
sandbox's ``127.0.0.1:3128`` into connections on it. So what the code can
reach is decided here, for each connection, and by construction nothing
else is reachable: no other address, no DNS, no IPv6, no host port.

Each sandbox has its own socket (a *lane*): the gateway knows whose
connection it is without trusting anything the sandbox says. A lane lets
connections through only while a run is in progress (``begin`` … ``end``),
under that run's EgressPolicy (sandbox/netfilter.py); ``end`` closes what the
run left open and hands back its ledger (every attempt, its verdict and
bytes). The gateway resolves host names itself and connects only to public
addresses (no private, loopback, link-local/metadata or reserved ones), to
the address it checked (no second lookup to rebind).

One asyncio loop in a thread per worker process serves every lane;
``begin``/``end``/``close`` are called from the worker's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sandbox.config import current
from sandbox.netfilter import EgressPolicy, address_allowed, host_verdict, is_ip_literal, normalize_host

logger = logging.getLogger(__name__)

T = TypeVar("T")

SOCKET_NAME = "proxy.sock"
MOUNT_DIR = "/run/isol8-egress"  # where the lane's directory appears in the sandbox
RELAY_PORT = 3128  # the relay's port on the sandbox's loopback
HEADER_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
RESOLVE_TIMEOUT = 5.0
MAX_LINE = 8192
MAX_HEADERS = 100
CHUNK = 65536
LOG_CAP = 500  # entries kept per run; the totals count every attempt
HOP_HEADERS = {"proxy-connection", "proxy-authorization", "connection", "keep-alive"}

Resolver = Callable[[str, int], Awaitable[list[str]]]


def proxy_environment() -> dict[str, str]:
    """What a filtered run's programs see: the standard proxy variables, in both spellings, for every client."""
    url = f"http://127.0.0.1:{RELAY_PORT}"
    env = {}
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = url
    env["no_proxy"] = env["NO_PROXY"] = ""
    env["npm_config_proxy"] = env["npm_config_https_proxy"] = url
    env["NODE_USE_ENV_PROXY"] = "1"  # Node's own fetch honours the variables only when asked
    env["NODE_OPTIONS"] = "--disable-warning=UNDICI-EHPA"  # ... and warns that it is experimental
    return env


@dataclass
class Ledger:
    """One run's attempts (capped) and totals."""

    policy: EgressPolicy
    tenant: str
    started: float = field(default_factory=time.monotonic)
    entries: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0  # let through
    blocked: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    dropped: int = 0
    open: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def bytes_total(self) -> int:
        return self.bytes_up + self.bytes_down

    def record(self, entry: dict[str, Any]) -> None:
        if entry["action"] == "BLOCK":
            self.blocked += 1
        if len(self.entries) < LOG_CAP:
            self.entries.append(entry)
        else:
            self.dropped += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": list(self.entries),
            "totals": {
                "connections": self.connections + self.blocked,
                "allowed": self.connections,
                "blocked": self.blocked,
                "bytesUp": self.bytes_up,
                "bytesDown": self.bytes_down,
                "dropped": self.dropped,
            },
        }


@dataclass
class _Lane:
    path: str
    server: asyncio.AbstractServer
    ledger: Ledger | None = None


class _RefusedError(Exception):
    def __init__(self, reason: str, status: str = "403 Forbidden") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass
class _Request:
    method: str
    host: str
    port: int
    path: str | None  # None for CONNECT
    head: bytes = b""  # what to send the origin first (plain HTTP: the rewritten request head)


async def _system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class EgressGateway:
    """Every filtered sandbox's lane on this worker host, served by one loop thread."""

    def __init__(
        self,
        *,
        address_allowed: Callable[[str], bool] = address_allowed,
        resolve: Resolver = _system_resolve,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.address_allowed = address_allowed
        self.resolve = resolve
        self.connect_timeout = connect_timeout
        self._lanes: dict[str, _Lane] = {}
        self._tenant_open: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="egress-gateway", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ worker side

    def _call(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def begin(self, socket_path: str, *, tenant: str, policy: EgressPolicy) -> None:
        """A run starts in the sandbox of this lane: listen (if not yet) and let its connections through."""
        self._call(self._begin(socket_path, tenant, policy))

    def end(self, socket_path: str) -> dict[str, Any]:
        """The run is over: close what it left open; its ledger as JSON (entries and totals)."""
        return self._call(self._end(socket_path))

    def close(self, socket_path: str) -> None:
        """The sandbox is gone: stop listening on its socket."""
        with contextlib.suppress(RuntimeError, TimeoutError):
            self._call(self._close(socket_path), timeout=10)

    def lanes(self) -> int:
        return len(self._lanes)

    def shutdown(self) -> None:
        for path in list(self._lanes):
            self.close(path)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # ------------------------------------------------------------ loop side

    async def _begin(self, path: str, tenant: str, policy: EgressPolicy) -> None:
        lane = self._lanes.get(path)
        if lane is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            server = await asyncio.start_unix_server(lambda r, w: self._serve(path, r, w), path=path)
            os.chmod(path, 0o666)  # the sandbox's relay runs as another uid than this worker
            lane = self._lanes[path] = _Lane(path=path, server=server)
        if lane.ledger is not None:
            await self._finish_ledger(lane)
        lane.ledger = Ledger(policy=policy, tenant=tenant)

    async def _end(self, path: str) -> dict[str, Any]:
        lane = self._lanes.get(path)
        if lane is None or lane.ledger is None:
            return Ledger(policy=EgressPolicy(), tenant="").to_json()
        ledger = await self._finish_ledger(lane)
        return ledger.to_json()

    async def _finish_ledger(self, lane: _Lane) -> Ledger:
        ledger, lane.ledger = lane.ledger, None
        assert ledger is not None
        for writer in list(ledger.open):
            writer.close()
        # Let the connections' handlers record their entries (they see the close at once).
        for _ in range(50):
            if not ledger.open:
                break
            await asyncio.sleep(0.01)
        return ledger

    async def _close(self, path: str) -> None:
        lane = self._lanes.pop(path, None)
        if lane is None:
            return
        if lane.ledger is not None:
            await self._finish_ledger(lane)
        lane.server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    async def _serve(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lane = self._lanes.get(path)
        ledger = lane.ledger if lane is not None else None
        started = time.monotonic()
        entry: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "method": "", "host": "", "port": 0, "path": None, "action": "BLOCK", "reason": "",
            "bytesUp": 0, "bytesDown": 0, "durationMs": 0,
        }
        if ledger is None:
            # Between runs (or after its run ended) a sandbox reaches nothing; nobody to log it for.
            with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError, ValueError, OSError):
                await asyncio.wait_for(_read_request(reader), 1.0)
            await _answer(writer, "403 Forbidden", "no_run")
            return
        ledger.open.add(writer)
        counted_tenant = False
        try:
            try:
                request = await asyncio.wait_for(_read_request(reader), HEADER_TIMEOUT)
                entry.update(method=request.method, host=request.host, port=request.port, path=request.path)
                self._check(ledger, request)
                if self._tenant_open.get(ledger.tenant, 0) >= ledger.policy.tenant_connections:
                    raise _RefusedError("tenant_connection_limit", "429 Too Many Requests")
                self._tenant_open[ledger.tenant] = self._tenant_open.get(ledger.tenant, 0) + 1
                counted_tenant = True
                upstream = await self._connect(request)
            except _RefusedError as refused:
                entry["reason"] = refused.reason
                if refused.reason == "connect_failed":
                    entry["action"] = "ALLOW"
                    ledger.connections += 1
                await _answer(writer, refused.status, refused.reason)
                return
            except (TimeoutError, asyncio.IncompleteReadError, ValueError, OSError):
                entry["reason"] = "bad_request"
                await _answer(writer, "400 Bad Request", "bad_request")
                return
            entry["action"] = "ALLOW"
            ledger.connections += 1
            up_reader, up_writer = upstream
            ledger.open.add(up_writer)
            try:
                if request.path is None:
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    up_writer.write(request.head)
                    entry["bytesUp"] += len(request.head)
                    ledger.bytes_up += len(request.head)
                cut = await _tunnel(ledger, entry, reader, writer, up_reader, up_writer)
                if cut:
                    entry["reason"] = "byte_limit"
            finally:
                ledger.open.discard(up_writer)
                up_writer.close()
        finally:
            if counted_tenant:
                self._tenant_open[ledger.tenant] -= 1
            ledger.open.discard(writer)
            writer.close()
            entry["durationMs"] = int((time.monotonic() - started) * 1000)
            ledger.record(entry)

    def _check(self, ledger: Ledger, request: _Request) -> None:
        """The policy's verdict on a request (raises _RefusedError with the reason)."""
        policy = ledger.policy
        if is_ip_literal(request.host):
            raise _RefusedError("ip_literal")
        if normalize_host(request.host) is None:
            raise _RefusedError("bad_request", "400 Bad Request")
        if request.port not in policy.ports:
            raise _RefusedError("port_not_allowed")
        verdict = host_verdict(policy, request.host)
        if not verdict.allowed:
            raise _RefusedError(verdict.reason)
        if ledger.connections >= policy.max_connections:
            raise _RefusedError("connection_limit", "429 Too Many Requests")
        if ledger.bytes_total >= policy.max_bytes:
            raise _RefusedError("byte_limit", "429 Too Many Requests")

    async def _connect(self, request: _Request) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            addresses = await asyncio.wait_for(self.resolve(request.host, request.port), RESOLVE_TIMEOUT)
        except (OSError, TimeoutError, UnicodeError):
            raise _RefusedError("connect_failed", "502 Bad Gateway") from None
        if not addresses:
            raise _RefusedError("connect_failed", "502 Bad Gateway")
        if not all(self.address_allowed(a) for a in addresses):
            # A name pointing into this host's or a private network (or answering with one
            # among public ones, to rebind later): never reached through the gateway.
            raise _RefusedError("private_address")
        for address in addresses[:2]:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(address, request.port, limit=CHUNK), self.connect_timeout
                )
            except (OSError, TimeoutError):
                continue
        raise _RefusedError("connect_failed", "502 Bad Gateway")


async def _answer(writer: asyncio.StreamWriter, status: str, reason: str) -> None:
    body = f"isol8 egress: {reason}\n".encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"X-Isol8-Egress: {reason}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        writer.write(head.encode() + body)
        await asyncio.wait_for(writer.drain(), 5)
    writer.close()


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readuntil(b"\n")
    if len(line) > MAX_LINE:
        raise ValueError("line too long")
    return line


async def _read_request(reader: asyncio.StreamReader) -> _Request:
    """The request line and headers of a proxy request: CONNECT host:port, or a method with an http:// URL."""
    request_line = (await _read_line(reader)).decode("latin-1").strip()
    headers: list[tuple[str, str]] = []
    for _ in range(MAX_HEADERS):
        line = (await _read_line(reader)).decode("latin-1")
        if line in ("\r\n", "\n"):
            break
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError("bad header")
        headers.append((name.strip(), value.strip()))
    else:
        raise ValueError("too many headers")
    method, target, version = request_line.split(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError("not HTTP/1")
    if method == "CONNECT":
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError("bad CONNECT target")
        return _Request(method=method, host=host.strip("[]").lower(), port=int(port), path=None)
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ValueError("a proxy request names an http:// URL (https goes through CONNECT)")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    kept = [(n, v) for n, v in headers if n.lower() not in HOP_HEADERS and n.lower() != "host"]
    host_header = url.netloc.rpartition("@")[2]
    head = f"{method} {path} HTTP/1.1\r\nHost: {host_header}\r\n"
    head += "".join(f"{n}: {v}\r\n" for n, v in kept) + "Connection: close\r\n\r\n"
    return _Request(method=method, host=url.hostname.lower(), port=url.port or 80, path=path,
                    head=head.encode("latin-1"))


async def _tunnel(
    ledger: Ledger,
    entry: dict[str, Any],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> bool:
    """Pump both ways, counting bytes against the run's caps; True when the byte cap cut it."""
    cut = False

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, key: str) -> None:
        nonlocal cut
        try:
            while True:
                data = await source.read(CHUNK)
                if not data:
                    break
                sink.write(data)
                await sink.drain()
                entry[key] += len(data)
                if key == "bytesUp":
                    ledger.bytes_up += len(data)
                else:
                    ledger.bytes_down += len(data)
                if ledger.bytes_total > ledger.policy.max_bytes:
                    cut = True
                    break
                rate = ledger.policy.bytes_per_second
                if rate:
                    ahead = ledger.bytes_total / rate - (time.monotonic() - ledger.started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            if sink.can_write_eof():
                sink.write_eof()
        except (OSError, RuntimeError):
            pass
        if cut:
            writer.close()
            up_writer.close()

    await asyncio.gather(pump(reader, up_writer, "bytesUp"), pump(up_reader, writer, "bytesDown"))
    return cut


_default: EgressGateway | None = None
_default_lock = threading.Lock()


def host_addresses() -> frozenset[str]:
    """Every address of this host's interfaces (IPv4 from the kernel's local routes, IPv6 from if_inet6)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for previous, line in itertools.pairwise(lines):
            if "/32 host LOCAL" in line:
                found.add(previous.strip().removeprefix("|-- "))
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(str(ipaddress.ip_address(":".join(raw[i:i + 4] for i in range(0, 32, 4)))))
    return frozenset(found)


class HostAddressCheck:
    """address_allowed for this host: its own addresses (re-read each minute) and the permitted networks."""

    def __init__(self, permitted: tuple[str, ...] = ()) -> None:
        self.permitted = tuple(ipaddress.ip_network(n, strict=False) for n in permitted)
        self._own = host_addresses()
        self._read = time.monotonic()

    def __call__(self, address: str) -> bool:
        if time.monotonic() - self._read > 60:
            self._own, self._read = host_addresses(), time.monotonic()
        return address_allowed(address, own=self._own, permitted=self.permitted)


def default_gateway() -> EgressGateway:
    """This process's gateway (started at first use: only worker processes run filtered sandboxes)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = EgressGateway(address_allowed=HostAddressCheck(current().egress_permit_networks))
        return _default


def lane_socket(lane_dir: str) -> str:
    return os.path.join(lane_dir, SOCKET_NAME)
