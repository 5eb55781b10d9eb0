"""Lean memory for big vocabularies: measured peak and loss of each technique, alone and together.

    python benchmarks/lean_memory.py --hidden 64 --seq 48 --steps 3 --chunk 16   # about 8 minutes on 2 CPU cores
    python benchmarks/lean_memory.py --rows stock "lean (all but fused step)" --steps 10   # a longer run

A 2-layer Llama-style model with the real 128,256-token vocabulary and a small hidden size (so it
runs on a CPU), untied, loaded in 4-bit NF4 with bfloat16 weights: QLoRA with the embeddings and
the LM head trained in full (``embeddings.mode: full``), LoRA r8 on every linear layer, batch 1,
gradient checkpointing, the same seed, data and steps for every row. Rows:

- ``stock``: the usual recipe, as PEFT and the Trainer do it: full-logits loss, the frozen
  originals kept beside the trained copies, ``prepare_model_for_kbit_training``'s fp32 upcast of the
  matrices, and 8-bit AdamW with the Trainer's 32-bit states for ``nn.Embedding``
  (``paged_adamw_8bit`` on CUDA; plain 8-bit here, since paging needs CUDA);
- each technique alone on top of ``stock``; ``lean``: all but the fused step; ``lean + fused step``.

Gradient clipping is off in every row (``training.max_grad_norm: 0``), because the fused step is
exact only without it, and rows must differ in one technique only. Per row: the measured tensor
peak over the whole run (``headtune.core.training.memtrack.LiveTensorTracker``, CPU; on a CUDA machine
``torch.cuda.max_memory_allocated``), its ratio to ``stock``, the estimate's ratio to the measured
peak, and the loss at every step compared with ``stock`` (max |difference| over the run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")
from headtune.core.testing import WORDS, build_model, build_tokenizer, plan_dict, write_jsonl  # noqa: E402

V = 128_256
MiB = 1024**2
STOCK = {
    "loss": "standard",
    "frozen_copy": True,
    "matrix_dtype": "peft",
    "matrix_states": "trainer",
    "fused_step": False,
}
LEAN = {"loss": "chunked", "frozen_copy": False, "matrix_dtype": "model", "matrix_states": "8bit", "fused_step": False}
ROWS = {
    "stock": {},
    "chunked loss": {"loss": "chunked"},
    "no frozen copy": {"frozen_copy": False},
    "no fp32 upcast (bf16 master)": {"matrix_dtype": "model"},
    "fp32 master, frozen not upcast": {"matrix_dtype": "float32"},
    "8-bit states for both matrices": {"matrix_states": "8bit"},
    "fused step": {"fused_step": True},
    "lean (all but fused step)": LEAN,
    "lean + fused step": {**LEAN, "fused_step": True},
}
# Exact techniques must reproduce stock's loss within rounding; the others change the arithmetic.
EXACT = {"chunked loss", "no frozen copy", "fused step"}


def make_plan(model_dir, data, out, memory: dict, steps: int, seq: int, chunk: int = 256):
    from headtune.core.plan import plan_from_dict

    d = plan_dict(
        model_dir,
        data,
        out,
        data={"val_fraction": 0.0, "max_seq_len": seq},
        model={"name_or_path": str(model_dir), "quantization": "4bit", "dtype": "bfloat16"},
        adapter={"r": 8, "alpha": 16, "dropout": 0.0},
        embeddings={"train_embeddings": True, "train_lm_head": True, "mode": "full"},
        training={
            "batch_size": 1,
            "max_steps": steps,
            "learning_rate": 1e-3,
            "max_grad_norm": 0.0,
            "optimizer": "adamw_8bit",
            "gradient_checkpointing": True,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "eval_every": 0,
            "save_every": 0,
        },
        memory={**STOCK, "loss_chunk_tokens": chunk, **memory},
    )
    return plan_from_dict(d)


def run(plan):
    """(peak bytes over the whole run, losses per step) of a real run of ``plan``."""
    from headtune.core.training.memtrack import run_with_peak

    result, job = run_with_peak(plan)
    peak = result["peak_bytes"]
    losses = [h["loss"] for h in job.trainer.state.log_history if "loss" in h]
    notes = list(job.lean.notes)
    del job
    import gc

    gc.collect()
    return peak, losses, notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seq", type=int, default=48)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument(
        "--chunk",
        type=int,
        default=16,
        help="memory.loss_chunk_tokens (below --seq, so chunks are "
        "full: the estimate assumes every token of a chunk is labelled)",
    )
    ap.add_argument("--rows", nargs="*", help="only these rows (names as printed)")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    args = ap.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import torch

    from headtune.core.estimate import ModelShape, estimate, read_model_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="headtune-lean-"))
    tok = build_tokenizer(work / "tok")
    model_dir = build_model(work / "model", tok, V, tied=False, hidden=args.hidden, layers=2)
    # Long answers, so every step fills the sequence with trained tokens.
    rows = [{"instruction": f"Repeat the words ({i}).", "output": " ".join(WORDS[i % 7 :] * 30)} for i in range(40)]
    data = write_jsonl(work / "d.jsonl", rows)
    shape = ModelShape.from_config(read_model_config(str(model_dir)))
    names = [n for n in ROWS if not args.rows or n in args.rows]
    if "stock" not in names:
        names.insert(0, "stock")
    print(
        f"device {device}; V={V}, hidden {args.hidden}, 2 layers, 4-bit NF4 + bf16, seq {args.seq}, batch 1, "
        f"{args.steps} steps"
    )
    results = {}
    for name in names:
        plan = make_plan(model_dir, data, work / "run", ROWS[name], args.steps, args.seq, args.chunk)
        shutil.rmtree(work / "run", ignore_errors=True)
        t0 = time.time()
        peak, losses, notes = run(plan)
        est = estimate(plan, shape, device)
        results[name] = (peak, losses, est, notes)
        print(
            f"{name:32} peak {peak / MiB:8.1f} MiB  estimate/measured {est.tensors_peak_bytes / peak:.3f} "
            f"[{est.peak_phase}]  losses {' '.join(f'{x:.4f}' for x in losses[:4])} ...  {time.time() - t0:.0f}s",
            flush=True,
        )
        for note in notes:
            print("   ", note)
    stock_peak, stock_losses = results["stock"][0], results["stock"][1]
    lines = [
        "| technique | exact? | measured peak MiB | vs stock | estimate / measured | max abs loss diff vs stock "
        f"({args.steps} steps) | final loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (peak, losses, est, _) in results.items():
        diff = max(abs(a - b) for a, b in zip(losses, stock_losses)) if name != "stock" else 0.0
        exact = "—" if name == "stock" else ("yes" if name in EXACT else "no")
        lines.append(
            f"| {name} | {exact} | {peak / MiB:.1f} | {peak / stock_peak:.3f} | "
            f"{est.tensors_peak_bytes / peak:.3f} | {diff:.2e} | {losses[-1]:.4f} |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    if args.markdown:
        head = (
            f"Generated by `python benchmarks/lean_memory.py --hidden {args.hidden} --seq {args.seq} --steps "
            f"{args.steps} --chunk {args.chunk} --markdown {args.markdown}` on {device}. Model: 2-layer Llama-style, vocabulary "
            f"{V:,}, hidden {args.hidden}, untied, 4-bit NF4 with bfloat16; LoRA r8 on all linear layers; "
            f"embeddings and LM head trained in full; batch 1, seq {args.seq}, gradient checkpointing, "
            f"8-bit AdamW, lr 1e-3 constant, no clipping; chunked loss in chunks of {args.chunk} tokens.\n\n"
        )
        Path(args.markdown).write_text("# Lean memory: measured\n\n" + head + table + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
