"""The egress gateway against a real origin server on loopback, spoken to over its Unix socket as the relay would."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.gateway import EgressGateway, lane_socket
from sandbox.netfilter import EgressPolicy

NAMES = {"origin.test": ["127.0.0.1"], "other.test": ["127.0.0.1"], "inside.test": ["10.0.0.7"],
         "mixed.test": ["127.0.0.1", "10.0.0.8"]}


class Origin(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        size = int(self.path.rpartition("/")[2] or 0) if self.path.startswith("/bytes/") else 0
        body = b"x" * size if size else f"path={self.path} host={self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


async def fake_resolve(host: str, port: int) -> list[str]:
    if host not in NAMES:
        raise OSError("no such name")
    return NAMES[host]


@pytest.fixture
def gateway() -> Iterator[EgressGateway]:
    # Loopback stands for "the internet" here; 10/8 stays private, as does loopback in "mixed".
    gw = EgressGateway(address_allowed=lambda a: a == "127.0.0.1", resolve=fake_resolve)
    yield gw
    gw.shutdown()


@pytest.fixture
def lane(tmp_path: Path) -> str:
    return lane_socket(str(tmp_path))


def ask(path: str, request: bytes, then: bytes = b"") -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(request)
        if then:
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200"), head
            s.sendall(then)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def get(port: int, host: str = "origin.test", path: str = "/hello") -> bytes:
    head = f"GET http://{host}:{port}{path} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Connection: keep-alive\r\n"
    return (head + "\r\n").encode()


def test_plain_http_and_connect_reach_an_allowed_host_and_are_logged(gateway, lane, origin):
    gateway.begin(lane, tenant="t1", policy=EgressPolicy(whitelist=(r"^origin\.test$",), ports=(origin,)))
    answer = ask(lane, get(origin))
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(f"path=/hello host=origin.test:{origin}".encode())
    tunnelled = ask(lane, f"CONNECT origin.test:{origin} HTTP/1.1\r\n\r\n".encode(),
                    then=b"GET /via-tunnel HTTP/1.0\r\nHost: origin.test\r\n\r\n")
    assert b"path=/via-tunnel" in tunnelled
    log = gateway.end(lane)
    methods = [(e["method"], e["host"], e["port"], e["action"], e["reason"]) for e in log["entries"]]
    assert methods == [("GET", "origin.test", origin, "ALLOW", ""), ("CONNECT", "origin.test", origin, "ALLOW", "")]
    assert log["entries"][0]["path"] == "/hello" and log["entries"][1]["path"] is None
    assert all(e["bytesDown"] > 0 and e["bytesUp"] > 0 for e in log["entries"])
    assert log["totals"]["allowed"] == 2 and log["totals"]["blocked"] == 0
    assert log["totals"]["bytesDown"] == sum(e["bytesDown"] for e in log["entries"])


@pytest.mark.parametrize(("request_bytes", "reason"), [
    (b"CONNECT other.test:{port} HTTP/1.1\r\n\r\n", "not_whitelisted"),
    (b"CONNECT evil.origin.test:{port} HTTP/1.1\r\n\r\n", "blacklisted"),
    (b"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n", "ip_literal"),
    (b"CONNECT [::1]:{port} HTTP/1.1\r\n\r\n", "ip_literal"),
    (b"CONNECT origin.test:22 HTTP/1.1\r\n\r\n", "port_not_allowed"),
    (b"GET https://origin.test/ HTTP/1.1\r\n\r\n", "bad_request"),
    (b"NONSENSE\r\n\r\n", "bad_request"),
])
def test_what_the_policy_refuses_is_refused_with_its_reason(gateway, lane, origin, request_bytes, reason):
    policy = EgressPolicy(whitelist=("origin",), blacklist=(r"^evil\.",), ports=(origin,))
    gateway.begin(lane, tenant="t1", policy=policy)
    answer = ask(lane, request_bytes.replace(b"{port}", str(origin).encode()))
    assert answer.split(b"\r\n")[0] in (b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 400 Bad Request")
    assert f"X-Isol8-Egress: {reason}".encode() in answer
    (entry,) = gateway.end(lane)["entries"]
    assert (entry["action"], entry["reason"]) == ("BLOCK", reason)


def test_names_of_private_addresses_are_refused_even_when_whitelisted(gateway, lane, origin):
    gateway.begin(lane, tenant="t1", policy=EgressPolicy(ports=(origin,)))
    for host in ("inside.test", "mixed.test"):
        assert b"X-Isol8-Egress: private_address" in ask(lane, f"CONNECT {host}:{origin} HTTP/1.1\r\n\r\n".encode())
    assert [e["reason"] for e in gateway.end(lane)["entries"]] == ["private_address", "private_address"]


def test_the_tenant_policy_narrows_a_request_that_whitelists_everything(gateway, lane, origin):
    gateway.begin(lane, tenant="t1", policy=EgressPolicy(whitelist=(".*",), tenant_hosts=("^other",), ports=(origin,)))
    assert b"X-Isol8-Egress: tenant_policy" in ask(lane, get(origin))
    assert ask(lane, get(origin, host="other.test")).startswith(b"HTTP/1.0 200")


def test_a_pathological_pattern_cannot_stall_the_gateway(gateway, lane, origin):
    gateway.begin(lane, tenant="t1", policy=EgressPolicy(whitelist=(r"^(\w+\.?)*\.test-x$",), ports=(origin,)))
    host = "a" * 60 + ".test"
    started = time.monotonic()
    answer = ask(lane, f"CONNECT {host}:{origin} HTTP/1.1\r\n\r\n".encode())
    assert time.monotonic() - started < 2
    assert b"403" in answer.split(b"\r\n")[0]


def test_nothing_passes_between_runs(gateway, lane, origin):
    gateway.begin(lane, tenant="t1", policy=EgressPolicy(ports=(origin,)))
    gateway.end(lane)
    assert b"X-Isol8-Egress: no_run" in ask(lane, get(origin))


def test_connection_and_byte_caps_per_run(gateway, lane, origin):
    gateway.begin(lane, tenant="t1", policy=EgressPolicy(ports=(origin,), max_connections=2))
    assert [ask(lane, get(origin)).split(b" ")[1] for _ in range(3)] == [b"200", b"200", b"429"]
    assert gateway.end(lane)["entries"][-1]["reason"] == "connection_limit"
    gateway.begin(lane, tenant="t1", policy=EgressPolicy(ports=(origin,), max_bytes=100_000))
    answer = ask(lane, get(origin, path="/bytes/1000000"))
    assert len(answer) < 400_000
    (entry,) = gateway.end(lane)["entries"]
    assert entry["reason"] == "byte_limit" and entry["action"] == "ALLOW"


def test_bandwidth_is_capped_per_run(gateway, lane, origin):
    gateway.begin(lane, tenant="t1", policy=EgressPolicy(ports=(origin,), bytes_per_second=1_000_000))
    started = time.monotonic()
    answer = ask(lane, get(origin, path="/bytes/1500000"))
    elapsed = time.monotonic() - started
    assert answer.endswith(b"x" * 1000) and len(answer) > 1_500_000
    assert elapsed >= 1.2, elapsed  # 1.5 MB at 1 MB/s
    gateway.end(lane)


def test_one_tenant_cannot_hold_more_connections_than_its_share(gateway, tmp_path, origin):
    lanes = [lane_socket(str(tmp_path / name)) for name in ("a", "b", "c")]
    for path in lanes:
        Path(path).parent.mkdir()
    policy = EgressPolicy(ports=(origin,), tenant_connections=2)
    gateway.begin(lanes[0], tenant="greedy", policy=policy)
    gateway.begin(lanes[1], tenant="greedy", policy=policy)
    gateway.begin(lanes[2], tenant="polite", policy=policy)
    held = []
    for path in lanes[:2]:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(f"CONNECT origin.test:{origin} HTTP/1.1\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        held.append(s)
    assert b"tenant_connection_limit" in ask(lanes[0], get(origin))
    assert ask(lanes[2], get(origin)).startswith(b"HTTP/1.0 200")  # another tenant is not starved
    for s in held:
        s.close()
    logs = [gateway.end(path) for path in lanes]
    assert logs[0]["totals"] == {**logs[0]["totals"], "allowed": 1, "blocked": 1}


def test_the_end_of_a_run_closes_what_it_left_open(gateway, lane, origin):
    gateway.begin(lane, tenant="t1", policy=EgressPolicy(ports=(origin,)))
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(lane)
    s.sendall(f"CONNECT origin.test:{origin} HTTP/1.1\r\n\r\n".encode())
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    log = gateway.end(lane)
    assert s.recv(100) == b""  # closed by the gateway
    assert log["entries"][0]["action"] == "ALLOW"
    s.close()
