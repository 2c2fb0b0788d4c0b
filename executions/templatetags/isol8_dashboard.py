"""``{% operator_dashboard %}``: the admin landing page's charts and figures (admin/isol8_index.html).

A template tag, as the admin's own index draws its "Recent actions" with
``{% get_admin_log %}``: the index view stays Django's (its URL, its app list),
and this tag only turns the reads of executions/dashboard.py into figures and
SVG charts (isol8_site/charts.py). Staff without the permission to view
executions see the plain index: the dashboard shows every tenant's history.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from executions import dashboard
from executions.models import Status
from isol8_site import charts

register = template.Library()

STATUS_COLORS: dict[str, str] = {
    Status.OK: "#3b8f5a",
    Status.CANCELLED: "#8a8f94",
    Status.OOM: "#8e44ad",
    Status.TIMEOUT: "#e08a1e",
    Status.ERROR: "#c0392b",
    Status.RUNNING: "#2e86c1",
    Status.QUEUED: "#9cc9e8",
}
SANDBOX_SERIES = (  # (HostLoad attribute, legend name, colour)
    ("running", "running runs", "#2e86c1"),
    ("sessions", "live sessions", "#8e44ad"),
    ("idle", "idle (kept for a tenant)", "#e08a1e"),
    ("warm", "warm pool", "#3b8f5a"),
)
TOP_TENANTS = 10


@register.inclusion_tag("admin/executions/dashboard.html", takes_context=True)
def operator_dashboard(context: template.Context) -> dict[str, Any]:
    request = context.get("request")
    if request is None or not request.user.has_perm("executions.view_execution"):
        return {"shown": False}
    return {"shown": True, **page(dashboard.overview(now=timezone.now()))}


def page(data: dashboard.Overview) -> dict[str, Any]:
    """The template's context: figures for the tiles, charts as SVG, the hosts' table."""
    return {
        "now": timezone.localtime(data.now),
        "since": timezone.localtime(data.hourly.starts[0]),
        "tiles": tiles(data),
        "hourly_chart": hourly_chart(data.hourly),
        "daily_chart": daily_chart(data.daily),
        "tenant_seconds_chart": tenants_chart(data.tenants_24h, by="run_seconds"),
        "tenant_runs_chart": tenants_chart(data.tenants_24h, by="runs"),
        "hosts_chart": hosts_chart(data.hosts),
        "hosts": data.hosts,
        "hosts_error": data.hosts_error,
    }


def _safe(svg: str) -> SafeString:
    # isol8_site.charts escapes every text it is given (tenant slugs, host names).
    return mark_safe(svg)


def percent(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate:.2%}" if rate < 0.1 else f"{rate:.1%}"


def milliseconds(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def seconds(value: float) -> str:
    return f"{charts.compact(round(value, 1))} s"


def tiles(data: dashboard.Overview) -> list[dict[str, str]]:
    done = data.outcomes_24h
    return [
        {"name": "runs-24h", "label": "runs, last 24 h", "value": f"{data.hourly.total():,}"},
        {"name": "runs-30d", "label": "runs, last 30 days", "value": f"{data.daily.total():,}"},
        {"name": "error-rate", "label": f"error rate ({done.errors:,} of {done.finished:,} finished)",
         "value": percent(done.error_rate)},
        {"name": "timeout-rate", "label": f"timeout rate ({done.timeouts:,} of {done.finished:,})",
         "value": percent(done.timeout_rate)},
        {"name": "p50", "label": f"p50 run time ({data.latency_24h.runs:,} runs)",
         "value": milliseconds(data.latency_24h.p50_ms)},
        {"name": "p95", "label": "p95 run time", "value": milliseconds(data.latency_24h.p95_ms)},
        {"name": "sandboxes", "label": f"sandboxes on {len(data.hosts)} host(s)",
         "value": str(sum(h.sandboxes for h in data.hosts))},
        {"name": "sessions", "label": "live sessions", "value": str(sum(h.sessions for h in data.hosts))},
    ]


def status_series(histogram: dashboard.StatusHistogram) -> list[charts.Series]:
    """One layer per status that occurs in the window (an empty legend entry helps nobody)."""
    return [
        charts.Series(name=status, color=STATUS_COLORS[status], values=histogram.counts[status])
        for status in dashboard.STATUS_ORDER
        if histogram.total(status)
    ]


def hourly_chart(histogram: dashboard.StatusHistogram) -> SafeString:
    starts = [timezone.localtime(start) for start in histogram.starts]
    return _safe(charts.stacked_columns(
        labels=[f"{start:%H}:00" for start in starts],
        tip_labels=[f"{start:%a %d %b %H}:00" for start in starts],
        series=status_series(histogram),
        title="Runs per hour, last 24 h, by status",
        x_label=f"hour ({timezone.get_current_timezone_name()})",
        y_label="runs",
        label_every=3,
    ))


def daily_chart(histogram: dashboard.StatusHistogram) -> SafeString:
    starts = [timezone.localtime(start) for start in histogram.starts]
    return _safe(charts.stacked_columns(
        labels=[f"{start:%d %b}" for start in starts],
        tip_labels=[f"{start:%a %d %b %Y}" for start in starts],
        series=status_series(histogram),
        title="Runs per day, last 30 days, by status",
        x_label=f"day ({timezone.get_current_timezone_name()})",
        y_label="runs",
        label_every=3,
    ))


def tenants_chart(uses: list[dashboard.TenantUse], *, by: str) -> SafeString:
    top = dashboard.top_tenants(uses, by=by, limit=TOP_TENANTS)
    in_seconds = by == "run_seconds"
    return _safe(charts.stacked_rows(
        labels=[use.slug for use in top],
        series=[charts.Series(
            name="run seconds" if in_seconds else "runs", color="#417690" if in_seconds else "#79aec8",
            values=[float(getattr(use, by)) for use in top],
        )],
        title=f"Top tenants by {'run seconds' if in_seconds else 'runs'}, last 24 h",
        x_label="run seconds (the time the monthly quota charges)" if in_seconds else "runs",
        value_format=seconds if in_seconds else charts.compact,
        links=[reverse("admin:tenants_tenant_change", args=[use.tenant_id]) for use in top],
    ))


def hosts_chart(hosts: list[dashboard.HostLoad]) -> SafeString:
    return _safe(charts.stacked_rows(
        labels=[host.host for host in hosts],
        series=[
            charts.Series(name=name, color=color, values=[float(getattr(host, attr)) for host in hosts])
            for attr, name, color in SANDBOX_SERIES
        ],
        title="Sandboxes per worker host, now",
        x_label="containers",
        width=1100,
        label_width=180,
    ))
