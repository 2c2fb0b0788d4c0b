"""Capacity figures (issue 19, point 5), over one and then two Docker engines on this machine.

    .venv/bin/python bench/capacity.py [--runs 400] [--clients 4,8] [--database-url postgres://...]

It starts the benchmark's own stack (bench/stack.py: web, worker, beat on this
machine's engine, host A), measures, then adds engine b (scripts/docker-engine.sh)
with a second worker (host B) and measures again, in the same run:

* throughput of python ``print(1)`` one-shot runs at each client count, and
  per core of this machine (both engines share its cores);
* CPU seconds per run of each part (web processes, workers, both Redis
  servers, the Docker engines with their containerd and shims, the containers)
  from /proc: the part closest to saturating the machine is the bottleneck;
* Redis load per 1,000 runs (commands, from INFO), and the database's
  (PostgreSQL with --database-url: transactions and rows written; SQLite: none);
* memory of a warm pool sandbox, of an idle session's container, and of the
  worker per session it holds (cgroup figures as Docker reports them).

Everything it starts is its own and is stopped by PID; containers by its labels.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import probes
from bench.machine import machine_facts
from bench.measure import throughput
from bench.stack import (
    DEFAULT_EVENTS_REDIS_URL,
    DEFAULT_REDIS_URL,
    ROOT,
    TENANT,
    Stack,
    bench_env,
    remove_containers,
    setup_django,
    stop_process,
)

ENGINE = "b"
TICKS = os.sysconf("SC_CLK_TCK")
BODY = probes.execute_body("python", "print(1)")


def engine(action: str) -> str:
    done = subprocess.run([str(ROOT / "scripts" / "docker-engine.sh"), action, ENGINE],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


# ------------------------------------------------------------------ CPU by part


def processes() -> dict[int, tuple[str, int, str]]:
    """pid -> (command line, parent pid, comm) of every process."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        found[int(name)] = (cmdline, int(stat.rsplit(")", 1)[1].split()[1]), comm)
    return found


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def descendants(root: int, table: dict[int, tuple[str, int, str]]) -> set[int]:
    found, todo = {root}, [root]
    while todo:
        parent = todo.pop()
        children = [pid for pid, (_, ppid, _) in table.items() if ppid == parent and pid not in found]
        found.update(children)
        todo.extend(children)
    return found


def part_of(pid: int, cmdline: str, comm: str, web: set[int]) -> str | None:
    if pid in web:
        return "web"
    if "celery" in cmdline and " worker" in cmdline:
        return "workers"
    if comm == "redis-server":
        return "redis"
    if comm in ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc"):
        return "docker engines"
    return None


# Every container's CPU, removed ones included: cpuacct charges reach the parent cgroup of
# each engine's containers (cgroup v1; docker for this engine, isol8-docker-b for engine b).
CONTAINER_CGROUPS = (Path("/sys/fs/cgroup/cpuacct/docker"), Path(f"/sys/fs/cgroup/cpuacct/isol8-docker-{ENGINE}"))


def containers_cpu_seconds() -> float:
    total = 0
    for cgroup in CONTAINER_CGROUPS:
        usage = cgroup / "cpuacct.usage"
        if usage.exists():
            total += int(usage.read_text())
    return total / 1e9


@dataclass
class CpuSample:
    parts: dict[str, float]


def cpu_sample(stack_pids: dict[str, int]) -> CpuSample:
    table = processes()
    web = descendants(stack_pids["web"], table)
    parts: dict[str, float] = {}
    for pid, (cmdline, _parent, comm) in table.items():
        part = part_of(pid, cmdline, comm, web)
        if part is not None:
            parts[part] = parts.get(part, 0.0) + cpu_seconds(pid)
    parts["containers"] = containers_cpu_seconds()
    times = os.times()
    parts["bench clients"] = times.user + times.system
    return CpuSample(parts=parts)


# ------------------------------------------------------------- Redis, database


def redis_commands() -> dict[str, int]:
    import redis

    counts = {}
    for name, url in (("main", DEFAULT_REDIS_URL), ("events", DEFAULT_EVENTS_REDIS_URL)):
        client = redis.Redis.from_url(os.environ.get("REDIS_URL" if name == "main" else "ISOL8_EVENTS_REDIS_URL",
                                                     url))
        counts[name] = int(client.info("stats")["total_commands_processed"])
        client.close()
    return counts


def database_counters() -> dict[str, int] | None:
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched "
            "FROM pg_stat_database WHERE datname = current_database()"
        )
        row = cursor.fetchone()
    connection.close()
    return dict(zip(("transactions", "inserted", "updated", "deleted", "fetched"), map(int, row), strict=True))


# ----------------------------------------------------------------------- memory


def container_memory_mib(container: Any) -> float:
    import docker

    try:
        stats = container.stats(stream=False)["memory_stats"]
    except docker.errors.NotFound:
        return float("nan")
    cache = stats.get("stats", {}).get("total_inactive_file", stats.get("stats", {}).get("inactive_file", 0))
    return (stats["usage"] - cache) / 2**20


def median_of(values: list[float]) -> float:
    known = [v for v in values if v == v]  # NaN: the container went away meanwhile
    return statistics.median(known) if known else float("nan")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_session_caps() -> None:
    """The bench tenant may hold the sessions the memory figures make."""
    from django.db import connections

    from tenants.models import Tenant

    Tenant.objects.filter(slug=TENANT).update(max_sessions=None, max_session_cpus=None, max_session_memory=None)
    connections.close_all()


def memory_figures(url: str, key: str, host: str, worker_pid: int, sessions: int = 10) -> dict[str, float]:
    import docker

    client = docker.from_env()
    try:
        warm = [c for c in client.containers.list(filters={"label": f"isol8.host={host}"})
                if not c.labels.get("isol8.session")]
        warm_mib = median_of([container_memory_mib(c) for c in warm])
        before = rss_mib(worker_pid)
        names = [f"cap-{i}" for i in range(sessions)]
        with probes.api_client(url, key) as api:
            for name in names:
                probes.check_result(api.post("/execute", json={**BODY, "sessionId": name}))
            time.sleep(2)
            held = [c for c in client.containers.list(filters={"label": f"isol8.host={host}"})
                    if c.labels.get("isol8.session")]
            session_mib = median_of([container_memory_mib(c) for c in held])
            worker_per_session = (rss_mib(worker_pid) - before) / sessions
            for name in names:
                api.delete(f"/session/{name}")
    finally:
        client.close()
    return {"warm_sandbox_mib": warm_mib, "session_container_mib": session_mib,
            "worker_mib_per_session": worker_per_session}


# ------------------------------------------------------------------------ runs


def measure_level(url: str, key: str, *, clients: int, runs: int, stack_pids: dict[str, int]) -> dict[str, Any]:
    factory: Callable[[], Any] = partial(probes.execute, url, key, BODY)
    throughput(factory, concurrency=clients, total_runs=clients * 5)  # warm the pools
    cpu_before, redis_before, db_before = cpu_sample(stack_pids), redis_commands(), database_counters()
    result = throughput(factory, concurrency=clients, total_runs=runs)
    cpu_after, redis_after, db_after = cpu_sample(stack_pids), redis_commands(), database_counters()
    done = max(1, len(result.series.timings))
    per_run = {part: (cpu_after.parts.get(part, 0) - cpu_before.parts.get(part, 0)) / done * 1000
               for part in sorted(set(cpu_after.parts) | set(cpu_before.parts))}
    figures: dict[str, Any] = {
        "clients": clients,
        "runs": len(result.series.timings),
        "errors": result.series.errors,
        "runs_per_second": result.runs_per_second() or 0.0,
        "runs_per_second_per_core": (result.runs_per_second() or 0.0) / (os.cpu_count() or 1),
        "cpu_ms_per_run": per_run,
        "redis_commands_per_1000_runs": {name: (redis_after[name] - redis_before[name]) * 1000 / done
                                         for name in redis_after},
    }
    if db_before is not None and db_after is not None:
        figures["database_per_1000_runs"] = {k: (db_after[k] - db_before[k]) * 1000 / done for k in db_after}
    return figures


def report(title: str, levels: list[dict[str, Any]]) -> None:
    print(f"\n== {title}")
    for level in levels:
        cpu = ", ".join(f"{part} {ms:.1f}" for part, ms in level["cpu_ms_per_run"].items())
        print(f"  {level['clients']} clients: {level['runs_per_second']:.1f} runs/s "
              f"({level['runs_per_second_per_core']:.1f} per core), errors {level['errors']}")
        print(f"    CPU ms per run: {cpu}")
        redis = ", ".join(f"{k} {v:.0f}" for k, v in level["redis_commands_per_1000_runs"].items())
        print(f"    Redis commands per 1,000 runs: {redis}")
        if "database_per_1000_runs" in level:
            db = ", ".join(f"{k} {v:.0f}" for k, v in level["database_per_1000_runs"].items())
            print(f"    PostgreSQL per 1,000 runs: {db}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400, help="timed runs per level")
    parser.add_argument("--clients", default="4,8", help="client counts, comma-separated")
    parser.add_argument("--worker-threads", type=int, default=16)
    parser.add_argument("--database-url", help="PostgreSQL URL of an empty database (default: SQLite)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    env = bench_env(mode="launcher", redis_url=DEFAULT_REDIS_URL, events_redis_url=DEFAULT_EVENTS_REDIS_URL)
    if args.database_url:
        env.overrides["DATABASE_URL"] = args.database_url
    env.overrides["ISOL8_HEARTBEAT_SECONDS"] = "1"
    setup_django(env)
    clients = [int(c) for c in args.clients.split(",")]
    print(machine_facts(mode="launcher", url=None))
    stack = Stack(env=env, worker_threads=args.worker_threads, runtimes=["python"])
    host_b = f"{env.host}-b"
    worker_b = None
    try:
        stack.start()
        open_session_caps()
        pids = {name: proc.pid for name, proc in stack.procs.items()}
        memory = memory_figures(stack.url, stack.key, env.host, stack.procs["worker"].pid)
        one = [measure_level(stack.url, stack.key, clients=c, runs=args.runs, stack_pids=pids) for c in clients]
        socket = engine("start") and f"unix:///run/isol8-docker-{ENGINE}.sock"
        log = open(env.log_dir / "worker-b.log", "ab")  # noqa: SIM115 - closed below
        queues = f"{env.overrides['ISOL8_RUN_QUEUE']},isol8.host.{host_b}"
        worker_b = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "isol8_site", "worker", "-P", "threads",
             "-c", str(args.worker_threads), "-Q", queues, "-n", f"worker@{host_b}", "-l", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env={**os.environ, "DOCKER_HOST": socket, "ISOL8_WORKER_HOST": host_b},
            stdout=log, stderr=subprocess.STDOUT,
        )
        from isol8_site import wire

        deadline = time.monotonic() + 90
        while not wire.host_usable(host_b, wire.worker_beats()):
            if time.monotonic() > deadline:
                raise RuntimeError("worker B did not come up")
            time.sleep(0.5)
        two = [measure_level(stack.url, stack.key, clients=c, runs=args.runs, stack_pids=pids) for c in clients]
    finally:
        if worker_b is not None:
            stop_process(worker_b)
        stack.stop()
        remove_containers([env.host, env.baseline_host])
        engine("stop")
    print("\n== memory (host A, python)")
    print(f"  warm pool sandbox: {memory['warm_sandbox_mib']:.1f} MiB; idle session container: "
          f"{memory['session_container_mib']:.1f} MiB; worker RSS per session held: "
          f"{memory['worker_mib_per_session']:.2f} MiB")
    report("one host (this machine's engine)", one)
    report("two hosts (this engine + engine b, same machine)", two)
    for a, b in zip(one, two, strict=True):
        print(f"  two hosts ÷ one at {a['clients']} clients: {b['runs_per_second'] / a['runs_per_second']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
