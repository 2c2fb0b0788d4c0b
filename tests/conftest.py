"""Fixtures: the real stack (uvicorn + a Celery worker + Redis + Docker), tenants, keys.

The ``stack`` fixture starts the web server and a worker as separate processes
on the test database file, once per sandbox mode: every test that uses it runs
against the launcher path and again against the ``docker exec`` fallback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.core.management import call_command

from isol8_site.web import uvicorn_argv

ROOT = Path(__file__).resolve().parent.parent
MODES = [m for m in os.environ.get("ISOL8_TEST_MODES", "launcher,exec").split(",") if m]
# For tests of the web tier (negotiation, admin pages, browsers): the sandbox mode
# changes nothing there, so they run against the first mode's stack only.
one_mode = pytest.mark.parametrize("stack", MODES[:1], indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests of the stack use the test database; transactional ones flush every table but content types.

    A test that only asks for the stack still needs the test database made
    (pytest-django makes it only for tests that say they use it), and what it
    writes must be visible to the stack's processes: it is marked
    transactional. The stack's web processes outlive single tests and cache
    content type ids (the admin's change log refers to them); a flush that
    re-created those rows under new ids would leave the admin writing
    dangling references.
    """
    kept = "django.contrib.contenttypes"
    apps = [app for app in settings.INSTALLED_APPS if app != kept]
    for item in items:
        names = getattr(item, "fixturenames", ())
        if ("transactional_db" in names or "stack" in names) and item.get_closest_marker("django_db") is None:
            item.add_marker(pytest.mark.django_db(transaction=True, available_apps=apps))


@pytest.fixture(scope="session", autouse=True)
def _sandbox_configured() -> None:
    """The engine configured as the worker configures it (tests inspect and clean up containers)."""
    from sandbox import config

    config.configure(settings.SANDBOX)


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, step: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something true (that value) or ``timeout`` passes (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(
    url: str, *, timeout: float = 60, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Wait until ``GET {url}/health`` answers 200.

    With ``proc`` (the server process) it fails at once when that exits,
    showing ``log`` (its output file) or its piped output.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            output = log.read_text() if log else (proc.communicate()[0] or b"").decode()
            raise AssertionError(f"the server at {url} exited ({proc.returncode}): {output}")
        try:
            response = httpx.get(f"{url}/health", timeout=2)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    detail = log.read_text() if log else last
    raise AssertionError(f"{url} not healthy after {timeout}s: {detail}")


@dataclass
class Stack:
    """A running service: its URL, its processes, and helpers to call it."""

    url: str
    mode: str
    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def start_worker(self, name: str = "worker", **extra_env: str) -> subprocess.Popen[bytes]:
        env = {**self.env, **extra_env}
        host = env["ISOL8_WORKER_HOST"]
        queues = f"{env['ISOL8_RUN_QUEUE']},isol8.host.{host},{settings.ISOL8_WEBHOOK_QUEUE}"
        log = open(self.log_dir / f"{name}-{self.mode}.log", "ab")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "isol8_site", "worker", "-P", "threads",
             "-c", str(settings.ISOL8_WORKER_CONCURRENCY), "-Q", queues, "-n", f"{name}@{host}", "-l", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def wait_healthy(self, timeout: float = 60) -> None:
        wait_healthy(self.url, timeout=timeout)


def test_database_url() -> str:
    """The test database (pytest-django's, made by now) as a URL for the stack's own processes."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture(scope="session", params=MODES)
def stack(request: pytest.FixtureRequest, django_db_setup: Any, django_db_blocker: Any) -> Iterator[Stack]:
    from sandbox import containers, images

    missing = images.missing_images(settings.SANDBOX.runtimes)
    if missing:
        pytest.fail(f"sandbox images missing: {missing}; run `python manage.py build_images`")
    mode = request.param
    # The admin's styles and scripts, as `make run` serves them (quick when unchanged).
    call_command("collectstatic", interactive=False, verbosity=0)
    port = free_port()
    log_dir = Path(settings.DATA_DIR) / "logs"
    log_dir.mkdir(exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"},
        "DATABASE_URL": test_database_url(),
        "ISOL8_SANDBOX_MODE": mode,
        "PYTHONUNBUFFERED": "1",
    }
    stack = Stack(url=f"http://127.0.0.1:{port}", mode=mode, env=env, log_dir=log_dir)
    web_log = open(log_dir / f"web-{mode}.log", "ab")  # noqa: SIM115
    # As `serve` runs it: several web processes (streams then cross processes).
    stack.procs["web"] = subprocess.Popen(
        uvicorn_argv(port=port, workers=settings.ISOL8_WEB_WORKERS),
        cwd=ROOT, env=env, stdout=web_log, stderr=subprocess.STDOUT,
    )
    stack.start_worker()
    beat_log = open(log_dir / f"beat-{mode}.log", "ab")  # noqa: SIM115
    stack.procs["beat"] = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "isol8_site", "beat", "-l", "INFO",
         "-s", str(log_dir / f"beat-schedule-{mode}")],
        cwd=ROOT, env=env, stdout=beat_log, stderr=subprocess.STDOUT,
    )
    try:
        stack.wait_healthy()
        yield stack
    finally:
        for name in list(stack.procs):
            stack.stop(name)
    leftovers = containers.list_managed(host=env["ISOL8_WORKER_HOST"])
    for container in leftovers:
        containers.remove_container(container.id)
    assert not leftovers, f"containers left behind by the {mode} stack: {leftovers}"


@pytest.fixture
def tenant(transactional_db: Any) -> Any:
    from tenants.services import tenant_create

    return tenant_create(slug=f"t-{os.urandom(4).hex()}", name="Test tenant")


def make_key(tenant: Any, **kwargs: Any) -> str:
    from tenants.services import apikey_create

    return apikey_create(tenant=tenant, **kwargs).plaintext


@pytest.fixture
def api_key(tenant: Any) -> str:
    return make_key(tenant)


@pytest.fixture
def api(stack: Stack, api_key: str) -> Iterator[httpx.Client]:
    with stack.client(api_key) as client:
        yield client


def run(api: httpx.Client, request: dict[str, Any], options: dict[str, Any] | None = None,
        **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"request": request, **extra}
    if options is not None:
        body["options"] = options
    return api.post("/execute", json=body)
