"""The estimate for the real Llama-3-8B geometry: each embeddings mode x {4-bit, 16-bit} x seq {512, 2048},
with the stock memory recipe and with Headtune's defaults; then the lean-memory goal before/after.

    python benchmarks/llama3_8b_table.py [--markdown docs/llama3-8b-estimate.md]

No download: the geometry is Llama-3-8B's published config.json. Plan: LoRA r16 on all linear
layers, bf16, batch 1, gradient checkpointing, AdamW; "rows" mode trains 256 token rows (the
reserved and special tokens). Totals include the CUDA overhead; columns say which common GPU fits.
"stock" memory is what PEFT and the Trainer do (full-logits loss, frozen originals kept, k-bit fp32
upcast of the matrices, the Trainer's 32-bit states for nn.Embedding); "defaults" is Headtune's
``memory:`` defaults (chunked loss, no frozen duplicate, matrices in the model dtype).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headtune.core.testing import LLAMA3_8B

MODES = {
    "LoRA only": [],
    "full embeddings + head": [
        "embeddings.train_embeddings=true",
        "embeddings.train_lm_head=true",
        "embeddings.mode=full",
    ],
    "token rows (256) of both": [
        "embeddings.train_embeddings=true",
        "embeddings.train_lm_head=true",
        "embeddings.mode=tokens",
        f"embeddings.token_ids={list(range(128000, 128256))}",
    ],
    "LoRA on embeddings + head": [
        "embeddings.train_embeddings=true",
        "embeddings.train_lm_head=true",
        "embeddings.mode=lora",
    ],
}


def base_plan():
    from headtune.core.plan import Plan, with_overrides

    p = Plan()
    p.model.name_or_path, p.data.path = "meta-llama/Meta-Llama-3-8B", "data.jsonl"
    return with_overrides(p, ["training.batch_size=1"])


STOCK = ["memory.loss=standard", "memory.frozen_copy=true", "memory.matrix_dtype=peft", "memory.matrix_states=trainer"]
MEMORY = {"stock": STOCK, "defaults": []}


def rows():
    from headtune.core.estimate import COMMON_GPUS_GIB, GiB, ModelShape, estimate, fit_verdict
    from headtune.core.plan import with_overrides

    shape = ModelShape.from_config(LLAMA3_8B)
    out = []
    for mode, overrides in MODES.items():
        for quant in ("4bit", "none"):
            for seq in (512, 2048):
                for mem, mem_overrides in MEMORY.items():
                    plan = with_overrides(
                        base_plan(),
                        overrides + mem_overrides + [f"model.quantization={quant}", f"data.max_seq_len={seq}"],
                    )
                    est = estimate(plan, shape, "cuda")
                    fits = [f"{g}" for g in COMMON_GPUS_GIB if fit_verdict(est.total_bytes, g * GiB) != "no"]
                    big = max(est.breakdown, key=est.breakdown.get)
                    out.append(
                        (
                            mode,
                            "4-bit" if quant == "4bit" else "bf16",
                            seq,
                            mem,
                            est.tensors_peak_bytes / GiB,
                            est.total_bytes / GiB,
                            est.peak_phase,
                            big,
                            ", ".join(fits) or "none of 8-24",
                        )
                    )
    return out


# The lean-memory goal: QLoRA, full embeddings + full head, seq 1024, batch 1, GC, on a 12 GiB card.
GOAL = [
    "model.quantization=4bit",
    "data.max_seq_len=1024",
    "training.batch_size=1",
    "embeddings.train_embeddings=true",
    "embeddings.train_lm_head=true",
    "embeddings.mode=full",
]
LEAN = ["memory.loss=chunked", "memory.frozen_copy=false", "memory.matrix_dtype=model", "memory.matrix_states=8bit"]
GOAL_ROWS = {
    "the defaults: only the two boxes ticked (AdamW)": [],
    "the defaults with AdamW's own states for the matrices (memory.matrix_states=auto)": ["memory.matrix_states=auto"],
    "stock (paged 8-bit AdamW)": STOCK + ["training.optimizer=paged_adamw_8bit"],
    "stock (8-bit AdamW, nothing paged)": STOCK + ["training.optimizer=adamw_8bit"],
    "+ chunked loss": STOCK + ["training.optimizer=adamw_8bit", "memory.loss=chunked"],
    "+ no frozen copy": STOCK + ["training.optimizer=adamw_8bit", "memory.frozen_copy=false"],
    "+ no fp32 upcast (bf16 master)": STOCK + ["training.optimizer=adamw_8bit", "memory.matrix_dtype=model"],
    "+ fp32 master, frozen not upcast": STOCK + ["training.optimizer=adamw_8bit", "memory.matrix_dtype=float32"],
    "+ 8-bit states for both matrices": STOCK + ["training.optimizer=adamw_8bit", "memory.matrix_states=8bit"],
    "+ fused step (no clipping)": STOCK
    + ["training.optimizer=adamw_8bit", "memory.fused_step=true", "training.max_grad_norm=0"],
    "lean: all but the fused step": ["training.optimizer=adamw_8bit"] + LEAN,
    "lean + fused step (no clipping)": ["training.optimizer=adamw_8bit"]
    + LEAN
    + ["memory.fused_step=true", "training.max_grad_norm=0"],
    "lean + fused step, fp32 master": ["training.optimizer=adamw_8bit"]
    + LEAN
    + ["memory.fused_step=true", "training.max_grad_norm=0", "memory.matrix_dtype=float32"],
}


def goal_rows():
    from headtune.core.estimate import CATEGORIES, GiB, ModelShape, estimate
    from headtune.core.plan import with_overrides

    shape = ModelShape.from_config(LLAMA3_8B)
    lines = [
        "| plan | " + " | ".join(CATEGORIES) + " | tensors | + CUDA overhead | paged states (apart) | "
        "peak phase | 12 GiB |",
        "|---" * (len(CATEGORIES) + 6) + "|",
    ]
    for name, overrides in GOAL_ROWS.items():
        est = estimate(
            with_overrides(base_plan(), GOAL + overrides), shape, "cuda", capacity_bytes=12 * GiB, advise=False
        )
        cells = " | ".join(f"{est.breakdown[c] / GiB:.2f}" for c in CATEGORIES)
        lines.append(
            f"| {name} | {cells} | {est.tensors_peak_bytes / GiB:.2f} | {est.total_bytes / GiB:.2f} | "
            f"{est.paged_optimizer_states_bytes / GiB:.2f} | {est.peak_phase} | {est.fit} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", help="write the table as Markdown to this file")
    args = ap.parse_args()
    table = rows()
    lines = [
        "| embeddings / head | weights | seq | memory | tensors GiB | total GiB | peak phase | largest category | "
        "fits (GiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, w, seq, mem, t, tot, phase, big, fits in table:
        lines.append(f"| {mode} | {w} | {seq} | {mem} | {t:.1f} | {tot:.1f} | {phase} | {big} | {fits} |")
    text = "\n".join(lines)
    goal = goal_rows()
    print(text)
    print()
    print(goal)
    if args.markdown:
        Path(args.markdown).write_text(
            "# Llama-3-8B: the estimate by embeddings mode\n\n"
            + __doc__.split("\n\n", 1)[1].split("\n\n", 1)[1]
            + "\n\nGenerated by `python benchmarks/llama3_8b_table.py --markdown docs/llama3-8b-estimate.md`.\n\n"
            + text
            + "\n\n## Lean memory: full embeddings + full LM head on a 12 GiB card\n\n"
            "QLoRA (4-bit NF4, double quantisation), LoRA r16 on all linear layers, embeddings and LM head "
            "trained in full, bf16, seq 1024, batch 1, gradient checkpointing. GiB at the peak phase, by "
            "category (core/estimate/breakdown.py); *+ CUDA overhead* adds the CUDA context and the allocator's slack; "
            "paged optimizer states are reported apart, as they can leave the GPU. These are estimates: no GPU "
            "was available to measure them (see docs/lean-memory.md for the CPU measurements that check the "
            "estimate on small models).\n\n" + goal + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
