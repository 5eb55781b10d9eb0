"""LoRA and the three ways to train the token embeddings and the LM head.

``full``   PEFT ``modules_to_save``: a trainable copy of the whole matrix.
``tokens`` PEFT ``trainable_token_indices``: only the listed rows (plus new tokens) train.
``lora``   LoRA on the embedding and/or the head.

On a model with tied embeddings (one matrix for input and output) the matrix is targeted once
on the embedding side and PEFT's ``ensure_weight_tying`` puts the same adapter on the head, so
the model stays tied through training, save and reload. Rows of tokens added with
``embeddings.new_tokens`` start at the mean of the existing rows and are trained in every mode:
in a matrix that is not trained otherwise, through ``trainable_token_indices``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PlanError
from .models import embedding_module_names, is_tied

ATTENTION_HINTS = ("attn", "attention")
MLP_HINTS = ("mlp", "feed_forward", "ffn")


@dataclass
class EmbeddingSetup:
    """What is trained of the embedding and head, as resolved against a concrete model."""

    tied: bool
    embed_name: str
    head_name: str | None
    new_token_ids: list[int] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    lora_targets: list[str] = field(default_factory=list)
    token_indices: dict[str, list[int]] = field(default_factory=dict)

    @property
    def leaf_names(self) -> tuple[str, ...]:
        names = [self.embed_name.rsplit(".", 1)[-1]]
        if self.head_name:
            names.append(self.head_name.rsplit(".", 1)[-1])
        return tuple(names)


def add_new_tokens(tokenizer, new_tokens: list[str]) -> tuple[list[int], int]:
    """Add token strings to the tokenizer (as special tokens: never split).

    Returns (ids of all ``new_tokens``, tokenizer length before adding). Strings already in
    the vocabulary keep their id and row; they are still trained.
    """
    before = len(tokenizer)
    if new_tokens:
        missing = [t for t in new_tokens if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
    return [tokenizer.convert_tokens_to_ids(t) for t in new_tokens], before


def init_new_rows(model, tokenizer_len: int, new_ids: list[int], original_len: int) -> None:
    """Make room for ``tokenizer_len`` tokens and set the rows of newly added ids (those at or
    past ``original_len``) to the mean of the original rows, in the embedding and the head.

    Models often have more rows than their tokenizer has tokens (padding for speed), so a new
    token can land on an existing, never-trained row: it is reset to the mean as well.
    """
    import torch
    if tokenizer_len > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(tokenizer_len, mean_resizing=False)
    added = sorted(i for i in new_ids if i >= original_len)
    if not added:
        return
    with torch.no_grad():
        layers = (model.get_input_embeddings(), model.get_output_embeddings())
        for layer in {id(m): m for m in layers if m is not None}.values():
            w = layer.weight
            w[added] = w[:original_len].float().mean(dim=0, keepdim=True).to(w.dtype).expand(len(added), -1)


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
        raise PlanError(f"adapter.target_modules: the preset {preset!r} matches no layer of this model; use "
                        "all-linear or list module names.", "adapter.target_modules")
    return sorted(names)


def resolve_embeddings(model, spec, new_token_ids: list[int]) -> EmbeddingSetup:
    """Decide which PEFT mechanism trains what, for this model and ``plan.embeddings``."""
    emb, head = embedding_module_names(model)
    tied = is_tied(model)
    setup = EmbeddingSetup(tied=tied, embed_name=emb, head_name=head, new_token_ids=list(new_token_ids))
    emb_leaf = emb.rsplit(".", 1)[-1]
    head_leaf = head.rsplit(".", 1)[-1] if head else None
    # A tied matrix is trained from the embedding side; ensure_weight_tying mirrors it on the head.
    train_emb = spec.train_embeddings or (tied and spec.train_lm_head)
    train_head = spec.train_lm_head and not tied and head_leaf is not None
    vocab = model.get_input_embeddings().weight.shape[0]
    bad = [i for i in spec.token_ids if i >= vocab]
    if bad:
        raise PlanError(f"embeddings.token_ids: {bad[:5]} are outside the vocabulary (size {vocab}).",
                        "embeddings.token_ids")
    rows = sorted(set(spec.token_ids) | set(new_token_ids))

    fully: set[str] = set()  # matrices whose new rows are covered already
    for on, leaf in ((train_emb, emb_leaf), (train_head, head_leaf)):
        if not on:
            continue
        if spec.mode == "full":
            setup.modules_to_save.append(leaf)
            fully.add(leaf)
        elif spec.mode == "lora":
            setup.lora_targets.append(leaf)
            fully.add(leaf)
        else:
            setup.token_indices[leaf] = rows
    if new_token_ids:
        # New rows must learn in both matrices even where the user did not ask for training.
        for leaf in (emb_leaf,) + ((head_leaf,) if head_leaf and not tied else ()):
            if leaf not in fully and leaf not in setup.token_indices:
                setup.token_indices[leaf] = sorted(new_token_ids)
    return setup


def build_peft_model(model, plan, setup: EmbeddingSetup, lean_options=None):
    """Wrap ``model`` with LoRA and the embedding/head setup (k-bit preparation included);
    ``lean_options`` is ``core.lean.resolve``'s answer for this run (resolved here when absent)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from . import lean

    a = plan.adapter
    mem = lean_options or lean.resolve(plan, "cpu", tied=setup.tied)
    if plan.model.quantization != "none":
        if mem.matrix_dtype == "peft":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=plan.training.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            # The same preparation, but the embedding/head matrices keep the model dtype: an fp32
            # upcast of a frozen 128k x 4096 matrix is 2 GB for nothing.
            lean.prepare_kbit(model, plan.training.gradient_checkpointing, lean.matrix_parameters(model))
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
        r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=targets,
        modules_to_save=setup.modules_to_save or None,
        trainable_token_indices=setup.token_indices or None,
        ensure_weight_tying=setup.tied and bool(setup.modules_to_save or setup.lora_targets or setup.token_indices),
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise PlanError(f"adapter.target_modules: PEFT could not apply LoRA to this model ({exc}).",
                        "adapter.target_modules") from exc
    import torch
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
        raise PlanError("adapter.target_modules: the linear layers of this architecture could not be found "
                        "by name; list them explicitly (e.g. [c_attn, c_proj]).", "adapter.target_modules")
    return sorted(names)


def embedding_parameter_names(model, setup: EmbeddingSetup) -> set[str]:
    """Names of trainable parameters that belong to the embedding or head (own LR group)."""
    leaves = setup.leaf_names
    out = set()
    for name, p in model.named_parameters():
        if p.requires_grad and any(f".{leaf}." in f".{name}" for leaf in leaves):
            out.add(name)
    return out


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
    trainable = sum(n for n, t in seen.values() if t)
    return trainable, sum(n for n, _ in seen.values())
