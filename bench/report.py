"""The results of a benchmark run: the printed tables and the JSON file.

Every figure is shown next to its ratio to the baseline measured in the same
run (a bare ``docker exec`` into a running hardened container), because
absolute milliseconds move with the machine and its load while the ratios are
what the performance goals are stated in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.measure import Series, Throughput, percentile, round2

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NOT_AVAILABLE = "n/a (sessions not available)"


@dataclass
class RuntimeResult:
    runtime: str
    code: str
    host_argv: list[str] | None  # None: the interpreter is not installed on the host
    host: Series | None
    baseline: Series
    oneshot: Series
    session: Series | None  # None: the server has no sessions
    stream: Series
    websocket: Series  # GET /execute/ws: execute message → first stdout
    baseline_throughput: list[Throughput]
    oneshot_throughput: list[Throughput]

    def errors(self) -> int:
        series = [self.host, self.baseline, self.oneshot, self.session, self.stream, self.websocket]
        series += [t.series for t in self.baseline_throughput + self.oneshot_throughput]
        return sum(s.errors + s.warmup_errors for s in series if s is not None)

    def to_json(self) -> dict[str, Any]:
        base = self.baseline.p50()
        overheads = self.oneshot.overheads()
        by_c = {t.concurrency: t for t in self.baseline_throughput}
        return {
            "code": self.code,
            "host_process": None if self.host is None else {
                "argv": self.host_argv, **self.host.to_json(), "ratio_p50": ratio(self.host.p50(), base)
            },
            "exec_run": self.baseline.to_json(),
            "execute_oneshot": {**self.oneshot.to_json(), "ratio_p50": ratio(self.oneshot.p50(), base)},
            "execute_session": None if self.session is None else {
                **self.session.to_json(), "ratio_p50": ratio(self.session.p50(), base)
            },
            "stream_first_stdout": {
                **self.stream.to_json(), "ratio_p50": ratio(self.stream.p50(), base)
            },
            "websocket_first_stdout": {
                **self.websocket.to_json(), "ratio_p50": ratio(self.websocket.p50(), base)
            },
            "service_overhead": {
                "p50_ms": round2(percentile(overheads, 0.5)),
                "p95_ms": round2(percentile(overheads, 0.95)),
                "ratio_p50": ratio(percentile(overheads, 0.5), base),
            },
            "throughput": {
                "exec_run": [t.to_json() for t in self.baseline_throughput],
                "execute_oneshot": [
                    {**t.to_json(), "ratio": ratio(t.runs_per_second(), rps(by_c.get(t.concurrency)))}
                    for t in self.oneshot_throughput
                ],
            },
        }


def rps(t: Throughput | None) -> float | None:
    return None if t is None else t.runs_per_second()


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return round(value / baseline, 3)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def latency_row(name: str, series: Series | None, base: float | None, missing: str) -> str:
    if series is None:
        return f"  {name:<38} {missing}"
    errors = series.errors + series.warmup_errors
    return (
        f"  {name:<38} {fmt(series.p50()):>8} {fmt(series.p95()):>8} "
        f"{fmt(ratio(series.p50(), base), 2):>10} {errors:>7}"
    )


def overhead_row(series: Series, base: float | None) -> str:
    overheads = series.overheads()
    p50 = percentile(overheads, 0.5)
    return (
        f"  {'service overhead (e2e - durationMs)':<38} {fmt(p50):>8} "
        f"{fmt(percentile(overheads, 0.95)):>8} {fmt(ratio(p50, base), 2):>10} {'':>7}"
    )


def throughput_rows(result: RuntimeResult) -> list[str]:
    levels = [t.concurrency for t in result.baseline_throughput]
    base = {t.concurrency: t for t in result.baseline_throughput}
    service = {t.concurrency: t for t in result.oneshot_throughput}
    head = "".join(f"{'c=' + str(c):>9}" for c in levels)
    rows = [f"  {'throughput (runs/s)':<38}{head}"]
    rows.append(f"  {'bare exec_run':<38}" + "".join(f"{fmt(rps(base[c])):>9}" for c in levels))
    rows.append(f"  {'POST /execute one-shot':<38}" + "".join(
        f"{fmt(rps(service.get(c))):>9}" for c in levels))
    rows.append(f"  {'  ratio to exec_run':<38}" + "".join(
        f"{fmt(ratio(rps(service.get(c)), rps(base[c])), 2):>9}" for c in levels))
    rows.append(f"  {'  errors exec_run / execute':<38}" + "".join(
        f"{_tp_errors(base[c]) + ' / ' + _tp_errors(service.get(c)):>9}" for c in levels))
    return rows


def _tp_errors(t: Throughput | None) -> str:
    return "-" if t is None else str(t.series.errors + t.series.warmup_errors)


def runtime_table(result: RuntimeResult, *, runs: int, warmup: int) -> str:
    base = result.baseline.p50()
    host_name = "host process"
    if result.host_argv:
        host_name += f" ({result.host_argv[0].rsplit('/', 1)[-1]})"
    lines = [
        f"{result.runtime}: {result.code!r}  ({runs} runs after {warmup} warm-up)",
        f"  {'figure':<38} {'p50 ms':>8} {'p95 ms':>8} {'÷ exec p50':>10} {'errors':>7}",
        latency_row(host_name, result.host, base, "skipped (not installed on the host)"),
        latency_row("bare exec_run (baseline)", result.baseline, base, ""),
        latency_row("POST /execute one-shot", result.oneshot, base, ""),
        latency_row("POST /execute in a session", result.session, base, NOT_AVAILABLE),
        latency_row("/execute/stream first stdout", result.stream, base, ""),
        latency_row("/execute/ws first stdout", result.websocket, base, ""),
        overhead_row(result.oneshot, base),
        *throughput_rows(result),
    ]
    return "\n".join(lines)


def machine_header(facts: dict[str, Any]) -> str:
    scrapes = facts.get("metrics_scrapes")
    scraping = (
        f"\nGET /metrics scraped every {scrapes['every_s']:g} s while measuring: {scrapes['scrapes']} scrapes, "
        f"{scrapes['failures']} failed, p50 {scrapes['p50_ms']} ms, max {scrapes['max_ms']} ms"
        if scrapes else "\nGET /metrics not scraped while measuring"
    )
    return (
        f"machine: {facts['cpu_count']} CPUs, {facts['cpu_model']}, kernel {facts['kernel']}, "
        f"Docker {facts['docker_server']}, Python {facts['python']}\n"
        f"service: mode {facts['mode']}, {facts['server']}, pool size {facts['pool_size']}, "
        f"commit {facts['git_commit']}\n"
        f"load average: {facts['load_average_start']} at the start, "
        f"{facts.get('load_average_end', '-')} at the end\n"
        f"cpu speed (1M-iteration Python loop, ms, lower is faster): "
        f"{facts.get('cpu_speed_ms_start', '-')} at the start, {facts.get('cpu_speed_ms_end', '-')} at the end"
        + scraping
    )


def error_details(results: list[RuntimeResult], failed: dict[str, str]) -> str:
    """The first failure messages of every figure that had any, so errors are never silent."""
    lines = [f"  {runtime}: not measured: {why}" for runtime, why in failed.items()]
    for result in results:
        named: list[tuple[str, Series | None]] = [
            ("host process", result.host), ("exec_run", result.baseline),
            ("execute", result.oneshot), ("session", result.session), ("stream", result.stream),
            ("websocket", result.websocket),
        ]
        named += [(f"exec_run c={t.concurrency}", t.series) for t in result.baseline_throughput]
        named += [(f"execute c={t.concurrency}", t.series) for t in result.oneshot_throughput]
        for name, series in named:
            if series is not None and series.error_samples:
                lines.append(f"  {result.runtime} {name}: {series.errors} errors, "
                             f"{series.warmup_errors} in warm-up; e.g. {series.error_samples[0]}")
    return "errors:\n" + "\n".join(lines) if lines else "errors: none"


def write_json(document: dict[str, Any], *, mode: str, started: datetime) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{started.strftime('%Y%m%dT%H%M%SZ')}-{mode}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
