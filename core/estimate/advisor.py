"""The advisor: plan changes that make a run fit, each re-estimated, those that fit first."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..model.shape import ModelShape
from .breakdown import tensor_peak


@dataclass
class Advice:
    set: dict[str, Any]
    total_bytes: int
    why: str


ADVICE_STEPS: list[tuple[dict[str, Any], str]] = [
    ({"training.gradient_checkpointing": True}, "recompute activations in backward (about 30% slower)"),
    ({"training.optimizer": "adamw_8bit"}, "8-bit optimizer states"),
    ({"training.optimizer": "paged_adamw_8bit"}, "8-bit optimizer states paged to CPU memory when the GPU is full"),
    ({"model.quantization": "4bit"}, "store the frozen base weights in 4-bit NF4 (QLoRA)"),
    ({"embeddings.mode": "tokens"}, "train only selected token rows instead of whole matrices"),
    # Lean memory (core.training.lean): exact ones first in this list; the estimate ranks them anyway.
    ({"memory.loss": "chunked"}, "compute the loss a chunk of tokens at a time: same loss, no full-vocabulary logits"),
    ({"memory.frozen_copy": False}, "drop the frozen original beside each matrix trained in full (exact)"),
    ({"memory.matrix_dtype": "model"}, "keep the embedding/head matrices in the model dtype (16-bit master weights)"),
    ({"memory.matrix_states": "8bit"}, "8-bit optimizer states for the embedding/head matrices"),
    (
        {"memory.fused_step": True, "training.max_grad_norm": 0.0},
        "update the embedding/head matrices inside backward, so their gradients never all exist (no clipping)",
    ),
]


# Memory options whose defaults save memory: what the plan would hold without each, and its label.
SAVING_DEFAULTS: dict[str, tuple[Any, str]] = {
    "memory.loss": ("standard", "chunked loss"),
    "memory.frozen_copy": (True, "no frozen copy beside a matrix trained in full"),
    "memory.matrix_dtype": ("peft", "embedding/head matrices in the model dtype"),
    "memory.matrix_states": ("auto", "8-bit optimizer states for the embedding/head matrices"),
}


def saved_by_defaults(plan, shape: ModelShape, device: str, total: int, data=None) -> list[dict]:
    """The memory-saving defaults that ``plan`` keeps, each with the bytes it saves here (its
    total without that one default, minus ``total``); those that save nothing are left out."""
    from ..plan.schema import Plan

    default = Plan()
    out = []
    for key, (without, label) in SAVING_DEFAULTS.items():
        value = plan.get(key)
        if value != default.get(key) or value == without:
            continue
        saved = tensor_peak(_changed(plan, {key: without}), shape, device, data).total_bytes - total
        if saved > 0:
            out.append({"key": key, "label": label, "bytes": int(saved)})
    return sorted(out, key=lambda x: -x["bytes"])


FULL_MATRIX_KEYS = ("memory.frozen_copy", "memory.matrix_dtype", "memory.matrix_states", "memory.fused_step")


def advisor(plan, shape: ModelShape, device: str, capacity: int, data=None) -> list[Advice]:
    """Changes that make the plan fit, each re-estimated (for ``data``'s lengths when given, a
    ``core.estimate.lengths.DataTokens``); those that fit first, lowest total first."""
    candidates: list[tuple[dict, str]] = []
    for change, why in ADVICE_STEPS:
        if all(plan.get(k) == v for k, v in change.items()):
            continue
        if "embeddings.mode" in change and not (plan.embeddings.train_embeddings or plan.embeddings.train_lm_head):
            continue
        if "embeddings.mode" in change and not (plan.embeddings.token_ids or plan.embeddings.adds_tokens):
            continue
        if change.get("training.optimizer") == "paged_adamw_8bit" and not device.startswith("cuda"):
            continue
        e = plan.embeddings
        if any(k in change for k in FULL_MATRIX_KEYS) and not (
            (e.train_embeddings or e.train_lm_head) and e.mode == "full"
        ):
            continue  # these act on matrices trained in full only
        if "memory.fused_step" in change and (plan.training.grad_accum > 1 or plan.model.dtype == "float16"):
            continue  # it would not be exact, so it stays off (core.plan.memory_options.resolve)
        candidates.append((change, why))
    S, B = (data.seq_len(plan) if data is not None else plan.data.max_seq_len), plan.training.batch_size
    for seq in (S // 2, S // 4):
        if seq >= 128:
            candidates.append(({"data.max_seq_len": seq}, f"shorter sequences ({seq} tokens)"))
    if B > 1:
        candidates.append(
            (
                {"training.batch_size": max(1, B // 2), "training.grad_accum": plan.training.grad_accum * 2},
                "half the batch, twice the accumulation (same effective batch)",
            )
        )
    if plan.adapter.r > 8:
        candidates.append(({"adapter.r": plan.adapter.r // 2}, f"LoRA rank {plan.adapter.r // 2}"))
    out, combined = [], {}
    for change, why in candidates:
        est = tensor_peak(_changed(plan, change), shape, device, data)
        out.append(Advice(set=change, total_bytes=est.total_bytes, why=why))
    # A combination of the changes, best first, when no single one fits.
    if out and not any(x.total_bytes <= capacity for x in out):
        for adv in sorted(out, key=lambda x: x.total_bytes):
            if "training.optimizer" in adv.set and "training.optimizer" in combined:
                continue  # one optimizer at a time
            combined.update(adv.set)
            total = tensor_peak(_changed(plan, combined), shape, device, data).total_bytes
            if total <= capacity:
                out.append(Advice(set=dict(combined), total_bytes=total, why="these changes together"))
                break
    return sorted(out, key=lambda x: (x.total_bytes > capacity, x.total_bytes))


def _changed(plan, change: dict[str, Any]):
    """A copy of ``plan`` with dotted keys set (values the advisor knows to be valid)."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in change.items():
        section, leaf = key.split(".")
        sections.setdefault(section, {})[leaf] = value
    return replace(plan, **{s: replace(getattr(plan, s), **kv) for s, kv in sections.items()})
