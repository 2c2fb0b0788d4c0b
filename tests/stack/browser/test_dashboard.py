"""The operator dashboard and a tenant's quota meters in a real browser (issue 17, point 3).

Real runs go through the stack (a one-shot run, a timeout, a live session on
the test worker, whose heartbeat the hosts table reads); a generated history
spread over the last days fills the 30-day chart. The pages must draw every
chart with bars of non-zero size from their own assets only, with no failed
request and no console error, and are kept as screenshots.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.utils import timezone

from executions.models import Execution, Status
from tenants import quotas
from tests.conftest import one_mode, run
from tests.stack.browser.conftest import assert_styled, screenshot

pytestmark = [pytest.mark.stack, pytest.mark.browser, one_mode]

# (days back, status, how many): the history the 30-day chart must show.
HISTORY = [(1, Status.OK, 40), (1, Status.ERROR, 3), (3, Status.OK, 25), (3, Status.TIMEOUT, 4),
           (6, Status.OK, 12), (6, Status.OOM, 2), (12, Status.CANCELLED, 5), (20, Status.OK, 30)]


def generated_history(tenant: Any) -> None:
    """Finished executions of ``tenant`` created days ago (the model stamps created_at itself: set it after)."""
    now = timezone.now()
    for days, status, count in HISTORY:
        made = Execution.objects.bulk_create([
            Execution(tenant=tenant, runtime="python", code="print(1)", status=status, duration_ms=20 + i,
                      worker_host="an-old-host", finished_at=now)
            for i in range(count)
        ])
        Execution.objects.filter(pk__in=[e.pk for e in made]).update(created_at=now - timedelta(days=days))


class PageWatch:
    """Everything that went wrong while a page loaded: failed requests, 4xx/5xx answers, console errors."""

    def __init__(self, page: Any, origin: str) -> None:
        self.requested: list[str] = []
        self.problems: list[str] = []
        self.origin = urlsplit(origin).netloc
        page.on("request", lambda request: self.requested.append(request.url))
        page.on("requestfailed", lambda request: self.problems.append(f"failed: {request.url}"))
        page.on("response", lambda r: self.problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
        page.on("console", lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))

    def assert_clean(self) -> None:
        assert self.problems == [], self.problems
        hosts = {urlsplit(url).netloc for url in self.requested if not url.startswith(("data:", "blob:"))}
        assert hosts == {self.origin}, hosts  # no CDN, nothing from outside


def drawn(page: Any, selector: str) -> list[dict[str, float]]:
    """The on-screen boxes of the elements ``selector`` matches."""
    return page.eval_on_selector_all(
        selector, "els => els.map(e => { const b = e.getBoundingClientRect(); return {w: b.width, h: b.height}; })"
    )


def test_the_dashboard_draws_every_chart_from_its_own_assets(admin_page, stack, api, tenant):
    generated_history(tenant)
    assert run(api, {"runtime": "bash", "code": "echo dashboard"}).json()["exitCode"] == 0
    assert run(api, {"runtime": "bash", "code": "sleep 30", "timeoutMs": 500}).status_code == 200
    assert run(api, {"runtime": "python", "code": "x = 1"}, sessionId="dashboard-live").status_code == 200
    time.sleep(1.5)  # a heartbeat after the session started

    watch = PageWatch(admin_page, stack.url)
    response = admin_page.goto(f"{stack.url}/admin/")
    assert response.status == 200
    assert_styled(admin_page)
    dashboard_css = admin_page.evaluate(
        "() => [...document.styleSheets].some(s => s.href && s.href.includes('/static/executions/dashboard.')"
        " && s.cssRules.length > 5)"
    )
    assert dashboard_css, "dashboard.css did not load"
    assert admin_page.evaluate("getComputedStyle(document.querySelector('.isol8-tiles')).display") == "grid"

    screenshot(admin_page, "dashboard")
    charts = drawn(admin_page, "svg.isol8-chart")
    assert len(charts) == 5 and all(box["w"] > 300 and box["h"] > 50 for box in charts), charts
    daily = drawn(admin_page, "#chart-daily rect.bar")
    # One segment per (day, status) of the generated history, plus today's real runs.
    assert len(daily) >= len(HISTORY) + 1 and all(box["w"] > 1 and box["h"] > 0 for box in daily), daily
    series = set(admin_page.eval_on_selector_all("#chart-daily rect.bar", "els => els.map(e => e.dataset.series)"))
    assert {"ok", "error", "timeout", "oom", "cancelled"} <= series
    hourly = admin_page.eval_on_selector_all(
        "#chart-hourly rect.bar", "els => els.map(e => [e.dataset.series, +e.dataset.value])"
    )
    assert ["timeout", 1] in hourly and any(s == "ok" and n >= 2 for s, n in hourly), hourly
    assert all(box["h"] > 0 for box in drawn(admin_page, "#chart-hourly rect.bar"))
    legend = admin_page.eval_on_selector_all("#chart-daily g.legend-item", "els => els.map(e => e.dataset.series)")
    assert legend == ["ok", "cancelled", "oom", "timeout", "error"]
    assert admin_page.locator(f'#chart-tenant-runs a[href$="/tenants/tenant/{tenant.pk}/change/"]').count() == 1

    host = os.environ["ISOL8_WORKER_HOST"]
    row = admin_page.locator(f'tr[data-host="{host}"]')
    assert "alive" in row.inner_text()
    assert admin_page.locator('#hosts rect.bar[data-series="live sessions"]').count() >= 1
    assert admin_page.inner_text('[data-tile="p95"] .isol8-value').endswith(("ms", " s"))
    assert admin_page.locator("#content-main .app-tenants").count() == 1  # the app list is still there
    watch.assert_clean()


def test_the_tenant_page_draws_its_quota_meters(admin_page, stack, api, tenant):
    finished = threading.Event()

    def long_run() -> None:
        run(api, {"runtime": "bash", "code": "sleep 6"})
        finished.set()

    assert run(api, {"runtime": "bash", "code": "true"}).status_code == 200
    thread = threading.Thread(target=long_run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while quotas.tenant_usage(tenant=tenant).running < 1 and time.monotonic() < deadline:
        time.sleep(0.1)

    watch = PageWatch(admin_page, stack.url)
    response = admin_page.goto(f"{stack.url}/admin/tenants/tenant/{tenant.pk}/change/")
    assert response.status == 200
    assert_styled(admin_page)
    meters = admin_page.locator("svg.isol8-meter")
    assert meters.count() == 4
    assert all(box["w"] > 200 and box["h"] > 20 for box in drawn(admin_page, "svg.isol8-meter"))
    text = admin_page.inner_text(".field-quota_meters")
    assert f"1 of {tenant.max_concurrent}" in text, text  # the long run holds a slot
    assert not finished.is_set()
    fills = drawn(admin_page, "svg.isol8-meter rect.bar")
    assert len(fills) >= 2 and all(box["w"] > 0 for box in fills)  # concurrency and the minute's rate
    screenshot(admin_page, "dashboard-tenant-quotas")
    watch.assert_clean()
    thread.join(30)
