"""How long the Model tab's catalog takes: listing its rows, and its badges on every plan change.

    python benchmarks/catalog_badges.py

Times ``list_entries`` (the shipped list plus a scan of the Hugging Face cache; run on a worker
thread by the window) and ``compute_badges`` for the demo plan on a 12 GiB card (every row, one
badge per embeddings variant; run on the UI thread 150 ms after a plan change), 20 times each,
and prints the median and the slowest in ms.
"""

from __future__ import annotations

import statistics
import sys
import time


def timed(fn, n: int = 20) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> int:
    from headtune.core.estimate import GiB
    from headtune.core.tools.catalog import compute_badges, list_entries
    from headtune.core.tools.demo import demo_plan

    plan = demo_plan()
    entries = list_entries()
    badges = compute_badges(plan, entries, "cuda", 12 * GiB)
    n_badges = sum(len(row) for row in badges.rows.values())
    print(f"{len(entries)} rows, {n_badges} badges")
    print(f"{'step':<40}{'median ms':>10}{'max ms':>10}")
    for name, fn in (
        ("list_entries (rows, cache scan)", lambda: list_entries()),
        ("compute_badges (every row and variant)", lambda: compute_badges(plan, entries, "cuda", 12 * GiB)),
    ):
        ms = timed(fn)
        print(f"{name:<40}{statistics.median(ms):>10.1f}{max(ms):>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
