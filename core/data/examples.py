"""Turning rows into masked training examples: tokenisation, the validation split, packing, batching.

Chat and instruction rows go through the chat template and only the assistant's tokens (with the
end-of-turn token) are trained; the prompt is masked with -100. Raw text trains on every token.

Masking works on any chat template whose rendering of a conversation starts with its rendering
of every earlier prefix (true of the common templates): each assistant turn's character span is
found by rendering the prefix with and without that turn, and tokens are labelled through the
fast tokenizer's offset mapping. (TRL's assistant-only loss needs ``{% generation %}`` markers,
which most models' templates lack.)
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..model.templates import assistant_spans, resolve_template
from .reading import IGNORE_INDEX, Example, example_texts, load_examples


@dataclass
class DataStats:
    format: str
    rows: int
    train_examples: int
    val_examples: int
    truncated: int = 0
    skipped_no_labels: int = 0
    trained_tokens: int = 0
    masked_tokens: int = 0
    template_source: str = ""
    packed_sequences: int = 0


@dataclass
class PreparedData:
    train: list[dict[str, list[int]]]
    val: list[dict[str, list[int]]]
    stats: DataStats
    examples: list[Example] = field(default_factory=list)


def tokenize_example(tokenizer, ex: Example, template: str, max_seq_len: int, where: str = "") -> dict:
    """input_ids and labels (-100 on masked tokens), truncated to ``max_seq_len``."""
    if ex.text is not None:
        ids = tokenizer(ex.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        text, spans = assistant_spans(tokenizer, ex.messages, template, where)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = []
        for tok_id, (start, end) in zip(ids, enc["offset_mapping"]):
            trained = any(s <= start < e or (start == end and s < start <= e) for s, e in spans)
            labels.append(tok_id if trained else IGNORE_INDEX)
    truncated = len(ids) > max_seq_len
    return {"input_ids": ids[:max_seq_len], "labels": labels[:max_seq_len], "truncated": truncated}


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split of ``range(n)``."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = 0
    if val_fraction > 0 and n >= 2:
        n_val = min(n - 1, max(1, math.floor(n * val_fraction + 0.5)))
    return sorted(order[n_val:]), sorted(order[:n_val])


def pack(features: Iterable[dict], max_seq_len: int) -> list[dict]:
    """Greedily concatenate examples, in order, into sequences of at most ``max_seq_len``."""
    packs: list[dict] = []
    cur: dict = {"input_ids": [], "labels": []}
    for f in features:
        if cur["input_ids"] and len(cur["input_ids"]) + len(f["input_ids"]) > max_seq_len:
            packs.append(cur)
            cur = {"input_ids": [], "labels": []}
        cur["input_ids"] += f["input_ids"]
        cur["labels"] += f["labels"]
    if cur["input_ids"]:
        packs.append(cur)
    return packs


def prepare(spec, tokenizer, seed: int) -> PreparedData:
    """Everything the trainer needs from ``plan.data``: tokenised, masked, split (and packed)."""
    examples, fmt = load_examples(spec.path, spec.format)
    template, template_source = ("", "") if fmt == "text" else resolve_template(tokenizer, spec.chat_template)
    if fmt != "text" and not getattr(tokenizer, "is_fast", False):
        raise DataError(
            "This model's tokenizer has no fast (Rust) version, which Headtune needs to tell the "
            "assistant's tokens from the prompt's. Use a model whose repository has tokenizer.json."
        )
    name = Path(spec.path).name
    features, truncated, skipped = [], 0, 0
    for ex in examples:
        f = tokenize_example(tokenizer, ex, template, spec.max_seq_len, f"{name}, line {ex.line}")
        truncated += f.pop("truncated")
        if all(label == IGNORE_INDEX for label in f["labels"]):
            skipped += 1  # the reply was cut off entirely by max_seq_len
            continue
        features.append(f)
    if not features:
        raise DataError(
            f"No example in {name} has a trained token within data.max_seq_len="
            f"{spec.max_seq_len}; raise data.max_seq_len."
        )
    train_idx, val_idx = split_indices(len(features), spec.val_fraction, seed)
    train, val = [features[i] for i in train_idx], [features[i] for i in val_idx]
    stats = DataStats(
        format=fmt,
        rows=len(examples),
        train_examples=len(train),
        val_examples=len(val),
        truncated=truncated,
        skipped_no_labels=skipped,
        template_source=template_source,
    )
    for f in features:
        n_trained = sum(1 for x in f["labels"] if x != IGNORE_INDEX)
        stats.trained_tokens += n_trained
        stats.masked_tokens += len(f["labels"]) - n_trained
    if spec.packing:
        train, val = pack(train, spec.max_seq_len), pack(val, spec.max_seq_len)
        stats.packed_sequences = len(train)
    return PreparedData(train=train, val=val, stats=stats, examples=examples)


def check_round_trip(tokenizer, examples: list[Example], name: str) -> None:
    """Refuse a tokenizer (extended with new tokens) that does not decode every text of the data
    back to itself; the message names the first row that breaks."""
    for ex in examples:
        _trained, every = example_texts(ex)
        for text in every:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if tokenizer.decode(ids, clean_up_tokenization_spaces=False) != text:
                raise DataError(
                    f"{name}, line {ex.line}: with embeddings.vocab_tokens added, this text no longer "
                    f"decodes back to itself ({text[:60]!r}). Remove the new tokens it contains.",
                    line=ex.line,
                )


class Collator:
    """Right-pads a batch; padding is masked in ``attention_mask`` and ``labels``."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class FlatCollator:
    """Lays a batch's rows end to end as one sequence, with no padding (``data.batching:
    padding_free``).

    Positions restart at 0 on each row, which is how transformers' attention tells the rows apart
    (``masking_utils.find_packed_sequence_indices`` for sdpa and eager, varlen kernels for flash
    attention): each row attends to itself only, exactly as when padded. The first token of each
    row gets the label -100, since after the model's one-token shift it would be predicted by the
    previous row's last token (in a padded batch no token predicts it either). ``attention_mask``
    is all ones and only counts tokens: the trainer drops it before the model, whose attention
    would otherwise ignore the positions."""

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for b in batch:
            n = len(b["input_ids"])
            ids += b["input_ids"]
            labels += [IGNORE_INDEX] + list(b["labels"][1:])
            positions += range(n)
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "attention_mask": torch.ones((1, len(ids)), dtype=torch.long),
        }


def collator_for(batching: str, pad_id: int):
    """The collator of a ``data.batching`` choice."""
    return FlatCollator() if batching == "padding_free" else Collator(pad_id)
