"""Loading a finished (or stopped) run back: base model + tokenizer + adapter, ready to run.

New tokens are rebuilt exactly as in training (the tokenizer saved with the adapter carries
them; their starting rows are the mean of their pieces' rows or of all rows, which is
deterministic), so the reloaded model reproduces the trained one's logits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import RunError
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

    from ..embeddings.setup import add_new_tokens, init_new_rows
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
    # Rebuild the new tokens' starting rows exactly as training did (deterministic): the same
    # tokens added to the base tokenizer give the same ids and pieces as the saved tokenizer's.
    rebuilt = load_tokenizer(source, plan.model.trust_remote_code)
    rows = add_new_tokens(rebuilt, plan.embeddings.new_tokens, plan.embeddings.vocab_tokens)
    if len(rebuilt) != len(tokenizer):
        raise RunError(
            f"The tokenizer saved in {adapter_dir} has {len(tokenizer)} tokens, but the plan's new tokens "
            f"on the base tokenizer make {len(rebuilt)}; the run folder does not match its base model."
        )
    init_new_rows(base, len(tokenizer), rows, _new_token_init(folder.plan_file, plan))
    if plan.embeddings.init_untrained == "mean":  # as training did, before the adapter
        from ..embeddings.untrained import init_untrained_mean

        init_untrained_mean(base)
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    return model, tokenizer, plan


def _new_token_init(plan_file: Path, plan: Plan) -> str:
    """The plan's ``embeddings.new_token_init``; runs saved before the key existed started new
    rows at the mean of all rows."""
    import yaml

    saved = yaml.safe_load(plan_file.read_text(encoding="utf-8")) or {}
    if "new_token_init" not in (saved.get("embeddings") or {}):
        return "mean"
    return plan.embeddings.new_token_init
