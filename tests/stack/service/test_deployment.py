"""Deployment from the repo's files (issue 19, point 4): the two-host recipe and the service image.

The recipe script runs as an operator would run it, with settings of its own
(port, database, Redis database, host names), so it touches nothing of the
test stack; everything it started is gone after ``down``.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import threading
from pathlib import Path

import docker
import httpx
import pytest

from tests.conftest import ROOT, free_port, one_mode

pytestmark = [pytest.mark.stack, one_mode]


def script(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts" / args[0]), *args[1:]], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_two_host_recipe_brings_up_both_hosts_and_takes_them_down(stack, tmp_path: Path):
    tag = secrets.token_hex(3)
    key = "recipe-master-" + secrets.token_hex(12)
    port = free_port()
    redis_main, redis_events = (stack.env["REDIS_URL"].rsplit("/", 1)[0], stack.env["ISOL8_EVENTS_REDIS_URL"]
                                .rsplit("/", 1)[0])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ISOL8_", "DJANGO_", "PYTEST"))},
        "PORT": str(port),
        "ISOL8_API_KEY": key,
        "ISOL8_WORKER_HOST": f"recipe-a-{tag}",
        "HOST_B": f"recipe-b-{tag}",
        "ISOL8_RUN_QUEUE": f"isol8.run.recipe-{tag}",
        "ISOL8_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'recipe.sqlite3'}",
        "REDIS_URL": f"{redis_main}/13",
        "CELERY_BROKER_URL": f"{redis_main}/13",
        "ISOL8_EVENTS_REDIS_URL": f"{redis_events}/13",
        "ISOL8_HEARTBEAT_SECONDS": "1",
    }
    up = script("two-hosts.sh", "up", env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as api:
            hosts = api.get("/health").json()["hosts"]
            assert {hosts[h]["state"] for h in (env["ISOL8_WORKER_HOST"], env["HOST_B"])} == {"alive"}

            def one(_: int) -> None:
                answer = api.post("/execute", json={"request": {"runtime": "bash", "code": "echo recipe"}})
                assert answer.status_code == 200 and answer.json()["stdout"].strip() == "recipe", answer.text

            threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
        with sqlite3.connect(tmp_path / "recipe.sqlite3") as db:
            used = {row[0] for row in db.execute("SELECT DISTINCT worker_host FROM executions_execution")}
            done = db.execute("SELECT COUNT(*) FROM executions_execution WHERE status = 'ok'").fetchone()[0]
        assert used == {env["ISOL8_WORKER_HOST"], env["HOST_B"]} and done == 24
    finally:
        down = script("two-hosts.sh", "down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    state = tmp_path / "data" / "two-hosts"
    assert not list(state.glob("*.pid"))
    engine_a = docker.from_env()
    left = engine_a.containers.list(all=True, filters={"label": f"isol8.host={env['ISOL8_WORKER_HOST']}"})
    engine_a.close()
    assert left == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


def test_the_service_image_builds_without_a_registry_and_its_code_loads(stack):
    tag = "isol8-service:test"
    built = script("build-service-image.sh", tag, env=dict(os.environ), timeout=900)
    assert built.returncode == 0, built.stdout + built.stderr
    client = docker.from_env()
    try:
        image = client.images.get(tag)
        # FROM the sandboxes' base image: its first layer is that image's.
        base = client.images.get("isol8-base:bookworm")
        assert base.id in {layer["Id"] for layer in image.history()}
        check = client.containers.run(
            tag, ["python", "manage.py", "check"], remove=True, network_mode="none",
            environment={"DJANGO_SECRET_KEY": "image-check", "ISOL8_DATA_DIR": "/tmp/data"},
        )
        assert b"no issues" in check
    finally:
        client.close()
