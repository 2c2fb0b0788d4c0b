"""The admin dashboard on a long history: ``.venv/bin/python bench/dashboard.py [--rows 1000000]``.

It builds a throwaway SQLite database in a temporary directory (migrations
applied, so the dashboard's indexes are those of the service), fills it with
``--rows`` executions spread over 30 days (tenants of very different sizes,
every status, three runtimes, three worker hosts, a daily rhythm), then times

* each read the dashboard makes (executions/dashboard.py, the functions the
  page calls), and
* the whole landing page and the busiest tenant's page, rendered through
  Django's test client (URL resolution, middleware, session, templates, the
  reads, the heartbeats from Redis), with the SQL time of each render,

and prints the median and p95 of ``--repeat`` timed repetitions after
``--warmup`` untimed ones. The rows are written with raw ``INSERT``s in
batches (the ORM's ``bulk_create`` would stamp ``created_at`` with now);
everything else goes through the models and services. The database has no
``ANALYZE`` statistics, like a real deployment's: the plans must not need
them. ``--explain`` prints SQLite's plan of every query the page makes.

It uses its own Redis database (14, as bench/run.py) and run queue (so its
heartbeats are its own cluster's), and
removes the heartbeats it wrote and its directory at the end (``--keep``
keeps the directory and prints its path).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository importable (bench.*, the Django project).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model, cpu_speed_ms, git_commit, load_average
from bench.measure import percentile
from bench.stack import DEFAULT_EVENTS_REDIS_URL, DEFAULT_REDIS_URL, bench_env, setup_django

DAYS = 30
BATCH = 20_000
STATUSES = (("ok", 90.5), ("error", 2.0), ("timeout", 3.0), ("oom", 1.0), ("cancelled", 3.5))
RUNTIMES = (("python", 60), ("node", 25), ("bash", 15))
HOSTS = ("worker-a", "worker-b", "worker-c")
TIMEOUTS_MS = (2_000, 5_000, 10_000, 30_000)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="executions in the history")
    parser.add_argument("--tenants", type=int, default=12, help="tenants (sizes fall off as 1/rank)")
    parser.add_argument("--sessions", type=int, default=40, help="live sessions spread over the hosts")
    parser.add_argument("--repeat", type=int, default=15, help="timed repetitions of each figure")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions before them")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--explain", action="store_true", help="print the plan of every query of the page")
    parser.add_argument("--keep", action="store_true", help="keep the database directory")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--events-redis-url", default=DEFAULT_EVENTS_REDIS_URL)
    return parser.parse_args(argv)


# ------------------------------------------------------------------- the history


def history(rng: random.Random, *, rows: int, tenant_ids: list[int], now: datetime) -> Iterator[dict[str, Any]]:
    """``rows`` executions, oldest first, like the table a month of service leaves.

    The busiest tenant runs ``n`` times as much as the ``n``-th; there are
    more runs in the (UTC) afternoon than at night; the last minute still has
    queued and running ones.
    """
    start = now - timedelta(days=DAYS)
    span = DAYS * 86_400.0
    offsets: list[float] = []
    while len(offsets) < rows:
        offset = rng.random() * span
        hour = ((start.timestamp() + offset) % 86_400) / 3_600
        if rng.random() < 0.55 + 0.45 * math.sin((hour - 8) / 24 * 2 * math.pi):
            offsets.append(offset)
    offsets.sort()
    tenants = rng.choices(tenant_ids, [1 / (rank + 1) for rank in range(len(tenant_ids))], k=rows)
    statuses = rng.choices([s for s, _ in STATUSES], [w for _, w in STATUSES], k=rows)
    runtimes = rng.choices([r for r, _ in RUNTIMES], [w for _, w in RUNTIMES], k=rows)
    for i, offset in enumerate(offsets):
        created = start + timedelta(seconds=offset)
        status = statuses[i]
        if span - offset < 60:  # the last minute: some are still on their way
            status = rng.choices(["queued", "running", status], [5, 10, 85])[0]
        timeout_ms = rng.choice(TIMEOUTS_MS)
        duration: int | None = max(1, int(rng.lognormvariate(3.8, 0.9)))
        if status == "timeout":
            duration = timeout_ms + rng.randint(0, 40)
        elif status in ("queued", "error"):
            duration = None  # never ran (an error is the service failing to run it)
        elif status == "running":
            duration = None
        started = None if status == "queued" else created + timedelta(milliseconds=rng.randint(3, 60))
        finished = None if status in ("queued", "running") or started is None else (
            started + timedelta(milliseconds=duration or 0))
        yield {
            "id": uuid.UUID(int=rng.getrandbits(128), version=4),
            "tenant_id": tenants[i],
            "runtime": runtimes[i],
            "code": "print(1)" if runtimes[i] == "python" else "echo 1",
            "status": status,
            "exit_code": None if finished is None else (0 if status == "ok" else 1),
            "timed_out": status == "timeout",
            "error": "the worker failed to run this execution" if status == "error" else "",
            "limits": {"timeoutMs": timeout_ms, "memory": 512 * 1024**2, "cpu": 1.0},
            "created_at": created,
            "started_at": started,
            "finished_at": finished,
            "duration_ms": duration,
            "worker_host": "" if status == "queued" else HOSTS[i % len(HOSTS)],
        }


def load(rows: Iterator[dict[str, Any]], *, total: int) -> None:
    """Insert the rows with one parameterised INSERT per batch, every column adapted as the ORM would."""
    from django.db import connection, transaction

    from executions.models import Execution

    fields = Execution._meta.concrete_fields
    constants = {f.attname: f.get_db_prep_save(f.get_default(), connection) for f in fields}
    columns = ", ".join(connection.ops.quote_name(str(f.column)) for f in fields)
    sql = (f"INSERT INTO {connection.ops.quote_name(Execution._meta.db_table)} ({columns}) "
           f"VALUES ({', '.join(['%s'] * len(fields))})")
    batch: list[list[Any]] = []
    done = 0
    started = time.monotonic()

    def flush() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(sql, batch)
        batch.clear()

    for row in rows:
        batch.append([
            f.get_db_prep_save(row[f.attname], connection) if f.attname in row else constants[f.attname]
            for f in fields
        ])
        if len(batch) == BATCH:
            flush()
            done += BATCH
            if done % 200_000 == 0:
                print(f"  {done:,} of {total:,} rows, {time.monotonic() - started:.0f} s", flush=True)
    if batch:
        flush()


def setup_cluster(*, tenants: int, sessions: int, rows: int, seed: int) -> dict[str, Any]:
    """Tenants, an operator, the history, live sessions and the hosts' heartbeats."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from isol8_site import wire
    from sessions_app.models import Session, SessionState
    from tenants.services import tenant_create

    rng = random.Random(seed)
    made = [tenant_create(slug=f"tenant-{i + 1:02d}", name=f"Tenant {i + 1}") for i in range(tenants)]
    operator = get_user_model().objects.create_superuser("operator", "operator@example.com", "bench-password")
    started = time.monotonic()
    load(history(rng, rows=rows, tenant_ids=[t.pk for t in made], now=timezone.now()), total=rows)
    load_seconds = time.monotonic() - started
    Session.objects.bulk_create([
        Session(tenant=rng.choice(made), session_id=f"s-{i}", runtime="python", state=SessionState.ACTIVE,
                worker_host=HOSTS[i % len(HOSTS)], container_id=f"c{i:05d}")
        for i in range(sessions)
    ])
    for host in HOSTS:
        wire.beat(host, {"docker": True, "warm": 2, "idle": rng.randint(0, 4)})
    return {"operator": operator, "busiest": made[0], "load_seconds": load_seconds}


# ------------------------------------------------------------------ measurement


def timed(fn: Callable[[], Any], *, warmup: int, repeat: int) -> tuple[list[float], float]:
    """The timed repetitions in ms, and the very first call's (the coldest)."""
    first = 0.0
    samples = []
    for i in range(warmup + repeat):
        started = time.perf_counter()
        fn()
        elapsed = (time.perf_counter() - started) * 1000
        if i == 0:
            first = elapsed
        if i >= warmup:
            samples.append(elapsed)
    return samples, first


class SqlClock:
    """Adds up the time spent in the database driver (``connection.execute_wrapper``), per query."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.queries = 0

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.ms += (time.perf_counter() - started) * 1000
            self.queries += 1


def page_sql_ms(client: Any, path: str, *, repeat: int) -> tuple[list[float], int]:
    """The SQL time of each render of ``path`` (rows fetched included), and its number of queries."""
    from django.db import connection

    sql_ms = []
    queries = 0
    for _ in range(repeat):
        clock = SqlClock()
        with connection.execute_wrapper(clock):
            response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        sql_ms.append(clock.ms)
        queries = clock.queries
    return sql_ms, queries


def explain(client: Any, path: str) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        client.get(path)
    print(f"\nplans of the {len(captured.captured_queries)} queries of GET {path}:")
    for query in captured.captured_queries:
        sql = query["sql"]
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
            steps = sorted({row[-1] for row in cursor.fetchall() if "INDEX" in row[-1] or "SCAN" in row[-1]})
        print(f"  {float(query['time']) * 1000:7.1f} ms  {sql[:90]}{'...' if len(sql) > 90 else ''}")
        for step in steps[:4]:
            print(f"             {step}")


def row(name: str, samples: list[float], first: float | None = None, extra: str = "") -> str:
    p95 = percentile(samples, 0.95) or 0.0
    cold = f"{first:9.1f}" if first is not None else " " * 9
    return f"{name:<44} {statistics.median(samples):9.1f} {p95:9.1f} {cold}  {extra}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = bench_env(mode="launcher", redis_url=args.redis_url, events_redis_url=args.events_redis_url)
    setup_django(env)
    # One JSON line per request would drown the table.
    logging.getLogger("isol8.request").setLevel(logging.WARNING)

    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import override_settings
    from django.utils import timezone

    from executions import dashboard
    from isol8_site import wire

    started = time.monotonic()
    try:
        call_command("migrate", verbosity=0)
        print(f"database: {settings.DATABASES['default']['NAME']}")
        print(f"generating {args.rows:,} executions over {DAYS} days for {args.tenants} tenants ...", flush=True)
        cluster = setup_cluster(tenants=args.tenants, sessions=args.sessions, rows=args.rows, seed=args.seed)
        size_mb = Path(settings.DATABASES["default"]["NAME"]).stat().st_size / 1e6
        print(f"loaded in {cluster['load_seconds']:.0f} s; database file {size_mb:.0f} MB\n")

        now = timezone.now
        since = dashboard.hour_starts(now=now(), hours=24)[0]
        reads: list[tuple[str, Callable[[], Any]]] = [
            ("runs per hour (24 buckets x 7 statuses)", lambda: dashboard.runs_per_hour(now=now())),
            ("runs per day (30 buckets x 7 statuses)", lambda: dashboard.runs_per_day(now=now())),
            ("p50/p95 run time, last 24 h", lambda: dashboard.latency(since=since, until=now())),
            ("tenants' runs and run seconds, last 24 h", lambda: dashboard.tenant_use(since=since, until=now())),
            ("hosts: heartbeats, sessions, running", dashboard.host_load),
            ("overview() = every read of the page", lambda: dashboard.overview(now=now())),
        ]
        facts = (f"machine: {sys.platform}, {os.cpu_count()} CPUs, {cpu_model()}; "
                 f"Python {sys.version.split()[0]}; commit {git_commit()}; load {load_average()}; "
                 f"cpu speed {cpu_speed_ms()} ms")
        print(facts)
        print(f"{args.rows:,} rows; {args.warmup} warm-up and {args.repeat} timed repetitions; times in ms\n")
        print(f"{'figure':<44} {'median':>9} {'p95':>9} {'first':>9}")
        for name, fn in reads:
            samples, first = timed(fn, warmup=args.warmup, repeat=args.repeat)
            print(row(name, samples, first), flush=True)

        # The manifest storage would need `collectstatic` into the bench's
        # directory: the page's markup and reads are the same without it.
        with override_settings(STORAGES={**settings.STORAGES, "staticfiles": {
                "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}):
            client = Client()
            client.force_login(cluster["operator"])
            pages = [("GET /admin/ (the dashboard)", "/admin/"),
                     ("GET tenant page (quota meters)", f"/admin/tenants/tenant/{cluster['busiest'].pk}/change/")]
            for name, path in pages:
                samples, first = timed(partial(client.get, path), warmup=args.warmup, repeat=args.repeat)
                sql_ms, queries = page_sql_ms(client, path, repeat=args.repeat)
                print(row(name, samples, first, f"{len(client.get(path).content) / 1024:.0f} KiB"))
                print(row(f"  of which SQL ({queries} queries)", sql_ms))
            if args.explain:
                explain(client, "/admin/")
        print(f"\nload average at the end {load_average()}; whole run {time.monotonic() - started:.0f} s")
        return 0
    finally:
        for host in HOSTS:
            try:
                wire.forget(host)
            except Exception as exc:  # noqa: BLE001 - cleaning up; say so and go on
                print(f"could not remove the heartbeat of {host}: {exc}")
        if args.keep:
            print(f"kept {env.data_dir}")
        else:
            shutil.rmtree(env.data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
