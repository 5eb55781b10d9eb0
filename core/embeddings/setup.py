"""What is trained of the embedding and the head, resolved against a concrete model for PEFT.

``decide`` (in ``embeddings``) says which mode trains which matrix; here that answer meets a model:
module names, tied weights, token ids, and the rows of newly added tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import PlanError
from ..model.sources import embedding_module_names, is_tied
from . import decide


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


def resolve_embeddings(model, spec, new_token_ids: list[int]) -> EmbeddingSetup:
    """How PEFT trains what ``decide`` assigns, for this model and ``plan.embeddings``."""
    emb, head = embedding_module_names(model)
    tied = is_tied(model)
    setup = EmbeddingSetup(tied=tied, embed_name=emb, head_name=head, new_token_ids=list(new_token_ids))
    vocab = model.get_input_embeddings().weight.shape[0]
    bad = [i for i in spec.token_ids if i >= vocab]
    if bad:
        raise PlanError(
            f"embeddings.token_ids: {bad[:5]} are outside the vocabulary (size {vocab}).", "embeddings.token_ids"
        )
    leaves = {"embedding": emb.rsplit(".", 1)[-1], "head": head.rsplit(".", 1)[-1] if head else ""}
    rows = sorted(set(spec.token_ids) | set(new_token_ids))
    # A tied matrix is trained from the embedding side; ensure_weight_tying mirrors it on the head.
    for a in decide(spec, tied, has_head=head is not None):
        a.mode.configure(setup, leaves[a.role], sorted(new_token_ids) if a.new_rows_only else rows)
    return setup


def embedding_parameter_names(model, setup: EmbeddingSetup) -> set[str]:
    """Names of trainable parameters that belong to the embedding or head (own LR group)."""
    leaves = setup.leaf_names
    out = set()
    for name, p in model.named_parameters():
        if p.requires_grad and any(f".{leaf}." in f".{name}" for leaf in leaves):
            out.add(name)
    return out
