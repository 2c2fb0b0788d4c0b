"""Secret masking cost: the worker's Masker against the least any masking can do, in one run.

    .venv/bin/python bench/masking.py [--reps 30]

For several secret sets (up to the caps ISOL8_MAX_SECRETS x ISOL8_MAX_SECRET_BYTES)
it feeds 512 KiB of output, in 32 KiB chunks, whose text keeps starting secrets
without finishing them (the case that makes a masker hold text back), through
``sandbox.run.Masker`` and through the baseline: one ``str.replace`` per
secret over the whole text at once (no chunking, no hold-back; it can mask
wrong at chunk boundaries, so it is a floor, not an alternative). Prints CPU
milliseconds per 512 KiB: median, p95, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isol8_site.settings")

OUTPUT = 512 * 1024
CHUNK = 32 * 1024


def case(count: int, size: int, seed: int = 1) -> tuple[list[str], str]:
    rng = random.Random(seed)
    secrets = ["".join(rng.choice(string.ascii_letters) for _ in range(size)) for _ in range(count)]
    parts, total = [], 0
    while total < OUTPUT:
        piece = rng.choice(secrets)[: rng.randint(1, size)] + " "
        parts.append(piece)
        total += len(piece)
    return secrets, "".join(parts)[:OUTPUT]


def cpu_ms(work: Callable[[], object]) -> float:
    started = time.process_time()
    work()
    return (time.process_time() - started) * 1000


def main() -> int:
    import django

    django.setup()
    from sandbox.run import Masker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    print(f"{'secrets':>16} {'masker p50':>11} {'p95':>8} {'floor p50':>10} {'p95':>8} {'ratio':>7}")
    for count, size in ((1, 32), (10, 256), (10, 4096), (32, 1024), (32, 4096)):
        secrets, text = case(count, size)

        def masked(secrets: list[str] = secrets, text: str = text) -> str:
            masker = Masker(secrets)
            out = [masker.feed(text[i : i + CHUNK]) for i in range(0, len(text), CHUNK)]
            return "".join(out) + masker.flush()

        def floor(secrets: list[str] = secrets, text: str = text) -> str:
            for secret in secrets:
                text = text.replace(secret, "***")
            return text

        ours = sorted(cpu_ms(masked) for _ in range(args.reps))
        base = sorted(cpu_ms(floor) for _ in range(args.reps))
        p95 = max(0, int(len(ours) * 0.95) - 1)
        ratio = statistics.median(ours) / max(statistics.median(base), 1e-6)
        print(f"{count:>5} x {size:>5} B {statistics.median(ours):>9.1f}ms {ours[p95]:>6.1f}ms "
              f"{statistics.median(base):>8.1f}ms {base[p95]:>6.1f}ms {ratio:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
