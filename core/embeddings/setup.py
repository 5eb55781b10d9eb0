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


@dataclass
class NewRows:
    """The rows new tokens occupy: their ids (typed special tokens, then the ordinary tokens and
    the intermediate pieces their merges need), the tokenizer's length before, and for each newly
    added id the base tokenizer's pieces it starts from."""

    ids: list[int]
    original_len: int
    pieces: dict[int, list[int]] = field(default_factory=dict)


def add_new_tokens(tokenizer, new_tokens: list[str], vocab_tokens: list[str] | tuple[str, ...] = ()) -> NewRows:
    """Add the plan's tokens to the tokenizer: ``new_tokens`` as special tokens (never split),
    ``vocab_tokens`` as ordinary tokens of the BPE vocabulary (``embeddings.vocab``).

    Strings already in the vocabulary keep their id and row; they are still trained. Deterministic:
    the same base tokenizer and lists give the same ids (a finished run is reloaded this way).
    """
    from . import vocab

    before = len(tokenizer)
    pieces: dict[int, list[int]] = {}
    if new_tokens:
        missing = [t for t in new_tokens if t not in tokenizer.get_vocab()]
        base = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in missing}
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
        pieces.update({tokenizer.convert_tokens_to_ids(t): p for t, p in base.items()})
    ids = [tokenizer.convert_tokens_to_ids(t) for t in new_tokens]
    ext = vocab.extend(tokenizer, list(vocab_tokens))
    pieces.update(ext.pieces)
    ids += [i for i in ext.ids if i not in ids] + [i for i in ext.words.values() if i not in ids and i not in ext.ids]
    return NewRows(ids=ids, original_len=before, pieces=pieces)


def init_new_rows(model, tokenizer_len: int, rows: NewRows, init: str = "pieces") -> None:
    """Make room for ``tokenizer_len`` tokens and start the rows of newly added ids (those at or
    past ``rows.original_len``), in the embedding and the head: ``pieces`` sets each to the mean of
    the rows of the pieces the base tokenizer splits the token into (where it has pieces), ``mean``
    to the mean of the original rows.

    Models often have more rows than their tokenizer has tokens (padding for speed, e.g. Qwen2), so a
    new token can land on an existing, never-trained row: that spare row is used and set here too.
    Reserved special tokens (Llama 3's ``<|reserved_special_token_N|>``) are not reused: they are
    special tokens, which text never produces and decoding may drop, not ordinary text.
    """
    import torch

    if tokenizer_len > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(tokenizer_len, mean_resizing=False)
    added = sorted(i for i in rows.ids if i >= rows.original_len)
    if not added:
        return
    with torch.no_grad():
        layers = (model.get_input_embeddings(), model.get_output_embeddings())
        for layer in {id(m): m for m in layers if m is not None}.values():
            w = layer.weight
            mean = w[: rows.original_len].float().mean(dim=0)
            for i in added:
                p = [j for j in rows.pieces.get(i, []) if j is not None and j < rows.original_len]
                w[i] = (w[p].float().mean(dim=0) if init == "pieces" and p else mean).to(w.dtype)


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
