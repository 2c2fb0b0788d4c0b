"""Stateful sessions: a trivial cell in a warm interpreter versus the runs that start a process.

    .venv/bin/python bench/stateful.py [--runs 50]

Starts its own stack in launcher mode (like bench/run.py) and measures, for
python and node, POST /execute end to end, interleaved in the same run:

- ``cell``: a trivial cell (``1 + 1``) in a warm stateful session
- ``session``: the same program in a warm session that is not stateful (a new process per call)
- ``one-shot``: the same program without a session (a pooled container)

Prints p50 and p95 of each and the ratios cell / one-shot and cell / session,
and leaves nothing running.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import percentile
from bench.stack import on_own_stack

# (runtime, the cell's code and the value it gives, a program printing the same)
CASES = [
    ("python", "1 + 1", "2", "print(1 + 1)"),
    ("node", "1 + 1", "2", "console.log(1 + 1)"),
]
KINDS = ("cell", "session", "one-shot")


def timed(client: httpx.Client, body: dict[str, Any], check: Any) -> float:
    started = time.perf_counter()
    response = client.post("/execute", json=body)
    elapsed = (time.perf_counter() - started) * 1000
    answer = response.json()
    if response.status_code != 200 or not check(answer):
        raise RuntimeError(f"run failed: {response.status_code} {response.text[:300]}")
    return elapsed


def bodies(runtime: str, cell: str, value: str, program: str) -> dict[str, tuple[dict[str, Any], Any]]:
    def printed(answer: dict[str, Any]) -> bool:
        return bool(answer.get("stdout") == value)

    def valued(answer: dict[str, Any]) -> bool:
        return bool((answer.get("value") or {}).get("text/plain") == value)

    return {
        "cell": ({"request": {"runtime": runtime, "code": cell}, "sessionId": f"bench-cell-{runtime}",
                  "stateful": True}, valued),
        "session": ({"request": {"runtime": runtime, "code": program}, "sessionId": f"bench-plain-{runtime}"},
                    printed),
        "one-shot": ({"request": {"runtime": runtime, "code": program}}, printed),
    }


def measure(url: str, key: str, runs: int) -> list[tuple[str, dict[str, list[float]]]]:
    rows = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        for runtime, cell, value, program in CASES:
            cases = bodies(runtime, cell, value, program)
            for body, check in cases.values():
                for _ in range(5):  # warm: the sessions' containers and interpreters, the pool
                    timed(client, body, check)
            samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for _ in range(runs):  # interleaved: drift of the machine hits every kind alike
                for kind in KINDS:
                    body, check = cases[kind]
                    samples[kind].append(timed(client, body, check))
            for kind in ("cell", "session"):
                client.request("DELETE", f"/session/{cases[kind][0]['sessionId']}")
            rows.append((runtime, samples))
    return rows


def report(rows: list[tuple[str, dict[str, list[float]]]], runs: int) -> None:
    print(f"\nPOST /execute end to end, ms ({runs} runs each, interleaved; launcher mode)")
    print(f"{'runtime':8s} {'kind':9s} {'p50':>8s} {'p95':>8s}")
    for runtime, samples in rows:
        p50 = {kind: percentile(values, 0.5) or 0.0 for kind, values in samples.items()}
        for kind in KINDS:
            print(f"{runtime:8s} {kind:9s} {p50[kind]:8.1f} {percentile(samples[kind], 0.95) or 0.0:8.1f}")
        print(f"{runtime:8s} ratio     cell/one-shot {p50['cell'] / p50['one-shot']:.2f}  "
              f"cell/session {p50['cell'] / p50['session']:.2f}")
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    rows = on_own_stack(["python", "node"], lambda stack: measure(stack.url, stack.key, args.runs))
    report(rows, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
