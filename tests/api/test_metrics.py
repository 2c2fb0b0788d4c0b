"""GET /metrics below the stack: who may scrape it, and that its counters move with the runs (issue 17)."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from isol8_site import wire
from sandbox.spec import RunResult
from tests.api.conftest import FakeDispatch, assert_error, client_for
from tests.conftest import make_key


def scrape(api: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name → {sorted labels: value} of every sample, as a Prometheus server parses them."""
    response = api.get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for key, v in samples.get(name, {}).items() if set(labels.items()) <= set(key))


def test_metrics_need_the_master_key_or_the_metrics_token(tenant, api_key, master, client, settings):
    assert_error(client.get("/metrics"), 401, "unauthorized")
    assert_error(client_for(api_key).get("/metrics"), 403, "forbidden", "master key")
    assert master.get("/metrics").status_code == 200
    settings.ISOL8_METRICS_TOKEN = "scrape-token-1234567890"
    assert client_for("scrape-token-1234567890").get("/metrics").status_code == 200
    assert_error(client_for("scrape-token-wrong").get("/metrics"), 401, "unauthorized")


def test_counters_and_histograms_move_as_runs_finish(tenant, api, master, fake_dispatch: FakeDispatch):
    before = scrape(master)
    fake_dispatch.answer_runs(RunResult(status="ok", exit_code=0, stdout="x", duration_ms=40))
    for _ in range(3):
        assert api.post("/execute", {"request": {"runtime": "python", "code": "print(1)"}},
                        format="json").status_code == 200
    fake_dispatch.answer_runs(RunResult(status="timeout", exit_code=137, timed_out=True, duration_ms=900))
    api.post("/execute", {"request": {"runtime": "bash", "code": "sleep 9"}}, format="json")
    after = scrape(master)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    slug = tenant.slug
    assert moved("isol8_executions_started_total", tenant=slug, runtime="python") == 3
    assert moved("isol8_executions_started_total", tenant=slug, runtime="bash") == 1
    assert moved("isol8_executions_finished_total", tenant=slug, runtime="python", status="ok") == 3
    assert moved("isol8_executions_finished_total", tenant=slug, runtime="bash", status="timeout") == 1
    assert moved("isol8_run_seconds_count", runtime="python") == 3
    assert moved("isol8_run_seconds_sum", runtime="python") == pytest.approx(0.12)
    assert moved("isol8_queue_wait_seconds_count", runtime="python") == 3
    assert moved("isol8_end_to_end_seconds_count", runtime="bash") == 1
    # The 40 ms runs sit in the 0.05 s bucket and above, not below.
    assert moved("isol8_run_seconds_bucket", runtime="python", le="0.05") == 3
    assert moved("isol8_run_seconds_bucket", runtime="python", le="0.025") == 0


def test_quota_rejections_are_counted_by_kind(tenant, api, master, fake_dispatch):
    tenant.max_per_minute = 1
    tenant.save()
    before = value(scrape(master), "isol8_quota_rejections_total", tenant=tenant.slug, kind="rate")
    body = {"request": {"runtime": "python", "code": "print(1)"}}
    assert api.post("/execute", body, format="json").status_code == 200
    assert api.post("/execute", body, format="json").status_code == 429
    after = value(scrape(master), "isol8_quota_rejections_total", tenant=tenant.slug, kind="rate")
    assert after - before == 1


def test_levels_come_from_the_heartbeats_and_the_database(tenant, master, fake_dispatch):
    from tests.api.conftest import make_session

    wire.beat("host-a", {"docker": True, "warm": 2, "idle": 1,
                         "runtimes": {"python": {"warm": 2, "idle": 1, "idleHits": 5, "warmHits": 7, "misses": 1}}})
    make_session(tenant, "m1")
    make_session(tenant, "m2")
    samples = scrape(master)
    assert value(samples, "isol8_worker_up", host="host-a") == 1
    assert value(samples, "isol8_docker_up", host="host-a") == 1
    assert value(samples, "isol8_pool_sandboxes", host="host-a", runtime="python", state="warm") == 2
    assert value(samples, "isol8_pool_acquires", host="host-a", runtime="python", found="warmHits") == 7
    assert value(samples, "isol8_live_sessions", host="host-a") == 2
    assert 0 <= value(samples, "isol8_worker_heartbeat_age_seconds", host="host-a") < 5


def test_open_streams_are_counted_per_tenant(tenant, master, fake_dispatch):
    from executions.events import StreamSlot

    slot = StreamSlot(tenant.slug)
    slot.acquire()
    try:
        assert value(scrape(master), "isol8_open_streams", tenant=tenant.slug) == 1
    finally:
        import asyncio

        asyncio.run(slot.release())
    assert value(scrape(master), "isol8_open_streams", tenant=tenant.slug) == 0


def test_metrics_never_carry_keys_code_or_secrets(tenant, api, master, fake_dispatch):
    api.post("/execute", {"request": {"runtime": "python", "code": "print('very-secret-code')"},
                          "options": {"secrets": {"TOKEN": "s3cr3t-value-xyz"}}}, format="json")
    text = master.get("/metrics").content.decode()
    for leaked in ("very-secret-code", "s3cr3t-value-xyz", settings.ISOL8_API_KEY, make_key(tenant)[:20]):
        assert leaked not in text


def test_every_metric_of_the_shipped_dashboard_exists(tenant, api, master, fake_dispatch):
    import json
    import re
    from pathlib import Path

    from tests.api.conftest import make_session

    tenant.max_per_minute = 1
    tenant.save()
    body = {"request": {"runtime": "python", "code": "print(1)"}}
    api.post("/execute", body, format="json")
    api.post("/execute", body, format="json")  # a rate rejection
    wire.beat("host-d", {"docker": True, "runtimes": {"python": {"warm": 1, "idleHits": 1}}})
    make_session(tenant, "dash")
    from executions.events import StreamSlot

    StreamSlot(tenant.slug).acquire()
    names = set(scrape(master))
    dashboard = json.loads((Path(settings.BASE_DIR) / "deploy" / "grafana-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"isol8_[a-z_]+", t["expr"])}
    assert used and used <= names, used - names
