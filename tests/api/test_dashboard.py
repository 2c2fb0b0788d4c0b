"""The operator dashboard: its aggregates (executions/dashboard.py), the admin landing page, the tenant meters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from executions import dashboard
from executions.models import Execution, Status
from isol8_site import wire
from tenants import quotas
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.api.conftest import make_session

NOW = datetime(2026, 12, 2, 15, 30, tzinfo=UTC)


def runs(tenant: Tenant, *, at: datetime, n: int = 1, status: str = Status.OK, duration_ms: int | None = 10,
         host: str = "host-a", session: Any = None) -> list[Execution]:
    """``n`` executions of ``tenant`` created at ``at`` (the model stamps created_at itself; set it after)."""
    made = Execution.objects.bulk_create([
        Execution(tenant=tenant, runtime="python", code="print(1)", status=status, duration_ms=duration_ms,
                  worker_host=host, session=session)
        for _ in range(n)
    ])
    Execution.objects.filter(pk__in=[e.pk for e in made]).update(created_at=at)
    return made


@pytest.fixture
def acme(db: Any) -> Tenant:
    return tenant_create(slug=f"acme-{uuid.uuid4().hex[:6]}", name="Acme")


@pytest.fixture
def globex(db: Any) -> Tenant:
    return tenant_create(slug=f"globex-{uuid.uuid4().hex[:6]}", name="Globex")


@pytest.fixture
def plain_static(settings: Any) -> None:
    # The manifest storage needs `collectstatic` run first; the page's markup is what these tests read.
    settings.STORAGES = {**settings.STORAGES,
                         "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}


# ----------------------------------------------------------------- runs by status


def test_hour_and_day_buckets_end_with_the_current_partial_one():
    hours = dashboard.hour_starts(now=NOW, hours=24)
    assert len(hours) == 24 and hours[-1] == datetime(2026, 12, 2, 15, tzinfo=UTC)
    assert hours[0] == datetime(2026, 12, 1, 16, tzinfo=UTC)
    days = dashboard.day_starts(now=NOW, days=30)
    assert len(days) == 30 and days[-1] == datetime(2026, 12, 2, tzinfo=UTC)
    assert days[0] == datetime(2026, 11, 3, tzinfo=UTC)


def test_runs_per_hour_counts_each_bucket_by_status(acme, globex):
    runs(acme, at=NOW - timedelta(minutes=5), n=3)
    runs(globex, at=NOW - timedelta(minutes=25), status=Status.ERROR)
    runs(acme, at=datetime(2026, 12, 2, 14, 0, tzinfo=UTC), n=2, status=Status.TIMEOUT)  # a bucket's first instant
    runs(acme, at=datetime(2026, 12, 2, 13, 59, 59, 999999, tzinfo=UTC))  # the last instant of the one before
    runs(acme, at=datetime(2026, 12, 1, 15, 59, tzinfo=UTC), n=4)  # before the window
    runs(acme, at=NOW + timedelta(seconds=1))  # after `now`: not yet
    hourly = dashboard.runs_per_hour(now=NOW)
    assert hourly.counts[Status.OK][-1] == 3 and hourly.counts[Status.ERROR][-1] == 1
    assert hourly.counts[Status.TIMEOUT][-2] == 2
    assert hourly.counts[Status.OK][-3] == 1
    assert hourly.total() == 7
    assert set(hourly.counts) == set(Status.values)  # every status, zeros included
    assert hourly.totals()[-3:] == [1, 2, 4]


def test_runs_per_day_covers_thirty_calendar_days(acme):
    runs(acme, at=datetime(2026, 11, 3, 0, 0, tzinfo=UTC), n=2, status=Status.OOM)
    runs(acme, at=datetime(2026, 11, 2, 23, 59, tzinfo=UTC))  # 31 days back: outside
    runs(acme, at=datetime(2026, 12, 2, 9, 0, tzinfo=UTC), status=Status.RUNNING, duration_ms=None)
    daily = dashboard.runs_per_day(now=NOW)
    assert daily.counts[Status.OOM][0] == 2
    assert daily.counts[Status.RUNNING][-1] == 1
    assert daily.total() == 3


def test_counting_a_window_is_one_query(acme, django_assert_num_queries):
    runs(acme, at=NOW - timedelta(hours=3))
    with django_assert_num_queries(1):
        dashboard.runs_per_day(now=NOW)


def test_error_and_timeout_rates_are_shares_of_the_finished_runs(acme):
    runs(acme, at=NOW - timedelta(hours=1), n=16)
    runs(acme, at=NOW - timedelta(hours=2), n=3, status=Status.ERROR)
    runs(acme, at=NOW - timedelta(hours=2), n=1, status=Status.TIMEOUT)
    runs(acme, at=NOW - timedelta(minutes=1), n=5, status=Status.QUEUED, duration_ms=None)  # not finished yet
    done = dashboard.outcomes(dashboard.runs_per_hour(now=NOW))
    assert (done.finished, done.errors, done.timeouts) == (20, 3, 1)
    assert done.error_rate == pytest.approx(0.15) and done.timeout_rate == pytest.approx(0.05)
    empty = dashboard.outcomes(dashboard.runs_per_hour(now=NOW - timedelta(days=3)))
    assert empty.error_rate is None and empty.timeout_rate is None


# ---------------------------------------------------------------------- latency


@pytest.mark.parametrize(("count", "quantile", "rank"), [(100, 0.5, 49), (100, 0.95, 94), (1, 0.95, 0), (3, 0.5, 1)])
def test_nearest_rank(count, quantile, rank):
    assert dashboard.nearest_rank(count, quantile) == rank


def test_latency_is_the_nearest_rank_percentile_of_finished_runs_in_the_window(acme):
    for ms in range(1, 101):
        runs(acme, at=NOW - timedelta(hours=1), duration_ms=ms, status=Status.OK if ms % 10 else Status.TIMEOUT)
    runs(acme, at=NOW - timedelta(minutes=1), status=Status.RUNNING, duration_ms=None)
    runs(acme, at=NOW - timedelta(minutes=2), status=Status.ERROR, duration_ms=None)  # never ran
    runs(acme, at=NOW - timedelta(days=2), n=50, duration_ms=100_000)  # outside the window
    latency = dashboard.latency(since=NOW - timedelta(hours=24), until=NOW)
    assert latency == dashboard.Latency(runs=100, p50_ms=50, p95_ms=95)
    assert dashboard.latency(since=NOW - timedelta(minutes=30), until=NOW) == dashboard.Latency(0, None, None)


# ---------------------------------------------------------------------- tenants


def test_tenants_are_ranked_by_run_seconds_and_by_runs(acme, globex, db):
    idle = tenant_create(slug=f"idle-{uuid.uuid4().hex[:6]}", name="Idle")
    runs(acme, at=NOW - timedelta(hours=1), n=10, duration_ms=100)  # 10 runs, 1 s
    runs(globex, at=NOW - timedelta(hours=2), n=2, duration_ms=3_000)  # 2 runs, 6 s
    runs(globex, at=NOW - timedelta(days=3), n=50, duration_ms=3_000)  # outside the window
    runs(idle, at=NOW - timedelta(days=3))
    uses = dashboard.tenant_use(since=NOW - timedelta(hours=24), until=NOW)
    assert [(u.slug, u.runs, u.run_seconds) for u in uses] == [(globex.slug, 2, 6.0), (acme.slug, 10, 1.0)]
    assert [u.slug for u in dashboard.top_tenants(uses, by="runs")] == [acme.slug, globex.slug]
    assert [u.slug for u in dashboard.top_tenants(uses, by="run_seconds", limit=1)] == [globex.slug]


# ------------------------------------------------------------------------ hosts


def test_host_load_joins_heartbeats_live_sessions_and_running_runs(acme, globex):
    wire.beat("host-a", {"docker": True, "warm": 2, "idle": 1})
    wire.beat("host-b", {"docker": False, "warm": 0, "idle": 0})
    make_session(acme, "s1", worker_host="host-a")
    make_session(globex, "s2", worker_host="host-c", alive=False)  # its host's heartbeat is gone
    make_session(globex, "s3", worker_host="host-a", state="stopped")  # not live
    session = make_session(acme, "s4", worker_host="host-a")
    runs(acme, at=NOW, n=2, status=Status.RUNNING, duration_ms=None, host="host-a")
    runs(acme, at=NOW, status=Status.RUNNING, duration_ms=None, host="host-a", session=session)  # the session's box
    runs(acme, at=NOW, status=Status.OK, host="host-b")
    hosts, error = dashboard.host_load()
    assert error is None
    by_host = {h.host: h for h in hosts}
    assert set(by_host) == {"host-a", "host-b", "host-c"}
    a = by_host["host-a"]
    assert (a.alive, a.docker, a.warm, a.idle, a.sessions, a.running, a.sandboxes) == (True, True, 2, 1, 2, 2, 7)
    assert by_host["host-b"].docker is False and by_host["host-b"].sandboxes == 0
    assert by_host["host-c"].alive is None and by_host["host-c"].sessions == 1


def test_host_load_without_redis_still_shows_what_the_database_knows(acme, monkeypatch):
    def down() -> dict[str, Any]:
        raise redis.ConnectionError("down")

    monkeypatch.setattr(wire, "worker_beats", down)
    make_session(acme, "s1", worker_host="host-a")
    hosts, error = dashboard.host_load()
    assert error == "heartbeats unavailable (ConnectionError)"
    assert [(h.host, h.alive, h.sessions) for h in hosts] == [("host-a", None, 1)]


# ---------------------------------------------------------------------- the page


def staff(*, superuser: bool, permissions: tuple[str, ...] = ()) -> Client:
    name = f"op-{uuid.uuid4().hex[:6]}"
    user = get_user_model().objects.create_user(name, password="x", is_staff=True, is_superuser=superuser)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


def test_the_admin_landing_page_is_the_dashboard_above_the_app_list(acme, plain_static, django_assert_max_num_queries):
    from django.utils import timezone

    now = timezone.now()
    runs(acme, at=now - timedelta(minutes=3), n=4)
    runs(acme, at=now - timedelta(minutes=3), status=Status.ERROR)
    runs(acme, at=now - timedelta(days=5), n=2, status=Status.TIMEOUT)
    wire.beat("host-a", {"docker": True, "warm": 1, "idle": 0})
    client = staff(superuser=True)
    # A fixed number of queries, whatever the history's size: no query per row or per bucket.
    with django_assert_max_num_queries(16):
        response = client.get("/admin/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="isol8-chart') == 5
    assert 'data-series="ok" data-value="4"' in html and 'data-series="timeout" data-value="2"' in html
    assert "Runs per hour, last 24 h, by status" in html and "Runs per day, last 30 days, by status" in html
    assert f'href="/admin/tenants/tenant/{acme.pk}/change/"' in html  # top tenants link to their pages
    assert 'data-host="host-a"' in html
    assert "/static/executions/dashboard.css" in html
    assert "20.0%" in html  # the error rate: 1 of 5 finished
    # Django's own index is still there below it.
    assert 'id="content-main"' in html and "/admin/tenants/tenant/" in html and "Recent actions" in html


def test_staff_who_may_not_view_executions_get_the_plain_index(plain_static, db):
    response = staff(superuser=False, permissions=("view_tenant",)).get("/admin/")
    assert response.status_code == 200
    assert "isol8-dashboard" not in response.content.decode()
    assert staff(superuser=False, permissions=("view_execution",)).get("/admin/").content.count(b"isol8-chart") == 5


def test_the_tenant_page_shows_quota_meters_from_the_quota_counters(plain_static, db, settings):
    settings.ISOL8_RUN_QUEUE = f"dash-{uuid.uuid4().hex[:6]}"  # a global limit of this test's own
    tenant = tenant_create(slug=f"meter-{uuid.uuid4().hex[:6]}", name="Meters")
    Tenant.objects.filter(pk=tenant.pk).update(max_concurrent=4, max_per_minute=10, monthly_seconds=None)
    tenant.refresh_from_db()
    held = [uuid.uuid4().hex for _ in range(3)]
    for execution_id in held:
        quotas.acquire(tenant=tenant, execution_id=execution_id, hold_seconds=60)
    quotas.release(tenant_slug=tenant.slug, execution_id=held[0], seconds=90)
    try:
        response = staff(superuser=True).get(f"/admin/tenants/tenant/{tenant.pk}/change/")
        html = response.content.decode()
    finally:
        for execution_id in held[1:]:
            quotas.release(tenant_slug=tenant.slug, execution_id=execution_id)
    assert response.status_code == 200
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="isol8-meter') == 4
    assert "2 of 4 (50%)" in html  # running now, as the concurrency check counts them
    assert "3 of 10 (30%)" in html  # started in the last minute, released or not
    assert "90 s used · unlimited" in html  # the month, no cap
    assert "Live sessions" in html
