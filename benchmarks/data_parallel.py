"""Data parallelism on the CPU: 1 process against 2 (gloo), same per-process batch; DDP and FSDP.

    python benchmarks/data_parallel.py                 # about 2 minutes on 2 CPU cores
    python benchmarks/data_parallel.py --steps 20 --hidden 256

A 4-layer Llama-style model (vocabulary 8,192, untied), float32, LoRA r8 on every linear layer
with the embeddings and the LM head trained in full (so the DDP gradient buckets are large),
batch 4 per process, sequences of 128 tokens, gradient checkpointing, evaluation off. One thread
per process (as one device per process): 1 process on one core, 2 processes (under
``torch.distributed.run``, as ``headtune train`` with ``training.devices: 2`` starts them) on two.
On a computer shared with other work the speeds vary from run to run; the peaks do not.

Per row: optimizer steps per second and trained tokens per second over the training loop (the
global batch counts: 2 processes do twice the tokens per step), the measured tensor peak of each
process over the loop (``LiveTensorTracker``, which also sees DDP's buckets and FSDP's gathered
units), and the per-device estimate (``core.estimate.parallel``: the one-device estimate plus the
buckets for DDP; the shards plus the gathered units for FSDP), with their ratio. The FSDP row
(``training.sharding: fsdp``) trains the matrices with 32-bit optimizer states (the 8-bit default
falls back to them under FSDP), so every row here uses 32-bit states to compare alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

from headtune.core.testing import WORDS, build_model, build_tokenizer, plan_dict, write_jsonl  # noqa: E402

GiB = 1024**3


def worker(plan_file: str, out: str) -> None:
    """One process of a run: train, then write this rank's measurements."""
    from headtune.core.plan import load_plan
    from headtune.core.training.job import TrainingJob
    from headtune.core.training.memtrack import LiveTensorTracker

    tracker = LiveTensorTracker("cpu")
    clock: dict = {}

    class Timed:
        def __enter__(self):
            tracker.__enter__()
            clock["t0"] = time.perf_counter()

        def __exit__(self, *exc):
            clock["seconds"] = time.perf_counter() - clock["t0"]
            return tracker.__exit__(*exc)

    job = TrainingJob(load_plan(plan_file), around_training=Timed)
    job.run()
    state = job.trainer.state
    rank = int(os.environ.get("RANK", "0"))
    Path(out, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "peak": tracker.peak,
                "seconds": clock["seconds"],
                "steps": state.global_step,
                "tokens": state.num_input_tokens_seen,  # over every process (the Trainer gathers it)
            }
        )
    )


def run(nproc: int, plan_file: Path, out: Path) -> list[dict]:
    out.mkdir()
    me = [str(Path(__file__).resolve()), "--worker", str(plan_file), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if nproc == 1:
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *me]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=2, metavar=("PLAN", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args()
    if a.worker:
        worker(*a.worker)
        return

    from headtune.core import estimate as memory
    from headtune.core.plan import load_plan, plan_from_dict

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = build_tokenizer(root / "tok")
        model = build_model(root / "model", tok, vocab_size=a.vocab, tied=False, hidden=a.hidden, layers=4)
        # Long rows, so every example fills max_seq_len (tokens per step = batch x seq).
        rows = [{"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(3 * a.seq))} for i in range(400)]
        data = write_jsonl(root / "data.jsonl", rows)
        results = []
        for nproc, sharding in ((1, "none"), (2, "none"), (2, "fsdp")):
            d = plan_dict(
                model,
                data,
                root / f"run{nproc}{sharding}",
                data={"max_seq_len": a.seq, "val_fraction": 0.0, "format": "text"},
                adapter={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"},
                embeddings={"train_embeddings": True, "train_lm_head": True, "mode": "full"},
                training={
                    "batch_size": a.batch,
                    "max_steps": a.steps,
                    "eval_every": 0,
                    "gradient_checkpointing": True,
                    "devices": nproc,
                    "sharding": sharding,
                },
                memory={"matrix_states": "32bit"},
            )
            plan = plan_from_dict(d)
            plan_file = root / f"plan{nproc}{sharding}.yaml"
            plan.save(plan_file)
            ranks = run(nproc, plan_file, root / f"out{nproc}{sharding}")
            est, shape = memory.plan_estimate(load_plan(plan_file), "cpu")
            pd = memory.per_device(plan, shape, est, nproc)
            main_rank = ranks[0]
            results.append(
                dict(
                    nproc=nproc,
                    how="one process" if nproc == 1 else ("FSDP" if sharding == "fsdp" else "DDP"),
                    global_batch=pd.global_batch,
                    steps_s=main_rank["steps"] / main_rank["seconds"],
                    tokens_s=main_rank["tokens"] / main_rank["seconds"],
                    peaks=[r["peak"] for r in ranks],
                    estimate=pd.fsdp_total_bytes if sharding == "fsdp" else pd.ddp_total_bytes,
                    extra=pd.fsdp_gathered_bytes if sharding == "fsdp" else pd.ddp_buckets_bytes,
                )
            )
    print(
        f"{a.steps} steps, hidden {a.hidden}, vocabulary {a.vocab}, {a.seq} tokens x batch {a.batch} per process, "
        "embeddings and head trained in full (32-bit states), LoRA r8 all-linear, float32, CPU (gloo)\n"
    )
    print(
        "| processes | how | global batch | steps/s | tokens/s | peak per process (MiB, measured) | per-device estimate (MiB) | estimate / measured | DDP buckets or FSDP gathered units in it (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        peaks = " / ".join(f"{p / 2**20:.1f}" for p in r["peaks"])
        ratio = r["estimate"] / max(r["peaks"])
        print(
            f"| {r['nproc']} | {r['how']} | {r['global_batch']} | {r['steps_s']:.2f} | {r['tokens_s']:.0f} | {peaks} | "
            f"{r['estimate'] / 2**20:.1f} | {ratio:.2f} | {r['extra'] / 2**20:.1f} |"
        )


if __name__ == "__main__":
    main()
