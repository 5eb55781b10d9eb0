"""Merging a run's adapter into its base model, in 16 or 32 bits, ready to save.

The base is loaded unquantised (also when training ran in 4-bit) and merged in place; a tied
model stays tied. The merged model's ``generation_config`` learns the template's end-of-turn token.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import RunError
from ...model.templates import end_of_turn_ids, training_template
from .base import Progress

SHARD_SIZE = "2GB"


class ExportError(RunError):
    """The export failed after it started; nothing was left at the destination."""


def merge(run: Path, dtype: str, progress: Progress):
    """(merged plain transformers model, tokenizer, plan): base in ``dtype``, adapter merged."""
    import torch

    from ...model.sources import is_tied
    from ...training.trained import load_trained

    progress(0.05, f"Loading the base model in {dtype} and the adapter")
    model, tokenizer, plan = load_trained(run, quantization="none", dtype=dtype)
    tied_before = is_tied(model.get_base_model())
    progress(0.35, "Merging the adapter into the weights")
    if tied_before:
        _unwrap_tied_head(model)
    with torch.no_grad():
        merged = model.merge_and_unload()
    if tied_before and not is_tied(merged):
        raise ExportError(
            "Merging untied the embedding and the LM head of a tied model; the export was "
            "stopped. Please report this with the run's plan.yaml."
        )
    merged.config.use_cache = True
    tokenizer.chat_template = training_template(plan, tokenizer)
    gen = merged.generation_config
    eos = gen.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    for i in end_of_turn_ids(tokenizer, tokenizer.chat_template):
        if i not in eos:
            eos.append(i)
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    return merged, tokenizer, plan


def _unwrap_tied_head(peft_model) -> None:
    """On a tied model, PEFT mirrors the embedding's LoRA onto the head (``ensure_weight_tying``);
    both wrap the one shared matrix, so merging both would add the update twice. The embedding's
    merge writes it into the shared matrix once; the head's mirror is dropped unmerged."""
    from peft.tuners.lora import LoraLayer

    head = peft_model.get_output_embeddings()
    if not isinstance(head, LoraLayer):
        return
    if not getattr(peft_model.peft_config[peft_model.active_adapter], "ensure_weight_tying", False):
        raise ExportError(
            "This tied model has a LoRA on its LM head that is not the mirror of the embedding's, "
            "so no tied merged model can reproduce it. Export the adapter instead."
        )
    base = head.get_base_layer()
    for name, module in peft_model.named_modules():
        if module is head:
            parent_name, _, leaf = name.rpartition(".")
            setattr(peft_model.get_submodule(parent_name), leaf, base)
            return


def save_merged(merged, tokenizer, folder: Path) -> None:
    merged.save_pretrained(folder, max_shard_size=SHARD_SIZE)
    tokenizer.save_pretrained(folder)
