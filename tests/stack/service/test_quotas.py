"""Per-tenant quotas and the global maxConcurrent, enforced under concurrency (issue 5)."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from executions.models import Execution
from isol8_site.web import uvicorn_argv
from isol8_site.wire import alive_hosts
from sandbox import containers
from tests.conftest import ROOT, free_port, make_key, run, wait_healthy

pytestmark = pytest.mark.stack


def timed(seconds: float) -> str:
    """A program that prints, from inside its container, when it started and ended."""
    return f"date +%s.%N; sleep {seconds}; date +%s.%N"


def peak_overlap(responses: list[httpx.Response]) -> int:
    """Most programs running at one instant, from the timestamps they printed."""
    edges = []
    for response in responses:
        if response.status_code == 200:
            start, end = (float(x) for x in response.json()["stdout"].split())
            edges += [(start, 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    return peak


def test_tenant_concurrency_cap_holds_under_simultaneous_requests(stack, tenant):
    tenant.max_concurrent = 2
    tenant.save()
    key = make_key(tenant)

    def one(_: int) -> httpx.Response:
        with stack.client(key) as api:
            return run(api, {"runtime": "bash", "code": timed(2)})

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(one, range(10)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) >= 2
    assert statuses.count(429) >= 6
    assert set(statuses) <= {200, 429}
    assert 1 <= peak_overlap(responses) <= 2
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["code"] == "quota_exceeded"
    assert "concurrent" in refused.json()["error"]
    assert int(refused.headers["Retry-After"]) >= 1
    # Slots are released when runs end: the tenant can run again.
    with stack.client(key) as api:
        assert run(api, {"runtime": "bash", "code": "echo free"}).json()["stdout"] == "free"


def test_rate_quota_gives_429_with_retry_after(api, tenant):
    tenant.max_per_minute = 3
    tenant.save()
    for _ in range(3):
        assert run(api, {"runtime": "bash", "code": "true"}).status_code == 200
    response = run(api, {"runtime": "bash", "code": "true"})
    assert response.status_code == 429
    assert "per minute" in response.json()["error"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_monthly_budget_gives_429_once_used_up(api, tenant):
    tenant.monthly_seconds = 1
    tenant.save()
    assert run(api, {"runtime": "bash", "code": "sleep 1.2"}).status_code == 200
    response = run(api, {"runtime": "bash", "code": "true"})
    assert response.status_code == 429
    assert "monthly" in response.json()["error"]


def test_cancel_and_timeout_release_the_slot(api, tenant):
    tenant.max_concurrent = 1
    tenant.save()
    assert run(api, {"runtime": "bash", "code": "sleep 5", "timeoutMs": 300}).json()["status"] == "timeout"
    assert run(api, {"runtime": "bash", "code": "echo ok"}).status_code == 200


def test_max_concurrent_caps_runs_across_two_workers(stack, tenant, tmp_path):
    tenant.max_concurrent = 50
    tenant.max_per_minute = 1000
    tenant.save()
    config = tmp_path / "isol8.config.json"
    config.write_text(json.dumps({"maxConcurrent": 2}))
    second_host = stack.env["ISOL8_WORKER_HOST"] + "-cap"
    port = free_port()
    env = {**stack.env, "ISOL8_CONFIG": str(config)}
    web = subprocess.Popen(
        uvicorn_argv(port=port),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    stack.start_worker("worker-cap", ISOL8_WORKER_HOST=second_host)
    key = make_key(tenant)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        # Both workers must be up (heartbeating) before the runs start.
        while time.monotonic() < deadline and second_host not in alive_hosts():
            time.sleep(0.2)
        wait_healthy(url, timeout=max(1.0, deadline - time.monotonic()))

        def one(_: int) -> httpx.Response:
            return httpx.post(f"{url}/execute", json={"request": {"runtime": "bash", "code": timed(1)}},
                              headers={"Authorization": f"Bearer {key}"}, timeout=120)

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(one, range(6)))
        assert [r.status_code for r in responses] == [200] * 6  # the rest waited in line
        assert peak_overlap(responses) == 2
        hosts = {Execution.objects.get(pk=r.json()["executionId"]).worker_host for r in responses}
        assert len(hosts) == 2  # both workers ran some
    finally:
        web.terminate()
        web.wait()
        stack.stop("worker-cap")
        for container in containers.list_managed(host=second_host):
            containers.remove_container(container.id)
