"""Checks of a whole plan: each field within the range its schema states, then the checks across
fields, each raising a ``PlanError`` that names the key and the fix."""

from __future__ import annotations

from .. import embeddings
from ..errors import PlanError, ShardingError
from .schema import SCHEMA_VERSION, TARGET_PRESETS, Plan, all_keys, range_for


def _fmt(x: float | None) -> str:
    return f"{x:g}"


def range_problem(value: float, rng: dict) -> str | None:
    """What is wrong with ``value`` for the range ``rng`` (see ``schema.range_for``), or None."""
    ge, gt, le, lt = rng.get("ge"), rng.get("gt"), rng.get("le"), rng.get("lt")
    unit = f" {rng['unit']}" if rng.get("unit") else ""
    ok = (
        (ge is None or value >= ge)
        and (gt is None or value > gt)
        and (le is None or value <= le)
        and (lt is None or value < lt)
    )
    if ok:
        return None
    if ge is not None and le is not None:
        return f"must be between {_fmt(ge)} and {_fmt(le)}{unit} (got {value})."
    if ge is not None and lt is not None:
        return f"must be in [{_fmt(ge)}, {_fmt(lt)}){unit} (got {value})."
    if gt == 0:
        return f"must be positive (got {value})."
    if ge == 0:
        return f"must not be negative (got {value})."
    return f"must be at least {_fmt(ge if ge is not None else gt)}{unit} (got {value})."


def _check_ranges(plan: Plan) -> None:
    for key in all_keys():
        rng = range_for(key)
        value = plan.get(key)
        if rng and value is not None:
            problem = range_problem(value, rng)
            if problem:
                raise PlanError(f"{key}: {problem}", key)


def validate(plan: Plan) -> None:
    """Checks across fields; raises ``PlanError`` naming the key and what is allowed."""
    m, d, a, e, t = plan.model, plan.data, plan.adapter, plan.embeddings, plan.training

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise PlanError(f"{key}: {msg}", key)

    need(plan.schema_version == SCHEMA_VERSION, "schema_version", f"must be {SCHEMA_VERSION}.")
    need(
        bool(m.name_or_path.strip()),
        "model.name_or_path",
        "no model given. Set a hub id, a local model folder or a .gguf file.",
    )
    need(bool(d.path.strip()), "data.path", "no dataset given. Set a .jsonl/.json/.csv/.parquet/.txt file or a hub id.")
    need(bool(plan.output.dir.strip()), "output.dir", "no run folder given. Set the folder the run is written to.")
    _check_ranges(plan)
    if isinstance(a.target_modules, str):
        need(
            a.target_modules in TARGET_PRESETS,
            "adapter.target_modules",
            f"{a.target_modules!r} is not a preset; use one of {', '.join(TARGET_PRESETS)} or a list of module names.",
        )
    else:
        need(bool(a.target_modules), "adapter.target_modules", "the list of module names is empty.")
    need(
        t.max_steps > 0 or t.epochs > 0,
        "training.epochs",
        f"must be positive when training.max_steps is 0 (got {t.epochs}).",
    )
    need(all(i >= 0 for i in e.token_ids), "embeddings.token_ids", "token ids cannot be negative.")
    need(
        len(set(e.new_tokens)) == len(e.new_tokens) and all(s.strip() for s in e.new_tokens),
        "embeddings.new_tokens",
        "token strings must be non-empty and unique.",
    )
    need(
        len(set(e.vocab_tokens)) == len(e.vocab_tokens) and all(e.vocab_tokens),
        "embeddings.vocab_tokens",
        "tokens must be non-empty and unique.",
    )
    both = sorted(set(e.vocab_tokens) & set(e.new_tokens))
    need(not both, "embeddings.vocab_tokens", f"{both[:3]} are listed in embeddings.new_tokens too; keep one.")
    preference = t.method in ("dpo", "orpo")
    need(
        not (preference and d.packing),
        "data.packing",
        f"training.method {t.method} compares whole replies, which packing would join; turn packing off.",
    )
    need(
        not (preference and d.format not in ("auto", "preference")),
        "data.format",
        f"training.method {t.method} reads preference pairs; set data.format to auto or preference.",
    )
    need(
        not (t.method == "sft" and d.format == "preference"),
        "training.method",
        "data.format preference holds chosen/rejected pairs; train them with training.method dpo or orpo.",
    )
    embeddings.check(e)
    _check_sharding(plan)
    _check_bitsandbytes(plan)


def _check_sharding(plan: Plan) -> None:
    """What fully sharded training (training.sharding: fsdp) cannot run, refused before anything loads."""
    m, t = plan.model, plan.training
    if t.sharding != "fsdp":
        return
    if t.method != "sft":
        raise ShardingError(
            f"training.sharding: fsdp does not run training.method {t.method} in this version (preference "
            "tuning's reference pass and pair log-probabilities are not built for sharded models). Use "
            "training.sharding: none (data parallel runs it).",
        )
    if m.quantization == "8bit":
        raise ShardingError(
            "training.sharding: fsdp cannot shard an 8-bit (LLM.int8) model: bitsandbytes keeps each "
            "layer's 8-bit weights with their scales on the weight itself, and a gathered shard loses "
            "them (the layer then fails). Use model.quantization: 4bit (QLoRA, which FSDP shards) or "
            "none, or training.sharding: none.",
            "model.quantization",
        )
    if t.optimizer != "adamw":
        raise ShardingError(
            f"training.sharding: fsdp cannot run training.optimizer {t.optimizer}: bitsandbytes' 8-bit "
            "optimizer steps whole tensors, and under FSDP each process holds a share of each parameter. "
            "Set training.optimizer: adamw (its 32-bit states are sharded too), or training.sharding: none.",
            "training.optimizer",
        )


def _check_bitsandbytes(plan: Plan) -> None:
    """Options that need bitsandbytes, refused with the fix when it does not load."""
    m, t = plan.model, plan.training
    if m.quantization != "none" or t.optimizer != "adamw":
        key = "model.quantization" if m.quantization != "none" else "training.optimizer"
        value = m.quantization if m.quantization != "none" else t.optimizer
        problem = bitsandbytes_problem()
        if problem:
            raise PlanError(
                f"{key}: {value} needs bitsandbytes, which {problem}. Install it "
                f"(pip install bitsandbytes) or set {key} to "
                f"{'none' if key == 'model.quantization' else 'adamw'}.",
                key,
            )
    mem, e = plan.memory, plan.embeddings
    full_matrices = (e.train_embeddings or e.train_lm_head) and e.mode == "full"
    if mem.matrix_states in ("8bit", "paged_8bit") and full_matrices and t.sharding != "fsdp":
        problem = bitsandbytes_problem()
        if problem:
            raise PlanError(
                f"memory.matrix_states: {mem.matrix_states} needs bitsandbytes, which {problem}. Install "
                "it (pip install bitsandbytes) or set memory.matrix_states to 32bit.",
                "memory.matrix_states",
            )


_BNB_PROBLEM: list[str | None] = []


def bitsandbytes_problem() -> str | None:
    """None when bitsandbytes imports; otherwise a short reason (cached)."""
    if not _BNB_PROBLEM:
        try:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                _BNB_PROBLEM.append("is not installed")
            else:
                import bitsandbytes  # noqa: F401

                _BNB_PROBLEM.append(None)
        except Exception as exc:  # a broken native library shows up here
            _BNB_PROBLEM.append(f"failed to load ({exc.__class__.__name__}: {exc})")
    return _BNB_PROBLEM[0]
