"""Per-tenant quotas and the global maxConcurrent, enforced under concurrency (issue 5)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from executions import sandbox
from tests.conftest import ROOT, free_port, make_key, run

pytestmark = pytest.mark.stack


class DockerSampler:
    """Counts, on the Docker side, how many `sleep` programs run at once."""

    def __init__(self, hosts: list[str], marker: str) -> None:
        self.hosts, self.marker = hosts, marker
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def count(self) -> int:
        total = 0
        for host in self.hosts:
            for container in sandbox.list_managed(host=host):
                try:
                    top = sandbox.client().api.top(container.id, ps_args="-eo pid,args")
                except Exception:  # noqa: BLE001 - a container may be going away
                    continue
                total += sum(self.marker in " ".join(p) for p in top.get("Processes") or [])
        return total

    def loop(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.count())
            time.sleep(0.05)

    def __enter__(self) -> DockerSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_tenant_concurrency_cap_holds_under_simultaneous_requests(stack, tenant):
    tenant.max_concurrent = 2
    tenant.save()
    key = make_key(tenant)

    def one(_: int) -> httpx.Response:
        with stack.client(key) as api:
            return run(api, {"runtime": "bash", "code": "sleep 2.1"})

    with DockerSampler([stack.env["ISOL8_WORKER_HOST"]], "sleep 2.1") as sampler, ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(one, range(10)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) >= 2
    assert statuses.count(429) >= 6
    assert set(statuses) <= {200, 429}
    assert 1 <= sampler.peak <= 2
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
        [sys.executable, "-m", "uvicorn", "isol8_site.asgi:application", "--port", str(port), "--no-access-log"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    stack.start_worker("worker-cap", ISOL8_WORKER_HOST=second_host)
    key = make_key(tenant)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

        def one(_: int) -> httpx.Response:
            return httpx.post(f"{url}/execute", json={"request": {"runtime": "bash", "code": "sleep 1.3"}},
                              headers={"Authorization": f"Bearer {key}"}, timeout=120)

        hosts = [stack.env["ISOL8_WORKER_HOST"], second_host]
        with DockerSampler(hosts, "sleep 1.3") as sampler, ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(one, range(6)))
        assert [r.status_code for r in responses] == [200] * 6  # the rest waited in line
        assert 1 <= sampler.peak <= 2
    finally:
        web.terminate()
        web.wait()
        stack.stop("worker-cap")
        for container in sandbox.list_managed(host=second_host):
            sandbox.remove_container(container.id)
