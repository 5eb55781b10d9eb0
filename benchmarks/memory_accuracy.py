"""How close is `headtune estimate` to the measured peak? A grid of real CPU runs.

Each row is a plan run for 3 real optimizer steps on a Llama-style model with the real
128,256-token vocabulary and a small hidden size (tied and untied), measured with the live
tensor tracker (``headtune.core.training.memtrack``), next to our estimate and two peer rules:

- ``accel``: weights x 4 for Adam training, as accelerate's ``estimate-memory`` reports;
- ``unsloth``: Unsloth Studio's published quick formula, params x 0.9 + 1.4 GB (its badge).

    python benchmarks/memory_accuracy.py            # the full grid (about 10 minutes here)
    python benchmarks/memory_accuracy.py --quick    # the first 8 rows
    python benchmarks/memory_accuracy.py --markdown docs/memory_accuracy.md
    python benchmarks/memory_accuracy.py --defaults --skip-model wide8b --markdown docs/memory-accuracy-defaults.md
    python benchmarks/memory_accuracy.py --defaults --model wide8b --markdown docs/memory-accuracy-wide.md

``--defaults`` runs a second grid with the memory options a user gets by default (the chunked loss,
no frozen duplicate, matrices in the model dtype, 8-bit states for matrices trained in full;
bfloat16), estimated for the data's real token lengths as the window does, each row marked as
*calibration* (used to set a constant of the estimate) or *held out* (never used for that); the
summary reports the two apart. It covers every embeddings mode x tied/untied x none/8bit/4bit x
gradient checkpointing on/off, chat data of mixed lengths, and two rows at Llama-3-8B's layer
width (``wide8b``: 2 layers of hidden 4096, MLP 14,336, 32 heads, 8 KV heads; about 12 GB of RAM
and tens of minutes on 2 CPU cores).

Prints one row per plan and a summary (median and worst ratio estimate/measured). On a machine
with a CUDA GPU the same rows run there and are measured with ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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


def grid() -> list[dict]:
    """(model, dotted overrides) rows covering the plan space users choose from."""
    rows = []

    def add(model, **kv):
        rows.append({"model": model, **kv})

    # Baselines: LoRA only, fp32, GC on/off, batch and sequence.
    for seq in (128, 512, 1024):
        add("untied64", **{"data.max_seq_len": seq})
    add("untied64", **{"data.max_seq_len": 512, "training.gradient_checkpointing": False})
    add("untied64", **{"data.max_seq_len": 256, "training.batch_size": 4})
    add("untied64", **{"data.max_seq_len": 128, "training.batch_size": 2, "model.dtype": "bfloat16"})
    add("tied64", **{"data.max_seq_len": 256})
    add("untied128", **{"data.max_seq_len": 256, "training.batch_size": 2})
    # Every embeddings mode on tied and untied models, both matrices.
    for model in ("untied64", "tied64"):
        for mode in ("full", "tokens", "lora"):
            for seq in (128, 512):
                rows_ = {"embeddings.token_ids": [5, 17, 42, 100, 200]} if mode == "tokens" else {}
                add(
                    model,
                    **{
                        "data.max_seq_len": seq,
                        "embeddings.train_embeddings": True,
                        "embeddings.train_lm_head": True,
                        "embeddings.mode": mode,
                        **rows_,
                    },
                )
    # One matrix at a time, untied.
    for which in ("embeddings.train_embeddings", "embeddings.train_lm_head"):
        for mode in ("full", "lora"):
            add("untied64", **{"data.max_seq_len": 256, which: True, "embeddings.mode": mode})
    # Quantised base weights.
    for quant in ("8bit", "4bit"):
        for model in ("untied64", "tied64"):
            add(model, **{"data.max_seq_len": 256, "model.quantization": quant})
            add(
                model,
                **{
                    "data.max_seq_len": 256,
                    "model.quantization": quant,
                    "embeddings.train_embeddings": True,
                    "embeddings.train_lm_head": True,
                    "embeddings.mode": "full",
                },
            )
    add("untied64", **{"data.max_seq_len": 256, "model.quantization": "4bit", "model.double_quant": False})
    # Optimizers.
    for model in ("untied64", "tied64"):
        add(
            model,
            **{
                "data.max_seq_len": 256,
                "training.optimizer": "adamw_8bit",
                "embeddings.train_embeddings": True,
                "embeddings.train_lm_head": True,
                "embeddings.mode": "full",
            },
        )
    add("untied64", **{"data.max_seq_len": 256, "training.optimizer": "adamw_8bit"})
    # Bigger batches, no checkpointing, bf16 with embeddings.
    add(
        "untied64",
        **{
            "data.max_seq_len": 512,
            "training.batch_size": 2,
            "training.gradient_checkpointing": False,
            "embeddings.train_lm_head": True,
            "embeddings.mode": "full",
        },
    )
    add("tied64", **{"data.max_seq_len": 1024, "training.batch_size": 2})
    add(
        "untied64",
        **{
            "data.max_seq_len": 128,
            "training.batch_size": 4,
            "model.dtype": "bfloat16",
            "embeddings.train_embeddings": True,
            "embeddings.train_lm_head": True,
            "embeddings.mode": "full",
        },
    )
    add(
        "tied64",
        **{
            "data.max_seq_len": 128,
            "training.batch_size": 2,
            "model.dtype": "bfloat16",
            "embeddings.train_lm_head": True,
            "embeddings.mode": "full",
        },
    )
    add("untied64", **{"data.max_seq_len": 256, "adapter.r": 64})
    # A wider model, where the matrices outweigh the logits: the optimizer and embedding phases.
    full_both = {"embeddings.train_embeddings": True, "embeddings.train_lm_head": True, "embeddings.mode": "full"}
    add("untied512", **{"data.max_seq_len": 64})
    add("untied512", **{"data.max_seq_len": 64, **full_both})
    add("untied512", **{"data.max_seq_len": 64, "training.optimizer": "adamw_8bit", **full_both})
    add("tied512", **{"data.max_seq_len": 64, **full_both})
    add("untied512", **{"data.max_seq_len": 64, "model.quantization": "4bit", "model.dtype": "bfloat16", **full_both})
    return rows


def defaults_grid() -> list[dict]:
    """Rows with the default memory options; ``held_out`` rows never set a constant of the estimate."""
    rows = []

    def add(model, held_out, **kv):
        rows.append({"model": model, "held_out": held_out, **kv})

    both = {"embeddings.train_embeddings": True, "embeddings.train_lm_head": True}
    tokens = {"embeddings.mode": "tokens", "embeddings.token_ids": list(range(100, 294))}
    # Calibration of the checkpointed-chunk loss (CHECKPOINTED_CHUNK_BYTES): several chunks ...
    for dtype in ("float32", "bfloat16"):
        for chunk in (128, 512):
            at = {"model.dtype": dtype, "memory.loss_chunk_tokens": chunk, "data.max_seq_len": 512}
            add("untied64", False, **at, **{"embeddings.train_lm_head": True, "embeddings.mode": "lora"})
            add("untied64", False, **at, **both, **tokens)
    # ... and one chunk of fewer labelled tokens than the chunk size.
    for seq in (64, 128, 256):
        add("untied64", False, **{"data.max_seq_len": seq, **both, "embeddings.mode": "lora"})
    # Held out: every mode x tied/untied x none/8bit/4bit x checkpointing on/off, both matrices.
    for model in ("untied64", "tied64"):
        for quant in ("none", "8bit", "4bit"):
            for mode in ("full", "tokens", "lora"):
                for gc in (True, False):
                    add(
                        model,
                        True,
                        **{
                            "data.max_seq_len": 128,
                            "model.quantization": quant,
                            "training.gradient_checkpointing": gc,
                            **both,
                            **(tokens if mode == "tokens" else {"embeddings.mode": mode}),
                        },
                    )
    # Held out: other models, batches, one matrix, float32.
    add("tied64", True, **{"data.max_seq_len": 512, "training.batch_size": 2, **both, "embeddings.mode": "lora"})
    add("untied64", True, **{"data.max_seq_len": 512, "embeddings.train_lm_head": True, "embeddings.mode": "full"})
    add("untied128", True, **{"data.max_seq_len": 256, "model.quantization": "8bit", **both, "embeddings.mode": "lora"})
    add(
        "untied64",
        True,
        **{"data.max_seq_len": 256, "model.dtype": "float32", "training.batch_size": 2, **both, **tokens},
    )
    add("untied64", True, **{"data.max_seq_len": 512, "embeddings.train_embeddings": True, "embeddings.mode": "lora"})
    add("untied512", True, **{"data.max_seq_len": 64, **both, "embeddings.mode": "lora"})
    add("untied512", True, **{"data.max_seq_len": 64, **both, "embeddings.mode": "full"})
    # Held out: chat data of mixed lengths, batches of 2, one whole epoch (every batch measured).
    mixed = {"data": "mixed", "data.max_seq_len": 1024, "training.batch_size": 2, "steps": 3}
    add("untied64", True, **mixed, **both, **{"embeddings.mode": "lora"})
    add("tied64", True, **mixed, **{"embeddings.train_embeddings": True}, **tokens)
    add("untied64", True, **mixed, **both, **{"model.quantization": "4bit", "embeddings.mode": "full"})
    # Llama-3-8B's layer width (2 layers), 4-bit: the two-box plan (seq 1024) in every mode. The lora
    # row set how the estimate counts activations at the loss under checkpointing, the tokens row
    # the dense gradient of a row-wise head (calibration).
    wide = {"data": "long", "data.max_seq_len": 1024, "model.quantization": "4bit"}
    add("wide8b", True, **wide, **both, **{"embeddings.mode": "full"})
    add("wide8b", False, **wide, **both, **{"embeddings.mode": "lora"})
    add("wide8b", False, **wide, **both, **tokens)
    # Held out at width: token rows on the embedding alone; LoRA on both without checkpointing.
    add("wide8b", True, **wide, **{"embeddings.train_embeddings": True}, **tokens)
    no_gc = {"data.max_seq_len": 512, "training.gradient_checkpointing": False}
    add("wide8b", True, **{**wide, **no_gc}, **both, **{"embeddings.mode": "lora"})
    # Held out: preference tuning (dpo, orpo), a batch of pairs as twice the rows, the replies'
    # log-probabilities through the checkpointed chunks whatever the head.
    pairs = {"data": "pairs", "data.max_seq_len": 128}
    add("untied64", True, **pairs, **{"training.method": "dpo", **both, "embeddings.mode": "lora"})
    add("untied64", True, **pairs, **{"training.method": "dpo", **both, "embeddings.mode": "full"})
    add("tied64", True, **pairs, **{"training.method": "orpo", **both, **tokens})
    add(
        "untied64",
        True,
        **{**pairs, "data.max_seq_len": 256},
        **{
            "training.method": "dpo",
            "training.batch_size": 2,
            "embeddings.train_lm_head": True,
            "embeddings.mode": "full",
        },
    )
    return rows


# Chat rows of mixed length for the length-aware rows: replies of 4 to 150 words.
MIXED_WORDS = (4, 150, 20, 60, 9, 35)


STOCK = {"loss": "standard", "frozen_copy": True, "matrix_dtype": "peft", "matrix_states": "trainer"}

MODELS = {
    "untied64": (64, False),
    "tied64": (64, True),
    "untied128": (128, False),
    "untied512": (512, False),
    "tied512": (512, True),
    "wide8b": (4096, False),
}
# Llama-3-8B's layer geometry (2 layers of it, with its vocabulary).
WIDE = {
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
}


def peers(shape, plan) -> tuple[int, int]:
    """Bytes predicted by the two peer rules for the same plan."""
    from headtune.core.estimate import DTYPE_BYTES

    params = shape.total_params
    dt = DTYPE_BYTES[plan.model.dtype]
    weights = params * dt
    if plan.model.quantization == "4bit":
        weights = shape.block_linear_params * 0.5 + (params - shape.block_linear_params) * dt
    elif plan.model.quantization == "8bit":
        weights = shape.block_linear_params + (params - shape.block_linear_params) * dt
    accel = int(weights * 4)
    unsloth = int(params * 0.9 + 1.4e9)
    return accel, unsloth


def _summary(table: list, label: str) -> str:
    ratios = [r["ratio"] for r in table]
    if not ratios:
        return f"{label}: none"
    worst = max(ratios, key=lambda r: abs(r - 1))
    within = sum(0.95 <= r <= 1.10 for r in ratios)
    return (
        f"{label} {len(ratios)}; estimate/measured median {statistics.median(ratios):.3f}, worst {worst:.3f}, "
        f"lowest {min(ratios):.3f}, highest {max(ratios):.3f}, within [0.95, 1.10]: {within}/{len(ratios)}; "
        f"accel rule median {statistics.median(r['accel'] for r in table):.2f}x; unsloth rule median "
        f"{statistics.median(r['unsloth'] for r in table):.2f}x"
    )


def _data_files(work: Path) -> dict[str, Path]:
    """The grid's datasets: one reply repeated (every batch alike), chat replies of mixed length, and
    replies long enough to fill 1,024 tokens."""
    ask = "Repeat the words."
    return {
        "repeat": write_jsonl(work / "d.jsonl", [{"instruction": ask, "output": " ".join(WORDS * 40)}] * 24),
        "mixed": write_jsonl(
            work / "mixed.jsonl",
            [
                {
                    "messages": [
                        {"role": "user", "content": ask},
                        {"role": "assistant", "content": " ".join(WORDS * 40)[: n * 6]},
                    ]
                }
                for n in MIXED_WORDS
            ],
        ),
        "long": write_jsonl(work / "long.jsonl", [{"instruction": ask, "output": " ".join(WORDS * 140)}] * 8),
        # Preference pairs: a long chosen and a shorter rejected reply.
        "pairs": write_jsonl(
            work / "pairs.jsonl",
            [{"prompt": ask, "chosen": " ".join(WORDS * 40), "rejected": " ".join(WORDS * 20)}] * 8,
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the first 8 rows")
    ap.add_argument("--model", help="only rows on this model (e.g. untied512)")
    ap.add_argument("--skip-model", action="append", default=[], help="leave out rows on this model (repeatable)")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    ap.add_argument("--defaults", action="store_true", help="the grid with the default memory options, held out apart")
    ap.add_argument("--part", help="K/N: run only every N-th row from the K-th (N processes share the grid)")
    ap.add_argument("--rows", help="only these row numbers, e.g. 49,52,55")
    ap.add_argument("--json-out", help="also save the measured rows as JSON (for --from-json)")
    ap.add_argument("--from-json", nargs="+", help="print and write the table of rows saved by --json-out runs")
    ap.add_argument(
        "--reestimate",
        action="store_true",
        help="with --from-json: the saved measurements beside this version's estimate (no run; models are "
        "written as config only)",
    )
    args = ap.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    import torch
    from transformers import AutoTokenizer

    from headtune.core.estimate import ModelShape, estimate, read_model_config
    from headtune.core.plan import plan_from_dict
    from headtune.core.tools.preview import data_tokens, preview_data
    from headtune.core.training.memtrack import measure_peak

    # On a CUDA machine the same grid compares with torch.cuda.max_memory_allocated.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device}")
    work = Path(tempfile.mkdtemp(prefix="headtune-memacc-"))
    tok = build_tokenizer(work / "tok")
    files = _data_files(work)
    folders: dict[str, Path] = {}
    rows = defaults_grid() if args.defaults else grid()
    rows = rows[:8] if args.quick else rows
    if args.model:
        rows = [r for r in rows if r["model"] == args.model]
    rows = [r for r in rows if r["model"] not in args.skip_model]
    numbered = list(enumerate(rows, 1))
    if args.part:
        k, parts = (int(x) for x in args.part.split("/"))
        numbered = [(n, r) for n, r in numbered if (n - 1) % parts == k - 1]
    if args.rows:
        wanted = {int(x) for x in args.rows.split(",")}
        numbered = [(n, r) for n, r in numbered if n in wanted]
    # Saved rows; a row measured again in a later file replaces the earlier one.
    saved = {r["n"]: r for path in args.from_json or [] for r in json.loads(Path(path).read_text())}
    if args.from_json:
        numbered = [(n, r) for n, r in numbered if n in saved] if args.reestimate else []
    print(
        f"{'#':>2} {'model':9} {'plan':78} {'measured':>9} {'estimate':>9} {'ratio':>6} {'worst':>9} "
        f"{'accel':>7} {'unsloth':>7}"
    )
    table = []
    for n, row in numbered:
        row = dict(row)
        model = row.pop("model")
        held_out = row.pop("held_out", None)
        dataset = row.pop("data", "repeat")
        steps = row.pop("steps", 2 if args.defaults else 3)
        if model not in folders:
            hidden, tied = MODELS[model]
            geometry = WIDE if model == "wide8b" else {}
            folders[model] = build_model(
                work / model, tok, V, tied=tied, hidden=hidden, layers=2, weights=not args.reestimate, **geometry
            )
        d = plan_dict(
            folders[model],
            files[dataset],
            work / "run",
            data={"val_fraction": 0.0},
            adapter={"r": 4, "alpha": 8, "dropout": 0.0},
            training={"batch_size": 1, "learning_rate": 1e-3},
            # The stock memory recipe the first grid was measured with; --defaults keeps the defaults.
            memory={} if args.defaults else STOCK,
        )
        if args.defaults:
            d["model"]["dtype"] = "bfloat16"  # the plan's default; a row may change it
        for key, value in row.items():
            section, leaf = key.split(".")
            d.setdefault(section, {})[leaf] = value
        plan = plan_from_dict(d)
        shape = ModelShape.from_config(read_model_config(str(folders[model])))
        # The estimate the window shows: for this data's lengths; and the worst case beside it.
        lengths = data_tokens(preview_data(plan.data, AutoTokenizer.from_pretrained(str(folders[model]))))
        est = estimate(plan, shape, device=device, data=lengths if args.defaults else None)
        worst = estimate(plan, shape, device=device)
        t0 = time.time()
        shutil.rmtree(work / "run", ignore_errors=True)
        measured = saved[n]["measured"] if args.reestimate else measure_peak(plan, steps=steps)["peak_bytes"]
        accel, unsloth = peers(shape, plan)
        desc = ", ".join(f"{k.split('.')[-1]}={f'{len(v)} ids' if isinstance(v, list) else v}" for k, v in row.items())
        if dataset != "repeat":
            desc += f", {dataset} data"
        if held_out is not None:
            desc = ("held out: " if held_out else "calibration: ") + desc
        r = {
            "n": n,
            "model": model,
            "desc": desc,
            "measured": measured,
            "estimate": est.tensors_peak_bytes,
            "ratio": est.tensors_peak_bytes / measured,
            "worst": worst.tensors_peak_bytes,
            "accel": accel / measured,
            "unsloth": unsloth / measured,
            "phase": est.peak_phase,
        }
        print(
            f"{n:>2} {model:9} {desc:78} {measured / MiB:8.0f}M {r['estimate'] / MiB:8.0f}M {r['ratio']:6.3f} "
            f"{r['worst'] / MiB:8.0f}M {r['accel']:6.2f}x {r['unsloth']:6.2f}x  [{est.peak_phase}, "
            f"{time.time() - t0:.0f}s]",
            flush=True,
        )
        table.append(r)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(table))
    table = sorted({**saved, **{r["n"]: r for r in table}}.values(), key=lambda r: r["n"])
    summary = _summary(table, "rows")
    if args.defaults:
        held = [r for r in table if r["desc"].startswith("held out")]
        calib = [r for r in table if r["desc"].startswith("calibration")]
        summary = _summary(held, "held-out rows") + "\n" + _summary(calib, "calibration rows")
    print(summary)
    if args.markdown:
        flags = " ".join(
            ["--defaults"] * args.defaults
            + ([f"--model {args.model}"] if args.model else [])
            + [f"--skip-model {m}" for m in args.skip_model]
        )
        intro = (
            "# Memory estimate vs measured peak (CPU)\n\n"
            f"Generated by `python benchmarks/memory_accuracy.py {flags + ' ' if flags else ''}"
            f"--markdown {args.markdown}`. Each row "
            "ran real optimizer steps on a 2-layer Llama-style model with the real 128,256-token vocabulary "
            "(hidden size 64 to 512, or Llama-3-8B's layer geometry for *wide8b*; tied and untied), LoRA r4 on "
            "all linear layers, "
            + (
                "bfloat16 and the default memory options (chunked loss, 8-bit states for matrices trained in full), "
                if args.defaults
                else "float32 and the stock memory options (full logits), "
            )
            + "gradient checkpointing on and batch 1 unless the row says otherwise. *measured*: the peak of live "
            "tensor bytes (on CPU: `headtune.core.training.memtrack.LiveTensorTracker`; on CUDA: "
            "`torch.cuda.max_memory_allocated`), here on " + device + "; *estimate*: `headtune estimate`'s "
            "`tensors_peak_bytes` for the same device"
            + (
                " and the same data (its token lengths, as the window and `headtune estimate` read them); "
                "*worst case*: every batch at max_seq_len with every token labelled"
                if args.defaults
                else ""
            )
            + ". Rows marked *calibration* were used to set a constant of the estimate; *held out* rows never "
            "were. Peer rules for the same rows, as multiples of the measured peak: *weights×4* (accelerate "
            "`estimate-memory`'s training figure) and the *Unsloth badge* (params × 0.9 + 1.4 GB).\n\n"
            + (
                "The rows were measured by that command (shared between processes with `--part` and `--json-out`); "
                "the estimate columns are the current estimate's for the same plans and data (`--from-json ... "
                "--reestimate`).\n\n"
                if args.reestimate
                else ""
            )
        )
        out = [
            "| # | model | plan | measured MiB | estimate MiB | ratio | worst case MiB | weights×4 | Unsloth badge "
            "| peak phase |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in table:
            out.append(
                f"| {r['n']} | {r['model']} | {r['desc']} | {r['measured'] / MiB:.0f} | {r['estimate'] / MiB:.0f} | "
                f"{r['ratio']:.3f} | {r['worst'] / MiB:.0f} | {r['accel']:.2f}x | {r['unsloth']:.2f}x | {r['phase']} |"
            )
        out.append("")
        out += summary.splitlines()
        Path(args.markdown).write_text(intro + "\n".join(out) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
