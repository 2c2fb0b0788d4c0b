"""The quota script on a real Redis: concurrency, rate, monthly budget, global slots, expiry."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from isol8_site.errors import QuotaExceeded, Unavailable
from tenants import quotas
from tenants.models import Tenant


def tenant(**caps: object) -> Tenant:
    fields: dict[str, object] = {"slug": f"q-{uuid.uuid4().hex[:8]}", "max_concurrent": None, "max_per_minute": None,
                                 "monthly_seconds": None, **caps}
    return Tenant(**fields)


@pytest.fixture(autouse=True)
def own_cluster(settings):
    # A global limit of our own: other tests' slots never count here; a test
    # that reaches it by mistake fails in a second, not after the queue timeout.
    settings.ISOL8_RUN_QUEUE = f"unit-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    settings.ISOL8_QUEUE_TIMEOUT = 1


def take(t: Tenant, hold: float = 60) -> str:
    execution_id = uuid.uuid4().hex
    quotas.acquire(tenant=t, execution_id=execution_id, hold_seconds=hold)
    return execution_id


def test_concurrency_counts_executions_in_flight_and_frees_on_release():
    t = tenant(max_concurrent=2)
    first = take(t)
    take(t)
    with pytest.raises(QuotaExceeded, match="at most 2 concurrent") as caught:
        take(t)
    assert caught.value.retry_after == 1 and caught.value.code == "quota_exceeded"
    quotas.release(tenant_slug=t.slug, execution_id=first)
    take(t)
    assert quotas.tenant_usage(tenant=t).running == 2


def test_a_slot_nobody_released_expires_by_itself():
    t = tenant(max_concurrent=1)
    take(t, hold=0.2)
    time.sleep(0.3)
    take(t)


def test_the_rate_window_holds_starts_for_a_minute_even_after_release():
    t = tenant(max_per_minute=2)
    for _ in range(2):
        quotas.release(tenant_slug=t.slug, execution_id=take(t))
    with pytest.raises(QuotaExceeded, match="2 executions per minute") as caught:
        take(t)
    assert 55 <= caught.value.retry_after <= 61


def test_the_monthly_budget_adds_up_run_seconds_and_charges():
    t = tenant(monthly_seconds=10)
    quotas.release(tenant_slug=t.slug, execution_id=take(t), seconds=6)
    quotas.charge(tenant_slug=t.slug, seconds=4.5)
    quotas.charge(tenant_slug=t.slug, seconds=-3)  # never a refund
    assert quotas.tenant_usage(tenant=t).month_seconds == pytest.approx(10.5)
    with pytest.raises(QuotaExceeded, match="monthly budget of 10"):
        take(t)


def test_no_quota_means_no_limit(settings):
    settings.ISOL8_CONFIG = type(settings.ISOL8_CONFIG)(max_concurrent=1000)
    t = tenant()
    for _ in range(20):
        take(t)
    assert quotas.tenant_usage(tenant=t).running == 20


def test_the_global_limit_queues_then_answers_unavailable(settings):
    settings.ISOL8_CONFIG = type(settings.ISOL8_CONFIG)(max_concurrent=1)
    settings.ISOL8_QUEUE_TIMEOUT = 0.2
    a, b = tenant(), tenant()
    held = take(a)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="at capacity"):
        take(b)
    assert time.monotonic() - started >= 0.2
    quotas.release(tenant_slug=a.slug, execution_id=held)
    take(b)


def test_a_full_waiting_line_is_refused_at_once(settings):
    settings.ISOL8_CONFIG = type(settings.ISOL8_CONFIG)(max_concurrent=1)
    settings.ISOL8_MAX_QUEUE_DEPTH = 0
    take(tenant())
    with pytest.raises(Unavailable, match="queue is full"):
        take(tenant())
