"""A private isol8 for fault tests: its own two Redis servers, database, worker host and `serve`.

Fault tests kill the worker and restart Redis; they must not do that to the
shared test stack. Everything here is started by the test and ended by PID.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sandbox import containers
from tests.conftest import ROOT, free_port, wait_healthy


@dataclass
class RedisServer:
    name: str
    port: int
    password: str
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes"] if self.name == "main" else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", self.password,
             "--dir", str(self.data_dir), "--save", "", *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True,
                                  env={**os.environ, "REDISCLI_AUTH": self.password})
            if "PONG" in ping.stdout:
                return
            time.sleep(0.05)
        raise AssertionError(f"redis {self.name} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        self.proc = None

    def restart(self, down_seconds: float = 1.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


@dataclass
class Cluster:
    url: str
    key: str
    host: str
    env: dict[str, str]
    log: Path
    redis: dict[str, RedisServer]
    serve: subprocess.Popen[bytes] | None = None
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, timeout: float = 120) -> httpx.Client:
        client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=timeout)
        self.clients.append(client)
        return client

    def worker_pids(self) -> list[int]:
        """The Celery worker processes `serve` runs (its child with `worker` in its command line)."""
        assert self.serve is not None
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.serve.pid and b"worker" in cmdline and b"celery" in b" ".join(cmdline):
                found.append(int(name))
        return found

    def containers(self) -> list[containers.ManagedContainer]:
        return containers.list_managed(host=self.host)


@contextmanager
def private_cluster(tmp_path: Path, base_env: dict[str, str], **extra: str) -> Iterator[Cluster]:
    password = secrets.token_hex(16)
    redis = {name: RedisServer(name, free_port(), password, tmp_path / f"redis-{name}") for name in ("main", "events")}
    host = f"fault-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    port = free_port()
    key = "fault-master-" + secrets.token_hex(12)
    env = {
        **base_env,
        "REDIS_URL": redis["main"].url,
        "CELERY_BROKER_URL": redis["main"].url,
        "ISOL8_EVENTS_REDIS_URL": redis["events"].url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'fault.sqlite3'}",
        "ISOL8_DATA_DIR": str(tmp_path / "data"),
        "ISOL8_WORKER_HOST": host,
        "ISOL8_RUN_QUEUE": f"isol8.run.{host}",
        "ISOL8_API_KEY": key,
        "ISOL8_WEB_WORKERS": "2",
        "PORT": "",
        **extra,
    }
    log = tmp_path / "serve.log"
    cluster = Cluster(url=f"http://127.0.0.1:{port}", key=key, host=host, env=env, log=log, redis=redis)
    for server in redis.values():
        server.start()
    try:
        with log.open("ab") as out:
            cluster.serve = subprocess.Popen(
                [sys.executable, "manage.py", "serve", "--port", str(port)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        wait_healthy(cluster.url, timeout=120, proc=cluster.serve, log=log)
        yield cluster
    finally:
        for client in cluster.clients:
            client.close()
        if cluster.serve is not None and cluster.serve.poll() is None:
            cluster.serve.send_signal(signal.SIGTERM)
            try:
                cluster.serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                cluster.serve.kill()
                cluster.serve.wait()
        for server in redis.values():
            server.stop()
        for container in containers.list_managed(host=host):
            containers.remove_container(container.id)
