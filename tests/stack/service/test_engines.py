"""Two independent Docker engines behind one service (issue 19, points 2 and 3).

Engine A is the machine's dockerd, with the stack's worker. Engine B is a
second dockerd (scripts/docker-engine.sh: its own data root, socket,
containerd and network namespace) with a worker of its own pointed at it by
DOCKER_HOST. One Redis, one database, one web tier. The tests then spread
runs over both, place sessions by free capacity, drain a host, and kill
engine B and bring it back.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
from django.conf import settings

from executions.models import Execution
from isol8_site import wire
from isol8_site.celery import app as celery_app
from sessions_app.models import Session, WorkerHost
from tests.conftest import ROOT, Stack, one_mode, run

pytestmark = [pytest.mark.stack, one_mode]

ENGINE = "b"
SCRIPT = ROOT / "scripts" / "docker-engine.sh"


def engine(action: str) -> str:
    done = subprocess.run([str(SCRIPT), action, ENGINE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout} s: {what}")


class TwoEngines:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.host_a = stack.env["ISOL8_WORKER_HOST"]
        self.host_b = f"{self.host_a}-engine-{ENGINE}"
        self.socket = f"unix:///run/isol8-docker-{ENGINE}.sock"

    def start_worker_b(self) -> None:
        self.stack.start_worker("worker-engine-b", ISOL8_WORKER_HOST=self.host_b, DOCKER_HOST=self.socket)
        wait_for(lambda: wire.host_usable(self.host_b, wire.worker_beats()), 90, "worker B beats with Docker up")

    def consumes_shared_queue(self) -> bool:
        """Whether worker B consumes the shared run queue now (its own answer, by remote control)."""
        answers = celery_app.control.inspect(destination=[f"worker-engine-b@{self.host_b}"], timeout=5).active_queues()
        queues = [q["name"] for q in (answers or {}).get(f"worker-engine-b@{self.host_b}", [])]
        return not answers or settings.ISOL8_RUN_QUEUE in queues

    def docker_b(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.socket, timeout=10)

    def containers_b(self) -> list[Any]:
        client = self.docker_b()
        try:
            # sparse: no inspect per container (one may go away while listed)
            return client.containers.list(all=True, sparse=True, filters={"label": f"isol8.host={self.host_b}"})
        finally:
            client.close()


@pytest.fixture(scope="module")
def engines(stack: Stack) -> Iterator[TwoEngines]:
    engine("start")
    two = TwoEngines(stack)
    two.start_worker_b()
    try:
        yield two
    finally:
        two.stack.stop("worker-engine-b")
        engine("start")  # back up if a test left it down, to clean it
        for container in two.containers_b():
            container.remove(force=True)
        engine("stop")


def new_session_on(api: httpx.Client, engines: TwoEngines, host: str, name: str, code: str) -> httpx.Response:
    """A new session placed on ``host``: the other host drains while it is made.

    (Placement by free room alone depends on what earlier tests left in each
    host's pool; its rule is tested with exact numbers in tests/api/test_placement.py.)
    """
    other = engines.host_b if host == engines.host_a else engines.host_a
    WorkerHost.objects.update_or_create(name=other, defaults={"draining": True})
    try:
        return run(api, {"runtime": "bash", "code": code}, sessionId=name)
    finally:
        WorkerHost.objects.filter(name=other).update(draining=False)


@pytest.fixture
def open_tenant(tenant: Any) -> Any:
    tenant.max_sessions = tenant.max_session_cpus = tenant.max_session_memory = None
    tenant.max_concurrent = 8
    tenant.save()
    return tenant


def many(api: httpx.Client, count: int, body: dict[str, Any], threads: int = 6) -> list[httpx.Response]:
    answers: list[httpx.Response] = []
    lock = threading.Lock()
    todo = list(range(count))

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            answer = run(api, body)
            with lock:
                answers.append(answer)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(180)
    return answers


def test_one_shot_runs_are_spread_over_both_engines(engines, api, open_tenant):
    answers = many(api, 40, {"runtime": "bash", "code": "echo spread"})
    assert [a.status_code for a in answers] == [200] * 40, [a.text for a in answers if a.status_code != 200]
    hosts = set(Execution.objects.filter(tenant=open_tenant).values_list("worker_host", flat=True))
    assert hosts == {engines.host_a, engines.host_b}
    # What ran on B ran in a container of engine B (its own daemon, not A's).
    on_b = Execution.objects.filter(tenant=open_tenant, worker_host=engines.host_b).values_list(
        "container_id", flat=True
    )
    ids_b = {c.id for c in engines.containers_b()}
    assert any(cid in ids_b for cid in on_b)


def test_sessions_keep_to_their_engine_for_runs_and_files(engines, api, open_tenant):
    placed: dict[str, Session] = {}
    for i, host in enumerate([engines.host_a, engines.host_b] * 2):
        name = f"placed-{i}"
        response = new_session_on(api, engines, host, name, f"echo {name} > who.txt")
        assert response.status_code == 200, response.text
        placed[name] = Session.objects.get(tenant=open_tenant, session_id=name)
        assert placed[name].worker_host == host
    ids_b = {c.id for c in engines.containers_b()}
    for name, session in placed.items():
        # Its container is on its own host's engine, and every later call reaches it there.
        assert (session.container_id in ids_b) == (session.worker_host == engines.host_b)
        upload = api.post("/file", json={"sessionId": name, "path": "/sandbox/up.txt", "content": "dXA="})
        assert upload.status_code == 200, upload.text
        body = run(api, {"runtime": "bash", "code": "cat who.txt up.txt"}, sessionId=name).json()
        assert body["stdout"].splitlines() == [name, "up"]
        got = api.get("/file", params={"sessionId": name, "path": "/sandbox/who.txt"}).json()
        assert got["content"] == base64.b64encode(f"{name}\n".encode()).decode()
    for name in placed:
        api.delete(f"/session/{name}")


def test_health_lists_each_host(engines, stack):
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        anonymous = client.get("/health").json()
        operator = client.get("/health", headers={"Authorization": f"Bearer {stack.env['ISOL8_API_KEY']}"}).json()
    assert "hosts" not in anonymous
    hosts = operator["hosts"]
    for name in (engines.host_a, engines.host_b):
        assert hosts[name]["state"] == "alive" and hosts[name]["docker"] == "ok", hosts


def test_a_draining_host_takes_no_new_sessions_or_runs(engines, api, open_tenant):
    # (The test database is emptied between tests: the row the worker made may be gone.)
    WorkerHost.objects.update_or_create(name=engines.host_b, defaults={"draining": True})
    try:
        wait_for(lambda: wire.worker_beats()[engines.host_b].get("draining"), 30, "B says it drains")
        # Its shared-queue consumer is cancelled with that beat (Celery remote control): ask it.
        wait_for(lambda: not engines.consumes_shared_queue(), 30, "B stops consuming the shared queue")
        answers = many(api, 16, {"runtime": "bash", "code": "echo drained"})
        assert [a.status_code for a in answers] == [200] * 16
        recent = Execution.objects.filter(tenant=open_tenant, code="echo drained")
        assert set(recent.values_list("worker_host", flat=True)) == {engines.host_a}
        for i in range(3):
            run(api, {"runtime": "bash", "code": "true"}, sessionId=f"drain-{i}")
        placed = Session.objects.filter(tenant=open_tenant, session_id__startswith="drain-")
        assert set(placed.values_list("worker_host", flat=True)) == {engines.host_a}
    finally:
        WorkerHost.objects.filter(name=engines.host_b).update(draining=False)
        for i in range(3):
            api.delete(f"/session/drain-{i}")
    wait_for(lambda: not wire.worker_beats()[engines.host_b].get("draining"), 30, "B takes work again")


def test_a_dead_engine_loses_its_sessions_clearly_and_the_other_takes_the_runs(engines, api, open_tenant, stack):
    # A session on each engine.
    on_a, on_b = "dying-a", "dying-b"
    made = [on_a, on_b]
    for name, host in ((on_a, engines.host_a), (on_b, engines.host_b)):
        assert new_session_on(api, engines, host, name, "echo hi > f.txt").status_code == 200
        assert Session.objects.get(tenant=open_tenant, session_id=name).worker_host == host
    stale = {c.id for c in engines.containers_b()}
    assert stale

    engine("kill")  # the host dies: dockerd, its containerd and the containers' shims
    wait_for(lambda: not wire.worker_beats()[engines.host_b].get("docker"), 30, "B reports its engine down")
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        hosts = client.get("/health", headers={"Authorization": f"Bearer {stack.env['ISOL8_API_KEY']}"}).json()
    assert hosts["hosts"][engines.host_b]["docker"] == "down"
    assert hosts["hosts"][engines.host_a]["docker"] == "ok"

    # New one-shot runs all succeed, on A, and none hangs.
    started = time.monotonic()
    answers = many(api, 12, {"runtime": "bash", "code": "echo survivor"})
    assert [a.status_code for a in answers] == [200] * 12, [a.text for a in answers]
    assert all(a.json()["stdout"].strip() == "survivor" for a in answers)
    assert time.monotonic() - started < 120
    after = Execution.objects.filter(tenant=open_tenant, code="echo survivor")
    assert set(after.values_list("worker_host", flat=True)) == {engines.host_a}

    # B's session: at first "try again" (B may be restarting), then dead with a clear sentence.
    deadline = time.monotonic() + 60
    while True:
        answer = run(api, {"runtime": "bash", "code": "cat f.txt"}, sessionId=on_b)
        if answer.status_code == 409:
            break
        assert answer.status_code in (503, 200), answer.text
        assert time.monotonic() < deadline, answer.text
        time.sleep(1)
    error = answer.json()
    assert error["code"] == "session_dead" and engines.host_b in error["error"], error
    assert Session.objects.get(tenant=open_tenant, session_id=on_b).state == "dead"
    # A's session is untouched.
    assert run(api, {"runtime": "bash", "code": "cat f.txt"}, sessionId=on_a).json()["stdout"].strip() == "hi"
    assert not Execution.objects.filter(tenant=open_tenant, status__in=("queued", "running")).exists()

    # B comes back: its worker takes work again and removes what the dead host left.
    engine("start")
    wait_for(lambda: wire.host_usable(engines.host_b, wire.worker_beats()), 60, "B usable again")
    # (A Docker call of B's sweep that was in flight when its engine died waits out the
    # SDK's 60 s timeout first: within about a minute and a half.)
    wait_for(lambda: not ({c.id for c in engines.containers_b()} & stale), 150, "B's stale containers removed")
    for name in made:
        api.delete(f"/session/{name}")


def test_engine_b_is_really_another_daemon(engines):
    b = engines.docker_b()
    info_b = b.info()
    b.close()
    info_a = docker.from_env().info()
    # (Their "ID" is the same: both read it from /etc/docker/key.json.)
    assert info_b["DockerRootDir"] == f"/var/lib/isol8-docker-{ENGINE}" != info_a["DockerRootDir"]
    assert os.path.exists(f"/run/netns/isol8-{ENGINE}")
