"""The isol8 benchmark: ``make bench`` or ``.venv/bin/python bench/run.py [--quick]``.

It starts its own stack (or uses ``--url``/``--key``), measures each runtime's
trivial program along every path together with its baselines, prints one table
per runtime, writes the JSON to bench/results/, and stops everything it started.
bench/README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make the repository importable (bench.*, the Django project).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench import probes
from bench.machine import cpu_speed_ms, load_average, machine_facts
from bench.measure import Series, Throughput, sequential, throughput
from bench.programs import PROGRAMS, Program
from bench.report import RuntimeResult, error_details, machine_header, runtime_table, write_json
from bench.stack import (
    DEFAULT_EVENTS_REDIS_URL,
    DEFAULT_REDIS_URL,
    BenchEnv,
    Stack,
    bench_env,
    pin_images,
    remove_containers,
    setup_django,
)


@dataclass(frozen=True)
class Plan:
    """How many runs each figure gets."""

    warmup: int
    runs: int
    concurrency: list[int]

    def throughput_runs(self, concurrency: int) -> int:
        # At least a few runs per client, so the window is not all ramp-up and tail.
        return max(self.runs, 4 * concurrency)


def names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def numbers(text: str) -> list[int]:
    return [int(part) for part in names(text)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["launcher", "exec"], default="launcher",
                        help="ISOL8_SANDBOX_MODE of the stack started here (default launcher)")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per figure (default 100, 10 with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed runs before each figure (default 10, 3 with --quick)")
    parser.add_argument("--runtimes", type=names, default=["python", "node", "bash"])
    parser.add_argument("--concurrency", type=numbers, default=[1, 2, 4, 8])
    parser.add_argument("--quick", action="store_true", help="few runs: a smoke test of the suite")
    parser.add_argument("--scrape-every", type=float, default=0,
                        help="scrape GET /metrics this often (seconds) while measuring, as Prometheus would "
                             "(default off)")
    parser.add_argument("--metrics-token", help="token or master key to scrape --url's /metrics with")
    parser.add_argument("--url", help="benchmark this running server instead of starting one")
    parser.add_argument("--key", help="API key for --url (its tenant's quotas must not limit the runs)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL,
                        help="main Redis database of the stack started here (default: bootstrap's, db 14)")
    parser.add_argument("--events-redis-url", default=DEFAULT_EVENTS_REDIS_URL,
                        help="events Redis database of the stack started here (default: bootstrap's, db 14)")
    args = parser.parse_args(argv)
    unknown = [rt for rt in args.runtimes if rt not in PROGRAMS]
    if unknown:
        parser.error(f"unknown runtimes {unknown}; known: {', '.join(PROGRAMS)}")
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency levels must be at least 1")
    if bool(args.url) != bool(args.key):
        parser.error("--url and --key go together")
    return args


def plan_from(args: argparse.Namespace) -> Plan:
    runs = args.runs if args.runs is not None else (10 if args.quick else 100)
    warmup = args.warmup if args.warmup is not None else (3 if args.quick else 10)
    return Plan(warmup=warmup, runs=runs, concurrency=sorted(set(args.concurrency)))


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_baseline(program: Program, plan: Plan, env: BenchEnv) -> tuple[Series, list[Throughput]]:
    """Bare exec_run latency and throughput, in one container that lives only for this."""
    with probes.baseline_container(runtime=program.runtime, host_label=env.baseline_host) as cid:
        factory = partial(probes.exec_run, cid, program.container_argv())
        say(f"{program.runtime}: bare exec_run latency")
        latency = sequential(factory, warmup=plan.warmup, runs=plan.runs)
        levels = []
        for c in plan.concurrency:
            say(f"{program.runtime}: bare exec_run throughput, {c} client(s)")
            levels.append(throughput(factory, concurrency=c, total_runs=plan.throughput_runs(c)))
    return latency, levels


def measure_session(program: Program, plan: Plan, url: str, key: str) -> Series | None:
    """Session latency, or None when the server refuses sessionId."""
    session_id = f"bench-{os.getpid()}-{program.runtime}"
    body = probes.execute_body(program.runtime, program.code, session_id)
    if not probes.sessions_available(url, key, body):
        say(f"{program.runtime}: sessions not available on this server")
        return None
    say(f"{program.runtime}: POST /execute in a session")
    try:
        return sequential(partial(probes.execute, url, key, body), warmup=plan.warmup, runs=plan.runs)
    finally:
        probes.delete_session(url, key, session_id)


def measure_runtime(program: Program, plan: Plan, url: str, key: str, env: BenchEnv) -> RuntimeResult:
    host_argv = program.host_argv()
    host = None
    if host_argv is not None:
        say(f"{program.runtime}: host process {host_argv[0]}")
        host = sequential(partial(probes.host_process, host_argv), warmup=plan.warmup, runs=plan.runs)
    baseline, baseline_tp = measure_baseline(program, plan, env)
    body = probes.execute_body(program.runtime, program.code)
    execute = partial(probes.execute, url, key, body)
    say(f"{program.runtime}: POST /execute one-shot")
    oneshot = sequential(execute, warmup=plan.warmup, runs=plan.runs)
    session = measure_session(program, plan, url, key)
    say(f"{program.runtime}: /execute/stream first stdout")
    first_stdout = partial(probes.stream_first_stdout, url, key, body)
    stream = sequential(first_stdout, warmup=plan.warmup, runs=plan.runs)
    say(f"{program.runtime}: /execute/ws first stdout")
    websocket = sequential(partial(probes.websocket_first_stdout, url, key, body), warmup=plan.warmup, runs=plan.runs)
    oneshot_tp = []
    for c in plan.concurrency:
        say(f"{program.runtime}: POST /execute throughput, {c} client(s)")
        oneshot_tp.append(throughput(execute, concurrency=c, total_runs=plan.throughput_runs(c)))
    return RuntimeResult(
        runtime=program.runtime, code=program.code, host_argv=host_argv, host=host,
        baseline=baseline, oneshot=oneshot, session=session, stream=stream, websocket=websocket,
        baseline_throughput=baseline_tp, oneshot_throughput=oneshot_tp,
    )


def cleanup(env: BenchEnv, *, own_stack: bool) -> None:
    """Remove every container labelled with this run's host names, and check none is left."""
    hosts = [env.host, env.baseline_host] if own_stack else [env.baseline_host]
    removed = remove_containers(hosts)
    if removed:
        say(f"removed {removed} container(s) left by the stack")
    left = remove_containers(hosts)
    if left:
        say(f"WARNING: {left} container(s) labelled {hosts} were still there and were removed")


def terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the stack.
    raise SystemExit(128 + signum)


class Scraper:
    """Scrapes GET /metrics every ``every`` seconds in a thread while the figures are measured (0: off)."""

    def __init__(self, url: str, key: str, *, every: float) -> None:
        self.url, self.key, self.every = url, key, every
        self.stop = threading.Event()
        self.times_ms: list[float] = []
        self.failures = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Scraper:
        if self.every > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30) as client:
            while not self.stop.wait(self.every):
                started = time.perf_counter()
                try:
                    ok = client.get("/metrics").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.times_ms.append((time.perf_counter() - started) * 1000)
                self.failures += 0 if ok else 1

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.times_ms)
        return {
            "every_s": self.every, "scrapes": len(ordered), "failures": self.failures,
            "p50_ms": round(ordered[len(ordered) // 2], 2) if ordered else None,
            "max_ms": round(ordered[-1], 2) if ordered else None,
        }


def run_benchmark(
    args: argparse.Namespace, plan: Plan, env: BenchEnv
) -> tuple[dict[str, Any], list[RuntimeResult]]:
    """Measure every runtime; whatever happens, stop the stack and remove its containers."""
    stack: Stack | None = None
    try:
        if args.url:
            url, key = args.url.rstrip("/"), args.key
            problem = probes.server_healthy(url)
            if problem:
                raise SystemExit(f"{url} is not healthy: {problem}")
            pin_images(args.runtimes)
        else:
            say(f"starting the stack ({args.mode} mode, worker host {env.host}, logs in {env.log_dir})")
            stack = Stack(env=env, worker_threads=max(8, *plan.concurrency), runtimes=args.runtimes)
            stack.start()
            url, key = stack.url, stack.key
        facts = machine_facts(mode=args.mode, url=args.url)
        results = []
        scrape_token = args.metrics_token if args.url else env.overrides["ISOL8_METRICS_TOKEN"]
        with Scraper(url, scrape_token or key, every=args.scrape_every) as scraper:
            for runtime in args.runtimes:
                try:
                    results.append(measure_runtime(PROGRAMS[runtime], plan, url, key, env))
                except Exception as exc:  # noqa: BLE001 - one runtime's failure must not lose the others
                    say(f"{runtime}: measurement failed: {type(exc).__name__}: {exc}")
                    facts.setdefault("failed_runtimes", {})[runtime] = f"{type(exc).__name__}: {exc}"
        if args.scrape_every:
            facts["metrics_scrapes"] = scraper.summary()
        facts["load_average_end"] = load_average()
        facts["cpu_speed_ms_end"] = cpu_speed_ms()
        return facts, results
    finally:
        if stack is not None:
            say("stopping the stack")
            stack.stop()
        cleanup(env, own_stack=not args.url)


def report(facts: dict[str, Any], results: list[RuntimeResult], plan: Plan, *, mode: str,
           started_at: datetime, elapsed: float) -> None:
    print(machine_header(facts))
    for result in results:
        print()
        print(runtime_table(result, runs=plan.runs, warmup=plan.warmup))
    print()
    print(error_details(results, facts.get("failed_runtimes", {})))
    document = {
        "started_at": started_at.isoformat(), "duration_s": round(elapsed, 1),
        "plan": {"warmup": plan.warmup, "runs": plan.runs, "concurrency": plan.concurrency},
        "machine": facts, "runtimes": {r.runtime: r.to_json() for r in results},
    }
    path = write_json(document, mode=mode, started=started_at)
    print(f"\nresults: {path}")
    print(f"took {elapsed:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_from(args)
    signal.signal(signal.SIGTERM, terminate)
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    env = bench_env(mode=args.mode, redis_url=args.redis_url, events_redis_url=args.events_redis_url)
    # The stack's logs are kept when something went wrong; they say why.
    keep_logs = not args.url
    try:
        setup_django(env)
        # The service's logging config logs every httpx request at INFO: noise here.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        facts, results = run_benchmark(args, plan, env)
        report(facts, results, plan, mode=args.mode, started_at=started_at,
               elapsed=time.monotonic() - clock)
        errors = sum(r.errors() for r in results) + len(facts.get("failed_runtimes", {}))
        keep_logs = keep_logs and errors > 0
        return 1 if errors else 0
    finally:
        if keep_logs:
            say(f"logs kept in {env.log_dir}")
        else:
            shutil.rmtree(env.data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
