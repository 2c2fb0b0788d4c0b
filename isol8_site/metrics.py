"""Prometheus metrics: the counters and histograms every process adds to, and how they are read.

Counters and histograms are kept by prometheus_client in multiprocess mode:
each process (both uvicorn workers, the Celery worker, beat) writes its own
memory-mapped files under ``PROMETHEUS_MULTIPROC_DIR`` (settings:
ISOL8_METRICS_DIR, emptied by ``serve`` at start), and ``GET /metrics`` sums
them. What is a level rather than a count (live sessions, open streams, pool
sizes, worker heartbeats) is not kept by any process: it is read from the
database, Redis and the workers' heartbeats when scraped
(executions/apis.py MetricsApi), so a process that died leaves no stale gauge.

Labels are bounded: tenant slugs, runtimes, statuses, quota kinds, hosts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# Seconds: from a few ms (a warm python run) to the longest timeout.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

EXECUTIONS_STARTED = Counter(
    "isol8_executions_started", "Executions accepted and queued.", ["tenant", "runtime"]
)
EXECUTIONS_FINISHED = Counter(
    "isol8_executions_finished", "Executions that reached a final status.", ["tenant", "runtime", "status"]
)
QUEUE_WAIT = Histogram(
    "isol8_queue_wait_seconds", "From an execution's creation to its claim by a worker.", ["runtime"],
    buckets=LATENCY_BUCKETS,
)
RUN_TIME = Histogram(
    "isol8_run_seconds", "The program's run time in its sandbox (durationMs).", ["runtime"], buckets=LATENCY_BUCKETS
)
END_TO_END = Histogram(
    "isol8_end_to_end_seconds", "From an execution's creation to its final status.", ["runtime"],
    buckets=LATENCY_BUCKETS,
)
QUOTA_REJECTIONS = Counter(
    "isol8_quota_rejections", "Requests refused by a quota (429) or a full queue (503).", ["tenant", "kind"]
)


def started(*, tenant: str, runtime: str) -> None:
    EXECUTIONS_STARTED.labels(tenant=tenant, runtime=runtime).inc()


def claimed(*, runtime: str, waited_seconds: float) -> None:
    QUEUE_WAIT.labels(runtime=runtime).observe(max(0.0, waited_seconds))


def finished(*, tenant: str, runtime: str, status: str, run_seconds: float | None, total_seconds: float) -> None:
    EXECUTIONS_FINISHED.labels(tenant=tenant, runtime=runtime, status=status).inc()
    if run_seconds is not None:
        RUN_TIME.labels(runtime=runtime).observe(max(0.0, run_seconds))
    END_TO_END.labels(runtime=runtime).observe(max(0.0, total_seconds))


def rejected(*, tenant: str, kind: str) -> None:
    QUOTA_REJECTIONS.labels(tenant=tenant, kind=kind).inc()


class Levels(Collector):
    """Gauges computed at scrape time by ``read`` (a callable returning ``(name, help, labels, samples)``)."""

    def __init__(self, read: Any) -> None:
        self.read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, documentation, labels, samples in self.read():
            family = GaugeMetricFamily(name, documentation, labels=labels)
            for values, value in samples:
                family.add_metric(values, value)
            yield family


def exposition(levels: Any) -> bytes:
    """The text exposition: every process's counters and histograms, and the levels read now."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=settings.ISOL8_METRICS_DIR)
    registry.register(Levels(levels))
    return generate_latest(registry)
