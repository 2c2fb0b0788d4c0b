"""The operator dashboard's reads: the history's aggregates, and the live load of each worker host.

Unlike the other selectors these are not scoped to a tenant: they are the
operator's view across all of them (the admin's landing page, staff only).

They stay fast on a long history (bench/dashboard.py measures them on a
million rows) because each one reads a range of an index and never a table:

* Counts per time bucket and status are one statement of ``COUNT`` subqueries,
  one per (status, bucket), each an index range of (status, created_at, ...).
  Grouping by a truncated timestamp instead would sort every row of the window
  (on SQLite, through a Python function per row): seconds on 30 days of a
  million rows, against tens of milliseconds.
* Percentiles are nearest-rank: a count, then ``ORDER BY duration_ms LIMIT 1
  OFFSET k`` over the window's entries of the same index, which also holds
  ``duration_ms``. It is exact, and the same SQL on SQLite and PostgreSQL.
* Per-tenant totals are per-tenant subqueries over (tenant, created_at,
  duration_ms): a seek and a range each, whatever the planner's statistics.

The indexes are in executions/migrations/0004_dashboard_indexes.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Count, IntegerField, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from executions.models import FINISHED, Execution, Status
from isol8_site import wire
from sessions_app.selectors import live_sessions_per_host
from tenants.models import Tenant

# Bottom of a stack first: the common outcome at the base, the rare ones on top.
STATUS_ORDER: tuple[str, ...] = (
    Status.OK, Status.CANCELLED, Status.OOM, Status.TIMEOUT, Status.ERROR, Status.RUNNING, Status.QUEUED,
)
UNPLACED = "unplaced"  # a session or run that no worker host holds yet


# ----------------------------------------------------------------- runs by status


@dataclass(frozen=True)
class StatusHistogram:
    """Executions created per time bucket, by status: bucket i is [starts[i], starts[i+1]), the last ends at ``end``."""

    starts: tuple[datetime, ...]
    end: datetime
    counts: dict[str, tuple[int, ...]]

    def totals(self) -> list[int]:
        return [sum(per_status[i] for per_status in self.counts.values()) for i in range(len(self.starts))]

    def total(self, status: str | None = None) -> int:
        if status is not None:
            return sum(self.counts.get(status, ()))
        return sum(self.totals())


def hour_starts(*, now: datetime, hours: int) -> list[datetime]:
    """The starts of the last ``hours`` clock hours, the current (partial) one last."""
    current = timezone.localtime(now).replace(minute=0, second=0, microsecond=0)
    return [current - timedelta(hours=hours - 1 - i) for i in range(hours)]


def day_starts(*, now: datetime, days: int) -> list[datetime]:
    """The starts of the last ``days`` calendar days (TIME_ZONE), today (partial) last."""
    today = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return [today - timedelta(days=days - 1 - i) for i in range(days)]


def runs_by_status(*, starts: Sequence[datetime], end: datetime) -> StatusHistogram:
    """How many executions were created in each bucket, by status (every status, zeros included).

    One statement of one ``COUNT(*)`` per (status, bucket), each a range of the
    (status, created_at, ...) index read without touching the table. Written
    out rather than built with the ORM: compiling hundreds of subqueries took
    longer than running them. ``COUNT(*)``, not ``COUNT(id)``: the id is not in
    the index.
    """
    meta = Execution._meta
    quote = connection.ops.quote_name
    created = meta.get_field("created_at")
    table, status_column, created_column = quote(meta.db_table), quote("status"), quote("created_at")
    one = (f"(SELECT COUNT(*) FROM {table} WHERE {status_column} = %s "
           f"AND {created_column} >= %s AND {created_column} < %s)")
    edges = [created.get_db_prep_value(edge, connection) for edge in [*starts, end]]
    cells = [(status, i) for status in STATUS_ORDER for i in range(len(starts))]
    params = [value for name, i in cells for value in (str(name), edges[i], edges[i + 1])]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join([one] * len(cells)), params)
        values = cursor.fetchone()
    counts: dict[str, list[int]] = {status: [0] * len(starts) for status in STATUS_ORDER}
    for (name, i), value in zip(cells, values, strict=True):
        counts[name][i] = int(value)
    return StatusHistogram(
        starts=tuple(starts), end=end, counts={status: tuple(row) for status, row in counts.items()}
    )


def runs_per_hour(*, now: datetime, hours: int = 24) -> StatusHistogram:
    return runs_by_status(starts=hour_starts(now=now, hours=hours), end=now)


def runs_per_day(*, now: datetime, days: int = 30) -> StatusHistogram:
    return runs_by_status(starts=day_starts(now=now, days=days), end=now)


@dataclass(frozen=True)
class Outcomes:
    """How the finished executions of a window ended."""

    finished: int
    errors: int
    timeouts: int

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.finished if self.finished else None

    @property
    def timeout_rate(self) -> float | None:
        return self.timeouts / self.finished if self.finished else None


def outcomes(histogram: StatusHistogram) -> Outcomes:
    """Error and timeout shares of the runs that finished (queued and running ones are not counted yet)."""
    return Outcomes(
        finished=sum(histogram.total(status) for status in FINISHED),
        errors=histogram.total(Status.ERROR),
        timeouts=histogram.total(Status.TIMEOUT),
    )


# ---------------------------------------------------------------------- latency


@dataclass(frozen=True)
class Latency:
    """Run time (``duration_ms``) of the finished executions created in a window."""

    runs: int
    p50_ms: int | None
    p95_ms: int | None


def nearest_rank(count: int, quantile: float) -> int:
    """The 0-based position of the ``quantile`` in ``count`` sorted values (nearest-rank definition)."""
    return max(0, math.ceil(quantile * count) - 1)


def latency(*, since: datetime, until: datetime) -> Latency:
    """p50 and p95 of the run time, exact, read from the (status, created_at, duration_ms) index."""
    timed = Execution.objects.filter(
        status__in=FINISHED, created_at__gte=since, created_at__lt=until, duration_ms__isnull=False
    ).order_by()
    runs = timed.count()
    if runs == 0:
        return Latency(runs=0, p50_ms=None, p95_ms=None)
    durations = timed.order_by("duration_ms").values_list("duration_ms", flat=True)
    return Latency(
        runs=runs, p50_ms=durations[nearest_rank(runs, 0.5)], p95_ms=durations[nearest_rank(runs, 0.95)]
    )


# ---------------------------------------------------------------------- tenants


@dataclass(frozen=True)
class TenantUse:
    """One tenant's executions in a window: how many, and their run seconds."""

    tenant_id: int
    slug: str
    runs: int
    run_seconds: float


def tenant_use(*, since: datetime, until: datetime) -> list[TenantUse]:
    """Every tenant that ran something in the window, busiest (by run seconds) first.

    Run seconds are the executions' ``duration_ms`` added up: what the monthly
    quota charges for runs (tenants/quotas.py). The history has no per-run CPU
    measurement.
    """
    window = Execution.objects.filter(tenant=OuterRef("pk"), created_at__gte=since, created_at__lt=until).order_by()
    # COUNT(*), not COUNT(id): the id is not in the index, the table would be read.
    runs = window.values("tenant").annotate(n=Count("*")).values("n")
    milliseconds = window.values("tenant").annotate(ms=Sum("duration_ms")).values("ms")
    # Filtered and sorted here, not in SQL: a WHERE or ORDER BY on the
    # annotations would run the subqueries again for every tenant.
    rows = Tenant.objects.order_by().annotate(
        runs=Coalesce(Subquery(runs, output_field=IntegerField()), Value(0)),
        ms=Coalesce(Subquery(milliseconds, output_field=IntegerField()), Value(0)),
    ).values_list("pk", "slug", "runs", "ms")
    uses = [TenantUse(tenant_id=pk, slug=slug, runs=n, run_seconds=ms / 1000) for pk, slug, n, ms in rows if n]
    return sorted(uses, key=lambda use: (-use.run_seconds, -use.runs, use.slug))


def top_tenants(uses: Sequence[TenantUse], *, by: str, limit: int = 10) -> list[TenantUse]:
    """The ``limit`` busiest of ``uses`` by ``runs`` or ``run_seconds``."""
    return sorted(uses, key=lambda use: (-getattr(use, by), use.slug))[:limit]


# ------------------------------------------------------------------------ hosts


@dataclass(frozen=True)
class HostLoad:
    """What one worker host holds now: its heartbeat's facts, live sessions and running one-shot runs.

    ``alive`` is None for a host that has no heartbeat at all (gone for good,
    but the database still places sessions or runs on it).
    """

    host: str
    alive: bool | None
    beat_age_seconds: float | None
    docker: bool | None
    warm: int
    idle: int
    sessions: int
    running: int

    @property
    def sandboxes(self) -> int:
        """Containers on the host: a running one-shot run's, each live session's, the pool's."""
        return self.running + self.sessions + self.warm + self.idle


def running_per_host() -> dict[str, int]:
    """Running executions outside sessions (a session's run uses the session's container), by host."""
    rows = (
        Execution.objects.filter(status=Status.RUNNING, session__isnull=True)
        .order_by()
        .values_list("worker_host")
        .annotate(n=Count("pk"))
    )
    return {host or UNPLACED: n for host, n in rows}


def host_load() -> tuple[list[HostLoad], str | None]:
    """Each host's load, and why the heartbeats could not be read (None when they could).

    The heartbeats come from Redis (isol8_site/wire.py, as /health reads
    them); when Redis is down the page still shows what the database knows.
    """
    error = None
    try:
        beats = wire.worker_beats()
        alive = wire.alive_hosts(beats)
    except Exception as exc:  # noqa: BLE001 - the dashboard must render when Redis is down
        beats, alive, error = {}, set(), f"heartbeats unavailable ({exc.__class__.__name__})"
    sessions = {host or UNPLACED: n for host, n in live_sessions_per_host().items()}
    running = running_per_host()
    now = time.time()
    loads = []
    for host in sorted(set(beats) | set(sessions) | set(running)):
        beat = beats.get(host)
        loads.append(HostLoad(
            host=host,
            alive=None if beat is None else host in alive,
            beat_age_seconds=None if beat is None else max(0.0, now - float(beat.get("at", now))),
            docker=None if beat is None else bool(beat.get("docker")),
            warm=int(beat.get("warm", 0)) if beat else 0,
            idle=int(beat.get("idle", 0)) if beat else 0,
            sessions=sessions.get(host, 0),
            running=running.get(host, 0),
        ))
    return loads, error


# -------------------------------------------------------------------- the page


@dataclass(frozen=True)
class Overview:
    """Everything the dashboard shows, read at ``now``."""

    now: datetime
    hourly: StatusHistogram
    daily: StatusHistogram
    outcomes_24h: Outcomes
    latency_24h: Latency
    tenants_24h: list[TenantUse]
    hosts: list[HostLoad]
    hosts_error: str | None


def overview(*, now: datetime) -> Overview:
    """Everything the dashboard shows, read at ``now``.

    "The last 24 h" is the hourly chart's window throughout, from the top of
    the hour 23 hours ago until now, so the rates, percentiles and tenants
    add up with its bars.
    """
    hourly = runs_per_hour(now=now)
    since = hourly.starts[0]
    hosts, hosts_error = host_load()
    return Overview(
        now=now,
        hourly=hourly,
        daily=runs_per_day(now=now),
        outcomes_24h=outcomes(hourly),
        latency_24h=latency(since=since, until=now),
        tenants_24h=tenant_use(since=since, until=now),
        hosts=hosts,
        hosts_error=hosts_error,
    )
