"""Turning rows into masked training examples: tokenisation, the validation split, packing, batching.

Chat and instruction rows go through the chat template and only the assistant's tokens (with the
end-of-turn token) are trained; the prompt is masked with -100. Raw text trains on every token.

Masking works on any chat template whose rendering of a conversation starts with its rendering
of every earlier prefix (true of the common templates): each assistant turn's character span is
found by rendering the prefix with and without that turn, and tokens are labelled through the
fast tokenizer's offset mapping. (TRL's assistant-only loss needs ``{% generation %}`` markers,
which most models' templates lack.)

Preference pairs (``training.method`` dpo or orpo) become two such rows, the prompt followed by the
chosen and by the rejected reply, each trained on its last reply only (earlier assistant turns
belong to the prompt); ``PairCollator`` puts a batch's chosen rows and then its rejected rows
through the model as one batch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..model.templates import assistant_spans, resolve_template
from .reading import IGNORE_INDEX, Example, Pair, example_texts, load_examples, load_pairs


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
    examples: list[Example] | list[Pair] = field(default_factory=list)


def tokenize_example(
    tokenizer, ex: Example, template: str, max_seq_len: int, where: str = "", last_reply_only: bool = False
) -> dict:
    """input_ids and labels (-100 on masked tokens), truncated to ``max_seq_len``; with
    ``last_reply_only`` only the conversation's last assistant turn is labelled."""
    if ex.text is not None:
        ids = tokenizer(ex.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        text, spans = assistant_spans(tokenizer, ex.messages, template, where)
        if last_reply_only:
            spans = spans[-1:]
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


def prepare(spec, tokenizer, seed: int, method: str = "sft") -> PreparedData:
    """Everything the trainer needs from ``plan.data``: tokenised, masked, split (and packed);
    preference pairs for ``method`` dpo or orpo."""
    if method != "sft":
        return prepare_pairs(spec, tokenizer, seed)
    examples, fmt = load_examples(spec.path, spec.format)
    if fmt == "preference":
        raise DataError(
            f"{Path(spec.path).name} holds preference pairs (chosen/rejected replies); train them with "
            "training.method dpo or orpo, or use a dataset of conversations for sft."
        )
    template, template_source = ("", "") if fmt == "text" else resolve_template(tokenizer, spec.chat_template)
    if fmt != "text":
        _need_fast(tokenizer)
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


def _need_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            "This model's tokenizer has no fast (Rust) version, which Headtune needs to tell the "
            "assistant's tokens from the prompt's. Use a model whose repository has tokenizer.json."
        )


def tokenize_pair(tokenizer, pair: Pair, template: str, max_seq_len: int, where: str) -> tuple[dict, bool]:
    """The pair's two rows (``chosen_*`` and ``rejected_*`` input_ids and labels); whether one was cut."""
    out: dict = {}
    truncated = False
    for which in ("chosen", "rejected"):
        ex = Example(pair.line, messages=pair.conversation(which))
        f = tokenize_example(tokenizer, ex, template, max_seq_len, where, last_reply_only=True)
        truncated |= f["truncated"]
        out[f"{which}_input_ids"], out[f"{which}_labels"] = f["input_ids"], f["labels"]
    return out, truncated


def prepare_pairs(spec, tokenizer, seed: int) -> PreparedData:
    """Preference pairs, tokenised through the chat template, replies labelled, split."""
    pairs = load_pairs(spec.path, spec.format)
    template, template_source = resolve_template(tokenizer, spec.chat_template)
    _need_fast(tokenizer)
    name = Path(spec.path).name
    features, truncated, skipped = [], 0, 0
    for pair in pairs:
        f, cut = tokenize_pair(tokenizer, pair, template, spec.max_seq_len, f"{name}, line {pair.line}")
        truncated += cut
        if any(all(x == IGNORE_INDEX for x in f[f"{w}_labels"]) for w in ("chosen", "rejected")):
            skipped += 1  # a reply cut off entirely by max_seq_len
            continue
        features.append(f)
    if not features:
        raise DataError(
            f"No pair in {name} keeps both replies within data.max_seq_len={spec.max_seq_len}; raise data.max_seq_len."
        )
    train_idx, val_idx = split_indices(len(features), spec.val_fraction, seed)
    stats = DataStats(
        format="preference",
        rows=len(pairs),
        train_examples=len(train_idx),
        val_examples=len(val_idx),
        truncated=truncated,
        skipped_no_labels=skipped,
        template_source=template_source,
    )
    for f in features:
        for w in ("chosen", "rejected"):
            n_trained = sum(1 for x in f[f"{w}_labels"] if x != IGNORE_INDEX)
            stats.trained_tokens += n_trained
            stats.masked_tokens += len(f[f"{w}_labels"]) - n_trained
    return PreparedData(
        train=[features[i] for i in train_idx], val=[features[i] for i in val_idx], stats=stats, examples=pairs
    )


def check_round_trip(tokenizer, examples: list[Example] | list[Pair], name: str) -> None:
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


def collator_for(batching: str, pad_id: int, pairs: bool = False):
    """The collator of a ``data.batching`` choice (of preference pairs with ``pairs``)."""
    rows = FlatCollator() if batching == "padding_free" else Collator(pad_id)
    return PairCollator(rows) if pairs else rows


class PairCollator:
    """A batch of preference pairs as one batch of rows: the chosen rows, then the rejected rows
    (padded or padding-free, as ``rows`` lays them out). ``pair_rows`` gives each token's row
    (0 .. 2 x pairs - 1), so the loss can sum each reply's log-probabilities whatever the
    layout; ``ref_chosen`` / ``ref_rejected`` carry the reference model's log-probabilities
    once they are known (``core.training.preference``)."""

    def __init__(self, rows):
        self.rows = rows

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        rows = [
            {"input_ids": b[f"{w}_input_ids"], "labels": b[f"{w}_labels"]}
            for w in ("chosen", "rejected")
            for b in batch
        ]
        out = self.rows(rows)
        if "position_ids" in out:  # padding-free: one sequence, row after row
            out["pair_rows"] = torch.tensor([[i for i, r in enumerate(rows) for _ in r["input_ids"]]], dtype=torch.long)
        else:
            out["pair_rows"] = torch.arange(len(rows))[:, None].expand_as(out["input_ids"]).contiguous()
        if all("ref_chosen" in b for b in batch):
            out["ref_chosen"] = torch.tensor([b["ref_chosen"] for b in batch], dtype=torch.float32)
            out["ref_rejected"] = torch.tensor([b["ref_rejected"] for b in batch], dtype=torch.float32)
        return out
