"""The ``memory:`` options as they will run for a plan on a device, with the reasons for fallbacks.

``resolve(plan, device)`` decides what actually runs (a fused loss without CUDA, paged states on a
CPU, a fused step that would not be exact, ...). The estimate and the training job both read its
answer, so they agree on what a run does.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Effective:
    """The memory options as they will run for a plan on a device, with the reasons for fallbacks."""

    loss: str  # standard | chunked | fused
    loss_chunk: int
    frozen_copy: bool
    matrix_dtype: str  # peft | model | float32
    matrix_states: str  # trainer | 32bit | 8bit | paged_8bit
    fused_step: bool
    fused_backend: str | None = None  # liger | cce when loss == fused
    notes: tuple[str, ...] = field(default_factory=tuple)


def fused_loss_backend() -> str | None:
    """The installed fused linear cross-entropy library: liger, cce or None (no import: cheap)."""
    if importlib.util.find_spec("liger_kernel") is not None:
        return "liger"
    if importlib.util.find_spec("cut_cross_entropy") is not None:
        return "cce"
    return None


def resolve(plan, device: str, tied: bool = False) -> Effective:
    """What the ``memory:`` options of ``plan`` amount to on ``device`` ("cuda..." or "cpu"), for a
    model with tied (``tied``) or separate embedding and head matrices."""
    m, t, e = plan.memory, plan.training, plan.embeddings
    notes = []
    frozen_copy = m.frozen_copy
    loss, backend = m.loss, None
    if loss == "fused":
        backend = fused_loss_backend()
        if not device.startswith("cuda"):
            notes.append("memory.loss: fused kernels need CUDA; the chunked loss runs instead.")
            loss, backend = "chunked", None
        elif backend is None:
            notes.append(
                "memory.loss: neither liger-kernel nor cut-cross-entropy is installed; the chunked "
                "loss runs instead (pip install liger-kernel)."
            )
            loss = "chunked"
    states = m.matrix_states
    if states == "auto":
        states = {"adamw": "32bit", "adamw_8bit": "8bit", "paged_adamw_8bit": "paged_8bit"}[t.optimizer]
    if states == "paged_8bit" and not device.startswith("cuda"):
        notes.append("memory.matrix_states: paged states need CUDA; plain 8-bit states are used on the CPU.")
        states = "8bit"
    if t.sharding == "fsdp" and states in ("8bit", "paged_8bit") and _matrices_in_full(plan):
        # bitsandbytes' 8-bit step runs on whole tensors, not on the shards FSDP gives each process.
        notes.append(
            "memory.matrix_states: 8-bit states do not run on sharded matrices (FSDP); 32-bit states are used."
        )
        states = "32bit"
    fused = m.fused_step
    if fused:
        why = []
        if t.grad_accum > 1:
            why.append("training.grad_accum > 1 (the step must wait for every micro-batch)")
        if t.max_grad_norm > 0:
            why.append("training.max_grad_norm > 0 (clipping needs every gradient before any step)")
        if plan.model.dtype == "float16":
            why.append("model.dtype float16 (the gradient scaler unscales after backward)")
        if t.sharding == "fsdp":
            why.append("training.sharding fsdp (each process holds a share of each matrix and its gradient)")
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            why.append("a distributed run (the step would run before gradients are averaged across processes)")
        if not ((e.train_embeddings or e.train_lm_head) and e.mode == "full"):
            why.append("no matrix is trained in full (embeddings.mode full)")
        if why:
            notes.append("memory.fused_step is off: " + "; ".join(why) + ".")
            fused = False
    return Effective(
        loss=loss,
        loss_chunk=m.loss_chunk_tokens,
        frozen_copy=frozen_copy,
        matrix_dtype=m.matrix_dtype,
        matrix_states=states,
        fused_step=fused,
        fused_backend=backend,
        notes=tuple(notes),
    )


def _matrices_in_full(plan) -> bool:
    e = plan.embeddings
    return (e.train_embeddings or e.train_lm_head) and e.mode == "full"


def matrix_bytes(eff: Effective, model_dtype: str, kbit: bool, trained: bool) -> int:
    """Bytes per value of an embedding/head matrix (frozen or trained copy) as this stack stores it."""
    dt = 2 if model_dtype in ("bfloat16", "float16") else 4
    if eff.matrix_dtype == "peft":
        if kbit:
            return 4
        return 4 if (trained and model_dtype == "float16") else dt
    if trained and (eff.matrix_dtype == "float32" or model_dtype == "float16"):
        return 4  # fp32 master weights (fp16 always: the gradient scaler refuses fp16 gradients)
    return dt
