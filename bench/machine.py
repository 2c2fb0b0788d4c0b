"""Facts about the machine a result was measured on, stored next to the figures.

Latencies are only comparable between runs on the same kind of machine, and a
busy machine (load average) explains a noisy run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.stack import ROOT


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def docker_version() -> str:
    from sandbox import dockerapi

    try:
        return str(dockerapi.client().version().get("Version", "unknown"))
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        return f"unreachable ({exc})"


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def cpu_speed_ms() -> float:
    """Time of a fixed pure-Python loop (best of 3): how fast this machine is right now.

    On a shared VM the same code runs up to ~1.5x slower at times; this number,
    taken at the start and the end, tells a slow run from a slow service.
    """
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def machine_facts(*, mode: str, url: str | None) -> dict[str, Any]:
    from django.conf import settings

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "docker_server": docker_version(),
        "python": sys.version.split()[0],
        "mode": mode,
        "server": url or "own stack",
        "pool_size": settings.ISOL8_POOL_SIZE if url is None else None,
        "git_commit": git_commit(),
        "load_average_start": load_average(),
        "cpu_speed_ms_start": cpu_speed_ms(),
    }
