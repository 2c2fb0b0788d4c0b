"""GET /metrics on the real stack: both web processes and the worker add to one exposition (issue 17)."""

from __future__ import annotations

import time

import pytest
from django.conf import settings

from tests.api.test_metrics import value
from tests.conftest import one_mode, run

pytestmark = [pytest.mark.stack, one_mode]


def scrape(stack) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with stack.client(settings.ISOL8_API_KEY) as master:
        response = master.get("/metrics")
    assert response.status_code == 200, response.text
    samples: dict = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_counters_from_every_process_add_up(stack, api, tenant):
    runs = 12
    for n in range(runs):
        assert run(api, {"runtime": "bash", "code": f"echo {n}"}).status_code == 200
    assert run(api, {"runtime": "bash", "code": "sleep 5"}, options={"timeoutMs": 300}).status_code == 200
    # Ten scrapes: uvicorn's two processes take turns; each sums every process's files.
    for _ in range(10):
        samples = scrape(stack)
        slug = tenant.slug
        assert value(samples, "isol8_executions_started_total", tenant=slug) == runs + 1  # web processes
        assert value(samples, "isol8_executions_finished_total", tenant=slug, status="ok") == runs  # the worker
        assert value(samples, "isol8_executions_finished_total", tenant=slug, status="timeout") == 1
        assert value(samples, "isol8_queue_wait_seconds_count", runtime="bash") >= runs + 1  # worker's claims
        assert value(samples, "isol8_worker_up") >= 1 and value(samples, "isol8_docker_up") >= 1
        time.sleep(0.05)
    # The pool's figures arrive with the worker's next heartbeat (every second here).
    deadline = time.monotonic() + 5
    while value(scrape(stack), "isol8_pool_acquires", runtime="bash") < runs + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert value(scrape(stack), "isol8_pool_acquires", runtime="bash") >= runs + 1


def json_lines(path) -> list[dict]:
    import json

    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_web_and_worker_log_one_json_line_per_request_and_step(stack, api, tenant):
    response = api.post("/execute", json={"request": {"runtime": "bash", "code": "echo logged"}},
                        headers={"X-Request-Id": "stack-req-1"})
    assert response.status_code == 200 and response.headers["X-Request-Id"] == "stack-req-1"
    execution_id = response.json()["executionId"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        web = json_lines(stack.log_dir / f"web-{stack.mode}.log")
        worker = json_lines(stack.log_dir / f"worker-{stack.mode}.log")
        steps = {line["step"] for line in web + worker if line.get("execution_id") == execution_id}
        if steps == {"received", "queued", "started", "finished"}:
            break
        time.sleep(0.2)
    assert steps == {"received", "queued", "started", "finished"}, steps
    requests = [line for line in web if line.get("request_id") == "stack-req-1" and line["event"] == "request"]
    assert requests and requests[0]["path"] == "/execute" and requests[0]["status"] == 200
    assert requests[0]["tenant"] == tenant.slug
    finished = next(line for line in worker if line.get("execution_id") == execution_id and line["step"] == "finished")
    assert finished["status"] == "ok" and finished["tenant"] == tenant.slug
