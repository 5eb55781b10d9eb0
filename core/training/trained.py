"""Loading a finished (or stopped) run back: base model + tokenizer + adapter, ready to run.

New tokens are rebuilt exactly as in training (the tokenizer saved with the adapter carries
them; their starting rows are the mean of the original rows, which is deterministic), so the
reloaded model reproduces the trained one's logits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..model.weights import check_folder
from ..plan import Plan, load_plan
from ..runfolder import RunFolder


def run_plan(run_dir: str | Path) -> Plan:
    """The plan a run folder's run started with."""
    return load_plan(RunFolder(run_dir).require_run().plan_file)


def load_trained(run_dir: str | Path, device: str = "cpu", quantization: Any = None, dtype: Any = None):
    """(model, tokenizer, plan) for a run folder's ``adapter/``; ``quantization`` and ``dtype``
    override the plan's (export loads the base in 16-bit even when training ran in 4-bit)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from ..embeddings.setup import init_new_rows
    from ..model.sources import load_model, load_tokenizer, resolve_source

    folder = RunFolder(run_dir).require_adapter()
    plan = load_plan(folder.plan_file)
    adapter_dir = folder.adapter_dir
    check_folder(adapter_dir, "adapter file")  # a truncated adapter is refused, not merged half-read
    spec = dataclasses.replace(
        plan.model, quantization=quantization or plan.model.quantization, dtype=dtype or plan.model.dtype
    )
    source = resolve_source(plan.model.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    base = load_model(source, spec, device)
    # Rebuild the new tokens' starting rows exactly as training did (deterministic).
    original_len = len(load_tokenizer(source, plan.model.trust_remote_code))
    new_ids: list[int] = [tokenizer.convert_tokens_to_ids(t) for t in plan.embeddings.new_tokens]  # type: ignore[misc]
    init_new_rows(base, len(tokenizer), new_ids, original_len)
    if plan.embeddings.init_untrained == "mean":  # as training did, before the adapter
        from ..embeddings.untrained import init_untrained_mean

        init_untrained_mean(base)
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    return model, tokenizer, plan
