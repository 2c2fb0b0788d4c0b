"""installPackages: a first install versus runs with the cached package set.

    .venv/bin/python bench/install.py [--runs 20]

Starts its own stack (like bench/run.py), lets the benchmark tenant install
packages, and measures, for a python set and an npm set: the first run (which
installs through the egress proxy), then runs with the same set (unpacked from
the tenant's cache), and the same program without packages. Prints a table and
leaves nothing running.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import TENANT, Stack, on_own_stack

CASES = [
    ("python", ["six"], "import six; print(six.__name__)", "six"),
    ("node", ["is-number"], "const isNumber = require('is-number'); console.log(isNumber(5))", "true"),
]


def allow_installs(slug: str) -> None:
    from django.db import connections

    from tenants.models import Tenant

    Tenant.objects.filter(slug=slug).update(allow_installs=True)
    connections.close_all()


def timed(client: httpx.Client, runtime: str, code: str, packages: list[str], expect: str) -> float:
    request: dict[str, object] = {"runtime": runtime, "code": code}
    if runtime == "node":
        request["fileExtension"] = ".cjs"
    if packages:
        request["installPackages"] = packages
    started = time.perf_counter()
    response = client.post("/execute", json={"request": request})
    elapsed = (time.perf_counter() - started) * 1000
    body = response.json()
    if response.status_code != 200 or body.get("stdout") != expect:
        raise RuntimeError(f"{runtime} run failed: {response.status_code} {response.text[:300]}")
    return elapsed


def measure(url: str, key: str, runs: int) -> list[tuple[str, float, float, float]]:
    rows = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
        for runtime, packages, code, expect in CASES:
            bare_code = "print('six')" if runtime == "python" else "console.log(true)"
            for _ in range(3):
                timed(client, runtime, bare_code, [], expect)
            bare = statistics.median(timed(client, runtime, bare_code, [], expect) for _ in range(runs))
            first = timed(client, runtime, code, packages, expect)
            cached = statistics.median(timed(client, runtime, code, packages, expect) for _ in range(runs))
            rows.append((f"{runtime} {' '.join(packages)}", first, cached, bare))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    def installs_allowed(stack: Stack) -> list[tuple[str, float, float, float]]:
        allow_installs(TENANT)
        return measure(stack.url, stack.key, args.runs)

    rows = on_own_stack(["python", "node"], installs_allowed)
    header = f"{'package set':22s} {'first install':>14s} {'cached p50':>11s} {'no packages p50':>16s}"
    print(f"\n{header}  (ms, {args.runs} runs)")
    for name, first, cached, bare in rows:
        print(f"{name:22s} {first:14.0f} {cached:11.1f} {bare:16.1f}")
    print(f"machine: {os.cpu_count()} CPUs; POST /execute end to end, launcher mode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
