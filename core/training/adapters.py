"""Wrapping a model for training: LoRA on the chosen layers plus what the embeddings modes set up.

What trains of the embedding and head comes from ``core.embeddings`` (``resolve_embeddings``);
this module turns it into one PEFT ``LoraConfig``, prepares k-bit models, and applies the lean
memory options that act on the wrapped model. On a model with tied embeddings (one matrix for
input and output) the matrix is targeted once on the embedding side and PEFT's
``ensure_weight_tying`` puts the same adapter on the head, so the model stays tied through
training, save and reload.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..embeddings.setup import EmbeddingSetup
from ..errors import PlanError
from ..model.sources import embedding_module_names
from ..plan.memory_options import resolve as resolve_memory_options
from . import lean

ATTENTION_HINTS = ("attn", "attention")
MLP_HINTS = ("mlp", "feed_forward", "ffn")


def linear_leaf_names(model, preset: str) -> list[str]:
    """Leaf names of the linear layers a LoRA preset targets (``all-linear`` handled by PEFT)."""
    import torch

    _, head = embedding_module_names(model)
    names = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name == head:
            continue
        path = name.lower()
        if any(h in path for h in ATTENTION_HINTS) or (preset == "attention+mlp" and any(h in path for h in MLP_HINTS)):
            names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise PlanError(
            f"adapter.target_modules: the preset {preset!r} matches no layer of this model; use "
            "all-linear or list module names.",
            "adapter.target_modules",
        )
    return sorted(names)


def build_peft_model(model, plan, setup: EmbeddingSetup, lean_options=None):
    """Wrap ``model`` with LoRA and the embedding/head setup (k-bit preparation included);
    ``lean_options`` is ``core.plan.memory_options.resolve``'s answer for this run (resolved here when absent)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    a = plan.adapter
    mem = lean_options or resolve_memory_options(plan, "cpu", tied=setup.tied)
    if plan.model.quantization != "none":
        if mem.matrix_dtype == "peft":
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=plan.training.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        else:
            # The same preparation, but the embedding/head matrices keep the model dtype: an fp32
            # upcast of a frozen 128k x 4096 matrix is 2 GB for nothing.
            lean.prepare_kbit(model, plan.training.gradient_checkpointing, lean.matrix_parameters(model))
    if a.dora and setup.tied and setup.lora_targets:
        # PEFT ties the head's low-rank factors to the embedding's but not DoRA's magnitudes (one per
        # hidden unit on the embedding, one per token on the head): the tied head's output is not finite.
        raise PlanError(
            "adapter.dora: DoRA cannot train this model's tied embedding matrix through LoRA "
            "(embeddings.mode lora); choose embeddings.mode full or tokens, or turn adapter.dora off.",
            "adapter.dora",
        )
    if isinstance(a.target_modules, list):
        targets: str | list[str] = list(a.target_modules)
    elif a.target_modules == "all-linear" and not setup.lora_targets:
        targets = "all-linear"
    elif a.target_modules == "all-linear":
        # PEFT's "all-linear" string excludes the head; list the block layers so the head can join.
        targets = _block_linear(model, setup)
    else:
        targets = linear_leaf_names(model, a.target_modules)
    if setup.lora_targets:
        targets = sorted(set(targets) | set(setup.lora_targets))
    config = LoraConfig(
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        use_dora=a.dora,
        use_rslora=a.rslora,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=targets,
        modules_to_save=setup.modules_to_save or None,
        trainable_token_indices=setup.token_indices or None,
        ensure_weight_tying=setup.tied and bool(setup.modules_to_save or setup.lora_targets or setup.token_indices),
    )
    try:
        # PEFT upcasts 16-bit adapter weights to fp32 one parameter at a time, which would part a tied
        # head's LoRA factors from the embedding's (they share memory): the cast is done here instead,
        # and the shared memory restored after it.
        peft_model = get_peft_model(model, config, autocast_adapter_dtype=False)
    except ValueError as exc:
        raise PlanError(
            f"adapter.target_modules: PEFT could not apply LoRA to this model ({exc}).", "adapter.target_modules"
        ) from exc
    import torch
    from peft.tuners.tuners_utils import cast_adapter_dtype

    aliases = aliased_parameters(peft_model)
    cast_adapter_dtype(peft_model, adapter_name="default")
    restore_aliases(peft_model, aliases)

    if mem.matrix_dtype == "float32":
        lean.set_trained_dtype(peft_model, torch.float32)  # fp32 master weights for the trained matrices
    if plan.model.dtype == "float16":
        # fp16 training uses a gradient scaler, which refuses fp16 gradients: trainable copies
        # (modules_to_save keeps the base dtype) must be fp32 master weights.
        for p in peft_model.parameters():
            if p.requires_grad and p.dtype == torch.float16:
                p.data = p.data.float()
    if not mem.frozen_copy:
        lean.drop_frozen_copies(peft_model)
    return peft_model


def _block_linear(model, setup: EmbeddingSetup) -> list[str]:
    """Leaf names of every linear layer inside the transformer blocks."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != setup.head_name and ".layers." in name:
            names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise PlanError(
            "adapter.target_modules: the linear layers of this architecture could not be found "
            "by name; list them explicitly (e.g. [c_attn, c_proj]).",
            "adapter.target_modules",
        )
    return sorted(names)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, each storage counted once.

    PEFT ties a tied model's head adapter to the embedding's by sharing storage between two
    Parameter objects (transposed), so counting Parameter objects would count those values twice.
    """
    seen: dict[tuple[int, int], tuple[int, bool]] = {}
    for p in model.parameters():
        key = (p.untyped_storage().data_ptr(), p.storage_offset()) if p.device.type != "meta" else (id(p), 0)
        numel, trainable = seen.get(key, (0, False))
        seen[key] = (max(numel, p.numel()), trainable or p.requires_grad)
    trainable_count = sum(n for n, t in seen.values() if t)
    return trainable_count, sum(n for n, _ in seen.values())


@dataclass(frozen=True)
class Alias:
    """A trainable parameter over another's memory: PEFT's LoRA on a tied head is the embedding's
    LoRA factors, transposed. ``shape``, ``stride`` and ``offset`` (from the first parameter's
    start) say where the alias lies in that memory."""

    first: str
    alias: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


def aliased_parameters(model) -> list[Alias]:
    """Every trainable parameter that is a distinct tensor over an earlier one's memory."""
    seen: dict[int, tuple[str, object]] = {}
    out = []
    for name, p in model.named_parameters():
        if not p.requires_grad or p.device.type == "meta":
            continue
        try:
            ptr = p.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # a sharded (FSDP) parameter: no storage of its own
            continue
        if ptr in seen:
            first_name, first = seen[ptr]
            offset = p.storage_offset() - first.storage_offset()  # type: ignore[attr-defined]
            out.append(Alias(first_name, name, tuple(p.shape), tuple(p.stride()), offset))
        else:
            seen[ptr] = (name, p)
    return out


def restore_aliases(model, aliases: list[Alias]) -> None:
    """Point each alias at its first parameter's memory again. Moving a model to a device (even
    the one it is on, e.g. ``cpu`` to ``cpu:0``) copies each parameter on its own, after which the
    tied head's LoRA would train apart from the embedding's."""
    params = dict(model.named_parameters())
    for a in aliases:
        first, alias = params[a.first], params[a.alias]
        if alias.untyped_storage().data_ptr() != first.untyped_storage().data_ptr():
            alias.data = first.data.as_strided(a.shape, a.stride, first.storage_offset() + a.offset)


def fold_aliased_gradients(model, aliases: list[Alias]) -> None:
    """Add each alias's gradient into its first parameter's and drop it, so that the shared values
    take one optimizer step on their whole gradient (as one tied matrix would), not two steps on two
    halves. Linear, so it gives the same result before or after data-parallel averaging."""
    if not aliases:
        return
    import torch

    params = dict(model.named_parameters())
    for a in aliases:
        first, alias = params[a.first], params[a.alias]
        if alias.grad is None:
            continue
        if first.grad is None:
            first.grad = torch.zeros_like(first)
        if first.grad.stride() != first.stride():
            raise RuntimeError(f"{a.first}: its gradient's layout differs from the parameter's")
        # The alias's layout over the shared memory, applied to the first parameter's gradient.
        first.grad.as_strided(a.shape, a.stride, first.grad.storage_offset() + a.offset).add_(alias.grad)
        alias.grad = None
