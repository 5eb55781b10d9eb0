"""How fast is the memory estimate? The window recomputes it on every change (target: median <= 5 ms).

    python benchmarks/estimate_latency.py

Times ``estimate()`` on the Llama-3-8B geometry for several plans, alone and with the fit advisor
(which re-estimates each candidate change), and prints median and 95th percentile in ms.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama3_8b_table import LLAMA3_8B, base_plan  # noqa: E402


def main() -> int:
    from headtune.core.estimate import GiB, ModelShape, estimate
    from headtune.core.plan import with_overrides

    shape = ModelShape.from_config(LLAMA3_8B)
    plans = [
        with_overrides(base_plan(), o)
        for o in (
            [],
            ["model.quantization=4bit"],
            ["embeddings.train_embeddings=true", "embeddings.train_lm_head=true"],
            ["embeddings.train_embeddings=true", "embeddings.mode=tokens", "embeddings.token_ids=[1, 2, 3]"],
            ["data.max_seq_len=2048", "training.batch_size=4", "training.gradient_checkpointing=false"],
        )
    ]
    print(f"{'what':34} {'median ms':>10} {'p95 ms':>8}")
    for label, kwargs in (("estimate", {}), ("estimate + fit advisor (12 GiB)", {"capacity_bytes": 12 * GiB})):
        times = []
        for _ in range(200):
            for p in plans:
                t0 = time.perf_counter()
                estimate(p, shape, "cuda", **kwargs)
                times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        print(f"{label:34} {statistics.median(times):10.3f} {times[int(len(times) * 0.95)]:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
