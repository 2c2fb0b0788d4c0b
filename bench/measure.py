"""Timing drivers and statistics: sequential latency and concurrent throughput.

A *probe* runs the program once along one path and returns its ``Timing``, or
raises ``ProbeError`` when the answer is not the expected one. Failed runs are
counted as errors and never enter the statistics, so a fast failure (a 429, a
503, an empty stdout) cannot make a path look quick.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

MAX_ERROR_SAMPLES = 5


class ProbeError(Exception):
    """One run gave a wrong answer (status, stdout, exit code) or failed outright."""


@dataclass(frozen=True)
class Timing:
    """One successful run: its latency, and the program's own run time when the path reports it."""

    total_ms: float
    inner_ms: float | None = None


Probe = Callable[[], Timing]
# Opens what one client needs (an HTTP connection, a Docker client) and yields
# its probe; each thread of a throughput run opens its own.
ProbeFactory = Callable[[], AbstractContextManager[Probe]]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Series:
    """The successful timings of one figure, and the failures kept apart from them."""

    timings: list[Timing] = field(default_factory=list)
    errors: int = 0
    warmup_errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def record(self, probe: Probe, *, warmup: bool = False) -> None:
        try:
            timing = probe()
        except Exception as exc:  # noqa: BLE001 - every failure is counted, whatever it is
            if warmup:
                self.warmup_errors += 1
            else:
                self.errors += 1
            if len(self.error_samples) < MAX_ERROR_SAMPLES:
                self.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        if not warmup:
            self.timings.append(timing)

    def merge(self, other: Series) -> None:
        self.timings += other.timings
        self.errors += other.errors
        self.warmup_errors += other.warmup_errors
        room = MAX_ERROR_SAMPLES - len(self.error_samples)
        self.error_samples += other.error_samples[: max(room, 0)]

    def latencies(self) -> list[float]:
        return [t.total_ms for t in self.timings]

    def overheads(self) -> list[float]:
        """End-to-end time minus the program's own run time, where the path reported it."""
        return [t.total_ms - t.inner_ms for t in self.timings if t.inner_ms is not None]

    def p50(self) -> float | None:
        return percentile(self.latencies(), 0.50)

    def p95(self) -> float | None:
        return percentile(self.latencies(), 0.95)

    def to_json(self) -> dict[str, Any]:
        overheads = self.overheads()
        data: dict[str, Any] = {
            "runs": len(self.timings),
            "errors": self.errors,
            "warmup_errors": self.warmup_errors,
            "error_samples": self.error_samples,
            "p50_ms": round2(self.p50()),
            "p95_ms": round2(self.p95()),
            "mean_ms": round2(sum(self.latencies()) / len(self.timings)) if self.timings else None,
            "latencies_ms": [round(v, 3) for v in self.latencies()],
        }
        if overheads:
            inner = [t.inner_ms for t in self.timings if t.inner_ms is not None]
            data["duration_ms_p50"] = round2(percentile(inner, 0.50))
            data["overhead_p50_ms"] = round2(percentile(overheads, 0.50))
            data["overhead_p95_ms"] = round2(percentile(overheads, 0.95))
        return data


@dataclass
class Throughput:
    """Runs completed per second by ``concurrency`` clients working at once."""

    concurrency: int
    seconds: float
    series: Series

    def runs_per_second(self) -> float | None:
        ok = len(self.series.timings)
        return ok / self.seconds if ok and self.seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3),
            "runs_per_second": round2(self.runs_per_second()),
            "runs": len(self.series.timings),
            "errors": self.series.errors,
            "warmup_errors": self.series.warmup_errors,
            "error_samples": self.series.error_samples,
            "latency_p50_ms": round2(self.series.p50()),
            "latency_p95_ms": round2(self.series.p95()),
        }


def round2(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn``; its result and how long it took in milliseconds."""
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def sequential(factory: ProbeFactory, *, warmup: int, runs: int) -> Series:
    """Latency: one client, one run after another, after ``warmup`` untimed runs."""
    series = Series()
    with factory() as probe:
        for _ in range(warmup):
            series.record(probe, warmup=True)
        for _ in range(runs):
            series.record(probe)
    return series


def throughput(factory: ProbeFactory, *, concurrency: int, total_runs: int) -> Throughput:
    """``concurrency`` clients, each with its own connection, share ``total_runs`` runs.

    Every client opens its connection and makes one untimed run first, then all
    start together at a barrier, so connection set-up and first-use costs stay
    out of the measured window. The window ends when the last client finishes.
    """
    per_client = math.ceil(total_runs / concurrency)
    barrier = threading.Barrier(concurrency + 1)
    parts = [Series() for _ in range(concurrency)]

    def client(part: Series) -> None:
        started = False
        try:
            with factory() as probe:
                part.record(probe, warmup=True)
                barrier.wait()
                started = True
                for _ in range(per_client):
                    part.record(probe)
        except threading.BrokenBarrierError:
            return
        except Exception as exc:  # noqa: BLE001 - reported as errors of this level
            barrier.abort()  # a client that cannot start must not leave the others waiting
            if not started:
                part.errors += per_client
            part.error_samples.append(f"client failed: {type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=client, args=(part,), daemon=True) for part in parts]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    merged = Series()
    for part in parts:
        merged.merge(part)
    return Throughput(concurrency=concurrency, seconds=seconds, series=merged)

