"""The benchmark's own isol8 stack, started the way the test suite starts one.

Everything it starts is its own: a temporary data directory (SQLite database,
logs), a Redis database number, a worker host name and run queue. The host name
labels every container of this stack (``isol8.host=bench-<pid>``), so stopping
can remove exactly those containers and nothing of a development server or a
test run on the same machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
TENANT = "bench"
# Quotas far above anything the benchmark asks for: the figures must show the
# service's speed, not the default tenant quota (5 concurrent, 120 per minute).
TENANT_MAX_CONCURRENT = 10_000
TENANT_MAX_PER_MINUTE = 10_000_000
HEALTH_TIMEOUT = 120.0


def local_redis(port: int, db: int) -> str:
    """A Redis database of the servers scripts/bootstrap.sh started (with their generated password)."""
    password_file = ROOT / "var" / "redis.password"
    auth = f":{password_file.read_text().strip()}@" if password_file.exists() else ""
    return f"redis://{auth}127.0.0.1:{port}/{db}"


DEFAULT_REDIS_URL = local_redis(6379, 14)
DEFAULT_EVENTS_REDIS_URL = local_redis(6380, 14)

STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class BenchEnv:
    """The environment this benchmark process and its children share."""

    host: str
    data_dir: Path
    overrides: dict[str, str]

    @property
    def baseline_host(self) -> str:
        # The bare exec_run container carries its own host label: the stack's
        # worker removes containers of its host that it does not own.
        return f"{self.host}-baseline"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"


def bench_env(*, mode: str, redis_url: str, events_redis_url: str) -> BenchEnv:
    host = f"bench-{os.getpid()}"
    data_dir = Path(tempfile.mkdtemp(prefix="isol8-bench-"))
    (data_dir / "logs").mkdir()
    overrides = {
        "DJANGO_SETTINGS_MODULE": "isol8_site.settings",
        "ISOL8_DATA_DIR": str(data_dir),
        "DATABASE_URL": f"sqlite:///{data_dir / 'db.sqlite3'}",
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "ISOL8_EVENTS_REDIS_URL": events_redis_url,
        "ISOL8_WORKER_HOST": host,
        "ISOL8_RUN_QUEUE": f"isol8.run.{host}",
        "ISOL8_SANDBOX_MODE": mode,
        "PYTHONUNBUFFERED": "1",
        # What --scrape-every scrapes GET /metrics with.
        "ISOL8_METRICS_TOKEN": secrets.token_hex(16),
    }
    return BenchEnv(host=host, data_dir=data_dir, overrides=overrides)


def setup_django(env: BenchEnv) -> None:
    """Load the service's settings in this process with the benchmark's environment.

    The children inherit ``os.environ``, and the baseline container is built
    from the same settings (image names, limits, seccomp profile) as the
    service's containers.
    """
    import django

    os.environ.update(env.overrides)
    django.setup()
    from django.conf import settings

    from sandbox import config

    config.configure(settings.SANDBOX)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def manage(*args: str, capture: bool = True) -> str:
    """Run a management command with the benchmark's environment; its stdout."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=subprocess.PIPE if capture else sys.stderr,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout or ""


def raise_quotas(slug: str) -> None:
    from django.db import connections

    from tenants.models import Tenant

    updated = Tenant.objects.filter(slug=slug).update(
        max_concurrent=TENANT_MAX_CONCURRENT, max_per_minute=TENANT_MAX_PER_MINUTE
    )
    connections.close_all()  # SQLite: hold no connection while the stack writes
    if updated != 1:
        raise RuntimeError(f"tenant {slug!r} not found")


@dataclass
class Stack:
    """uvicorn + a Celery worker (thread pool) + beat, as tests/conftest.py starts them."""

    env: BenchEnv
    worker_threads: int
    runtimes: list[str]
    url: str = ""
    key: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self) -> None:
        manage("migrate", "--noinput", "-v", "0")
        manage("build_images", capture=False)  # a no-op when the images are up to date
        pin_images(self.runtimes)
        manage("tenant_create", TENANT, "--exist-ok", "--name", "Benchmark")
        raise_quotas(TENANT)
        self.key = manage("apikey_create", TENANT, "--name", "bench").strip()
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        from django.conf import settings

        from isol8_site.web import uvicorn_argv

        # As `serve` runs it (ISOL8_WEB_WORKERS uvicorn processes).
        self._spawn("web", uvicorn_argv(port=port, workers=settings.ISOL8_WEB_WORKERS)[1:])
        host = self.env.host
        queues = f"{self.env.overrides['ISOL8_RUN_QUEUE']},isol8.host.{host}"
        self._spawn("worker", [
            "-m", "celery", "-A", "isol8_site", "worker", "-P", "threads",
            "-c", str(self.worker_threads), "-Q", queues,
            "-n", f"worker@{host}", "-l", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ])
        self._spawn("beat", ["-m", "celery", "-A", "isol8_site", "beat", "-l", "INFO",
                             "-s", str(self.env.data_dir / "beat-schedule")])
        self._wait_healthy()

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.env.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=dict(os.environ),
            stdout=log, stderr=subprocess.STDOUT,
        )

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited at start; see {self.env.log_dir}")
            try:
                response = httpx.get(f"{self.url}/health", timeout=2)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"the stack was not healthy after {HEALTH_TIMEOUT:.0f}s: {last}")

    def stop(self) -> None:
        """Stop what this stack started, by PID: web first (no new runs), then worker, beat."""
        for name in ("web", "worker", "beat"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                stop_process(proc)
        for log in self._logs:
            log.close()
        self._logs.clear()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the worker's warm shutdown removes its containers), SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pin_images(runtimes: list[str]) -> None:
    """Fix the baseline's image names now, and check that those images exist.

    Image names carry a hash of images/ that each process computes once. Taken
    right after ``build_images``, they match what was built and what the
    worker starting now uses, even if someone edits images/ during the run.
    """
    from sandbox import images

    missing = images.missing_images(runtimes)
    if missing:
        raise RuntimeError(
            f"sandbox images missing: {', '.join(missing)} (run `python manage.py build_images`)"
        )


def remove_containers(hosts: list[str]) -> int:
    """Remove every container labelled with one of ``hosts``; how many there were."""
    from sandbox import containers

    removed = 0
    for host in hosts:
        for container in containers.list_managed(host=host):
            containers.remove_container(container.id)
            removed += 1
    return removed


def on_own_stack(runtimes: list[str], measure: Callable[[Stack], T]) -> T:
    """``measure(stack)`` on a launcher-mode stack of its own, stopped and its containers removed after."""
    env = bench_env(mode="launcher", redis_url=DEFAULT_REDIS_URL, events_redis_url=DEFAULT_EVENTS_REDIS_URL)
    setup_django(env)
    stack = Stack(env=env, worker_threads=8, runtimes=runtimes)
    try:
        stack.start()
        return measure(stack)
    finally:
        stack.stop()
        remove_containers([env.host])
