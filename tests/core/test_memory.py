"""The memory estimate: shape of the answer, monotonicity, tied models, CLI and bad input."""

from __future__ import annotations

import json

import pytest

from headtune.core.cli import main
from headtune.core.errors import PlanError
from headtune.core.memory import CATEGORIES, GiB, ModelShape, estimate, parse_size
from headtune.core.plan import Plan, with_overrides

LLAMA3_8B = {"vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
             "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False,
             "model_type": "llama", "max_position_embeddings": 8192}


def plan(*overrides: str) -> Plan:
    base = Plan()
    base.model.name_or_path, base.data.path = "meta-llama/Meta-Llama-3-8B", "d.jsonl"
    return with_overrides(base, list(overrides))


SHAPE = ModelShape.from_config(LLAMA3_8B)


def test_parameter_counts_match_llama3_8b():
    assert SHAPE.matrix_params == 525_336_576
    assert SHAPE.total_params == 8_030_261_248  # the published count of Llama-3-8B


def test_breakdown_sums_to_peak_and_json_keys():
    est = estimate(plan(), SHAPE, "cuda", capacity_bytes=24 * GiB)
    assert set(est.breakdown) == set(CATEGORIES)
    assert sum(est.breakdown.values()) == est.tensors_peak_bytes
    assert est.total_bytes == est.tensors_peak_bytes + est.overhead_bytes and est.overhead_bytes > 0
    assert est.phases[est.peak_phase] == est.tensors_peak_bytes == max(est.phases.values())
    d = est.to_dict()
    for key in ("tensors_peak_bytes", "overhead_bytes", "total_bytes", "breakdown", "phases", "capacity_bytes",
                "fit", "advice"):
        assert key in d
    assert estimate(plan(), SHAPE, "cpu").overhead_bytes == 0


@pytest.mark.parametrize("key,low,high", [
    ("data.max_seq_len", 512, 2048),
    ("training.batch_size", 1, 4),
    ("adapter.r", 8, 64),
])
def test_more_tokens_or_rank_never_lower(key, low, high):
    for extra in ([], ["model.quantization=4bit"], ["embeddings.train_embeddings=true", "embeddings.train_lm_head=true"],
                  ["training.gradient_checkpointing=false"]):
        a = estimate(plan(f"{key}={low}", *extra), SHAPE, "cuda").tensors_peak_bytes
        b = estimate(plan(f"{key}={high}", *extra), SHAPE, "cuda").tensors_peak_bytes
        assert b > a, (key, extra)


@pytest.mark.parametrize("mode", ["full", "tokens", "lora"])
@pytest.mark.parametrize("quant", ["none", "8bit", "4bit"])
def test_enabling_a_mode_never_lowers(mode, quant):
    rows = ["embeddings.token_ids=[1, 2, 3]"] if mode == "tokens" else []
    off = estimate(plan(f"model.quantization={quant}"), SHAPE, "cuda").tensors_peak_bytes
    emb = estimate(plan(f"model.quantization={quant}", "embeddings.train_embeddings=true",
                        f"embeddings.mode={mode}", *rows), SHAPE, "cuda").tensors_peak_bytes
    both = estimate(plan(f"model.quantization={quant}", "embeddings.train_embeddings=true",
                         "embeddings.train_lm_head=true", f"embeddings.mode={mode}", *rows), SHAPE, "cuda")
    assert off < emb <= both.tensors_peak_bytes


def test_full_embeddings_and_head_cost_what_the_brief_says():
    off = estimate(plan(), SHAPE, "cuda")
    on = estimate(plan("embeddings.train_embeddings=true", "embeddings.train_lm_head=true"), SHAPE, "cuda")
    assert on.trainable_params - off.trainable_params == 2 * 525_336_576
    # At the optimizer step: copy + gradient + two AdamW states, bf16: 8 bytes a parameter (7.83 GiB).
    added = on.phases["optimizer_step"] - off.phases["optimizer_step"]
    assert 7.8 * GiB < added < 10 * GiB  # (plus the step's short-lived temporaries)
    assert on.tensors_peak_bytes > off.tensors_peak_bytes + 5.8 * GiB  # no gradients yet at the loss peak


def test_tied_model_counts_one_matrix():
    tied = ModelShape.from_config({**LLAMA3_8B, "tie_word_embeddings": True})
    both = ["embeddings.train_embeddings=true", "embeddings.train_lm_head=true"]
    t_both = estimate(plan(*both), tied, "cuda")
    t_one = estimate(plan("embeddings.train_lm_head=true"), tied, "cuda")
    assert t_both.tensors_peak_bytes == t_one.tensors_peak_bytes
    assert t_both.trainable_params == estimate(plan(), tied, "cuda").trainable_params + 525_336_576
    untied = estimate(plan(*both), SHAPE, "cuda")
    assert untied.tensors_peak_bytes > t_both.tensors_peak_bytes
    assert tied.total_params == SHAPE.total_params - 525_336_576


def test_quantisation_lowers_frozen_weights():
    w = {q: estimate(plan(f"model.quantization={q}"), SHAPE, "cuda").breakdown["weights_frozen"]
         for q in ("none", "8bit", "4bit")}
    assert w["none"] > w["8bit"] > w["4bit"]
    dq = estimate(plan("model.quantization=4bit", "model.double_quant=false"), SHAPE, "cuda")
    assert dq.breakdown["weights_frozen"] > w["4bit"]


def test_paged_states_reported_outside_the_peak():
    both = ["embeddings.train_embeddings=true", "embeddings.train_lm_head=true"]
    paged = estimate(plan(*both, "training.optimizer=paged_adamw_8bit"), SHAPE, "cuda")
    eight = estimate(plan(*both, "training.optimizer=adamw_8bit"), SHAPE, "cuda")
    assert paged.paged_optimizer_states_bytes > 0 and paged.breakdown["optimizer_states"] == 0
    assert paged.tensors_peak_bytes < eight.tensors_peak_bytes


def test_fit_and_advice_apply_as_is():
    p = plan("data.max_seq_len=2048", "training.batch_size=4", "training.gradient_checkpointing=false")
    est = estimate(p, SHAPE, "cuda", capacity_bytes=16 * GiB)
    assert est.fit == "no" and est.advice
    best = est.advice[0]
    assert best.total_bytes <= 16 * GiB and est.advice[-1].total_bytes >= best.total_bytes
    applied = with_overrides(p, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in best.set.items()])
    assert estimate(applied, SHAPE, "cuda").total_bytes == best.total_bytes
    assert estimate(plan(), SHAPE, "cuda", capacity_bytes=80 * GiB).fit == "fits"


def test_parse_size():
    assert parse_size("12GiB") == 12 * GiB and parse_size("8 GB") == 8 * GiB and parse_size("24000MiB") == 24000 * 2**20
    for bad in ("lots", "-3GiB", "0"):
        with pytest.raises(PlanError):
            parse_size(bad)


def test_cli_json_and_table(tmp_path, tiny_untied, capsys):
    import yaml
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_untied)}, "data": {"path": "d.jsonl"}}))
    assert main(["estimate", str(plan_file), "--device", "cuda", "--gpu-memory", "12GiB", "--json",
                 "--set", "embeddings.train_embeddings=true"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["capacity_bytes"] == 12 * GiB and d["fit"] == "fits" and sum(d["breakdown"].values()) == d["tensors_peak_bytes"]
    assert d["common_gpus"] == {"8GiB": "fits", "12GiB": "fits", "16GiB": "fits", "24GiB": "fits"}
    assert d["cpu_training"]["fit"] == "fits" and d["cpu_training"]["ram_bytes"] > GiB
    assert main(["estimate", str(plan_file), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "logits_loss" in out and "GiB" in out and "Common GPUs: 8 GiB fits" in out
    assert main(["estimate", str(plan_file), "--set", "training.batch_size=0"]) == 2
    assert "training.batch_size: must be at least 1" in capsys.readouterr().err
    assert main(["estimate", str(plan_file), "--gpu-memory", "huge"]) == 2


@pytest.mark.parametrize("extra", [{"train_lm_head": True}, {"new_tokens": ["<a>", "<b>"]},
                                   {"train_lm_head": False, "new_tokens": ["<a>"]}])
@pytest.mark.parametrize("mode", ["full", "tokens", "lora"])
@pytest.mark.parametrize("which", ["tied", "untied"])
def test_trainable_parameters_match_what_peft_builds(tmp_path, tiny_tied, tiny_untied, mode, which, extra):
    """The estimate's count of trainable parameters equals the real PEFT model's, in every mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from headtune.core.adapters import build_peft_model, count_parameters, resolve_embeddings
    from headtune.core.memory import read_model_config
    from headtune.core.plan import plan_from_dict

    from transformers import AutoTokenizer

    from headtune.core.adapters import add_new_tokens, init_new_rows
    folder = tiny_tied if which == "tied" else tiny_untied
    rows = {"token_ids": [5, 6, 7]} if mode == "tokens" else {}
    p = plan_from_dict({"model": {"name_or_path": str(folder), "dtype": "float32"}, "data": {"path": "d.jsonl"},
                        "embeddings": {"train_embeddings": True, "mode": mode, **rows, **extra}})
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    new_ids, before = add_new_tokens(tok, p.embeddings.new_tokens)
    init_new_rows(model, len(tok), new_ids, before)
    peft_model = build_peft_model(model, p, resolve_embeddings(model, p.embeddings, new_ids))
    real = count_parameters(peft_model)[0]
    est = estimate(p, ModelShape.from_config(read_model_config(str(folder))), "cpu")
    assert est.trainable_params == real
