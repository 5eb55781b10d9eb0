"""Loading a finished (or stopped) run back: base model + tokenizer + adapter, ready to run.

New tokens are rebuilt exactly as in training (the tokenizer saved with the adapter carries
them; their starting rows are the mean of the original rows, which is deterministic), so the
reloaded model reproduces the trained one's logits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .errors import BadInputError
from .plan import Plan, load_plan


def run_plan(run_dir: str | Path) -> Plan:
    run_dir = Path(run_dir)
    if not (run_dir / "plan.yaml").is_file():
        raise BadInputError(f"{run_dir} is not a Headtune run folder: it has no plan.yaml.")
    return load_plan(run_dir / "plan.yaml")


def load_trained(run_dir: str | Path, device: str = "cpu", quantization: str | None = None,
                 dtype: str | None = None):
    """(model, tokenizer, plan) for a run folder's ``adapter/``; ``quantization`` and ``dtype``
    override the plan's (export loads the base in 16-bit even when training ran in 4-bit)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from .adapters import init_new_rows
    from .models import load_model, load_tokenizer, resolve_source

    run_dir = Path(run_dir)
    plan = run_plan(run_dir)
    adapter_dir = run_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise BadInputError(f"{run_dir} has no saved adapter yet (adapter/ is missing); it is written when a "
                            "run finishes or is stopped.")
    spec = dataclasses.replace(plan.model, quantization=quantization or plan.model.quantization,
                               dtype=dtype or plan.model.dtype)
    source = resolve_source(plan.model.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    base = load_model(source, spec, device)
    # Rebuild the new tokens' starting rows exactly as training did (deterministic).
    original_len = len(load_tokenizer(source, plan.model.trust_remote_code))
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in plan.embeddings.new_tokens]
    init_new_rows(base, len(tokenizer), new_ids, original_len)
    if plan.embeddings.init_untrained == "mean":  # as training did, before the adapter
        from .health import init_untrained_mean
        init_untrained_mean(base)
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    return model, tokenizer, plan
