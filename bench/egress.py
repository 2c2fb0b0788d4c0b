"""network "filtered": what the egress gateway adds to a run, and its download throughput.

    .venv/bin/python bench/egress.py [--runs 30] [--size-url URL]

Starts its own stack (like bench/run.py), lets the benchmark tenant use
``filtered``, and measures in the same run:

1. latency: a trivial python run with ``network: "none"`` versus the same run
   with ``network: "filtered"`` that makes no connection (POST /execute end to
   end, p50 and p95, interleaved so load drifts hit both alike);
2. throughput: one download of the same file (default: a ~10 MB wheel from
   files.pythonhosted.org) through the gateway from inside a sandbox versus
   directly from this host (the baseline), best and median of a few tries, MB/s.

Prints a table and leaves nothing running.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import percentile
from bench.stack import (
    DEFAULT_EVENTS_REDIS_URL,
    DEFAULT_REDIS_URL,
    TENANT,
    BenchEnv,
    Stack,
    bench_env,
    raise_quotas,
    remove_containers,
    setup_django,
)

# A file on the registry these machines reach: a numpy wheel (~16 MB), its URL asked of PyPI.
DEFAULT_PACKAGE = "numpy"


def default_url() -> str:
    index = f"https://pypi.org/pypi/{DEFAULT_PACKAGE}/json"
    with urllib.request.urlopen(index, timeout=30) as response:
        files = json.load(response)["urls"]
    wheels = [f["url"] for f in files if "manylinux" in f["filename"] and "x86_64" in f["filename"]]
    return urljoin(index, wheels[0] if wheels else files[0]["url"])  # a mirror may answer relative URLs


FILTER = {"whitelist": [r"^files\.pythonhosted\.org$", r"^pypi\.org$"]}

DOWNLOAD = """
import sys, time, urllib.request
started = time.perf_counter()
size = 0
with urllib.request.urlopen(sys.argv[1] if len(sys.argv) > 1 else URL, timeout=120) as r:
    while chunk := r.read(1 << 16):
        size += len(chunk)
print(size, time.perf_counter() - started)
"""


def allow_filtered(slug: str) -> None:
    from django.db import connections

    from tenants.models import Tenant

    Tenant.objects.filter(slug=slug).update(allowed_networks=["none", "filtered"])
    connections.close_all()


def timed_run(client: httpx.Client, options: dict[str, object]) -> float:
    started = time.perf_counter()
    response = client.post("/execute", json={"request": {"runtime": "python", "code": "print(1)"}, "options": options})
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200 or response.json().get("stdout") != "1":
        raise RuntimeError(f"run failed: {response.status_code} {response.text[:300]}")
    return elapsed


def latency(client: httpx.Client, runs: int) -> dict[str, list[float]]:
    none: dict[str, object] = {"network": "none"}
    filtered: dict[str, object] = {"network": "filtered", "networkFilter": FILTER}
    for _ in range(5):
        timed_run(client, none)
        timed_run(client, filtered)
    series: dict[str, list[float]] = {"none": [], "filtered": []}
    for _ in range(runs):
        series["none"].append(timed_run(client, none))
        series["filtered"].append(timed_run(client, filtered))
    return series


def download_in_sandbox(client: httpx.Client, url: str) -> tuple[int, float]:
    body = {
        "request": {"runtime": "python", "code": f"URL = {url!r}\n{DOWNLOAD}", "timeoutMs": 120_000},
        "options": {"network": "filtered", "networkFilter": FILTER, "memoryLimit": "512m"},
    }
    response = client.post("/execute", json=body, timeout=180)
    answer = response.json()
    if response.status_code != 200 or answer.get("exitCode") != 0:
        raise RuntimeError(f"download failed: {response.status_code} {response.text[:400]}")
    size, seconds = answer["stdout"].split()
    return int(size), float(seconds)


def download_direct(url: str) -> tuple[int, float]:
    started = time.perf_counter()
    size = 0
    with urllib.request.urlopen(url, timeout=120) as response:
        while chunk := response.read(1 << 16):
            size += len(chunk)
    return size, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--downloads", type=int, default=5)
    parser.add_argument("--size-url", default="", help="a file to download (default: a numpy wheel)")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the service's config logs every request
    url = args.size_url or default_url()
    env: BenchEnv = bench_env(mode="launcher", redis_url=DEFAULT_REDIS_URL, events_redis_url=DEFAULT_EVENTS_REDIS_URL)
    setup_django(env)
    stack = Stack(env=env, worker_threads=8, runtimes=["python"])
    try:
        stack.start()
        raise_quotas(TENANT)
        allow_filtered(TENANT)
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.key}"}, timeout=120) as client:
            series = latency(client, args.runs)
            through, direct = [], []
            for _ in range(args.downloads):  # interleaved, like the latency runs
                through.append(download_in_sandbox(client, url))
                direct.append(download_direct(url))
    finally:
        stack.stop()
        remove_containers([env.host])

    print(f"\nlatency of a trivial python run (ms, {args.runs} runs each, interleaved)")
    print(f"{'network':10s} {'p50':>8s} {'p95':>8s}")
    p50 = {}
    for name, values in series.items():
        p50[name] = statistics.median(values)
        print(f"{name:10s} {p50[name]:8.1f} {percentile(values, 0.95) or 0:8.1f}")
    print(f"filtered - none at p50: {p50['filtered'] - p50['none']:+.1f} ms "
          f"(ratio {p50['filtered'] / p50['none']:.2f})")

    def rates(samples: list[tuple[int, float]]) -> list[float]:
        return [size / seconds / 1e6 for size, seconds in samples]

    size = through[0][0]
    print(f"\ndownload of {size / 1e6:.1f} MB ({args.downloads} tries each, MB/s)")
    print(f"{'path':22s} {'median':>8s} {'best':>8s}")
    for name, samples in (("through the gateway", through), ("direct from the host", direct)):
        values = rates(samples)
        print(f"{name:22s} {statistics.median(values):8.1f} {max(values):8.1f}")
    ratio = statistics.median(rates(through)) / statistics.median(rates(direct))
    print(f"gateway / direct at the median: {ratio:.2f}")
    print(f"machine: {os.cpu_count()} CPUs; launcher mode; {json.dumps({'url': url})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
