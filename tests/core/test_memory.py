"""The memory estimate: shape of the answer, monotonicity, tied models, CLI and bad input."""

from __future__ import annotations

import json

import pytest

from headtune.core.cli import main
from headtune.core.errors import PlanError
from headtune.core.estimate import CATEGORIES, DataTokens, GiB, ModelShape, estimate, parse_size
from headtune.core.plan import Plan, with_overrides
from headtune.core.testing import LLAMA3_8B


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
    for key in (
        "tensors_peak_bytes",
        "overhead_bytes",
        "total_bytes",
        "breakdown",
        "phases",
        "capacity_bytes",
        "fit",
        "advice",
    ):
        assert key in d
    assert estimate(plan(), SHAPE, "cpu").overhead_bytes == 0


@pytest.mark.parametrize(
    "key,low,high", [("data.max_seq_len", 512, 2048), ("training.batch_size", 1, 4), ("adapter.r", 8, 64)]
)
def test_more_tokens_or_rank_never_lower(key, low, high):
    for extra in (
        [],
        ["model.quantization=4bit"],
        ["embeddings.train_embeddings=true", "embeddings.train_lm_head=true"],
        ["training.gradient_checkpointing=false"],
    ):
        a = estimate(plan(f"{key}={low}", *extra), SHAPE, "cuda").tensors_peak_bytes
        b = estimate(plan(f"{key}={high}", *extra), SHAPE, "cuda").tensors_peak_bytes
        assert b > a, (key, extra)


@pytest.mark.parametrize("mode", ["full", "tokens", "lora"])
@pytest.mark.parametrize("quant", ["none", "8bit", "4bit"])
def test_enabling_a_mode_never_lowers(mode, quant):
    rows = ["embeddings.token_ids=[1, 2, 3]"] if mode == "tokens" else []
    off = estimate(plan(f"model.quantization={quant}"), SHAPE, "cuda").tensors_peak_bytes
    emb = estimate(
        plan(f"model.quantization={quant}", "embeddings.train_embeddings=true", f"embeddings.mode={mode}", *rows),
        SHAPE,
        "cuda",
    ).tensors_peak_bytes
    both = estimate(
        plan(
            f"model.quantization={quant}",
            "embeddings.train_embeddings=true",
            "embeddings.train_lm_head=true",
            f"embeddings.mode={mode}",
            *rows,
        ),
        SHAPE,
        "cuda",
    )
    assert off < emb <= both.tensors_peak_bytes


STOCK = ["memory.loss=standard", "memory.frozen_copy=true", "memory.matrix_dtype=peft", "memory.matrix_states=trainer"]


def test_full_embeddings_and_head_cost_a_copy_gradients_and_states_each():
    off = estimate(plan(*STOCK), SHAPE, "cuda")
    on = estimate(plan("embeddings.train_embeddings=true", "embeddings.train_lm_head=true", *STOCK), SHAPE, "cuda")
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
    w = {
        q: estimate(plan(f"model.quantization={q}"), SHAPE, "cuda").breakdown["weights_frozen"]
        for q in ("none", "8bit", "4bit")
    }
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
    assert (
        main(
            [
                "estimate",
                str(plan_file),
                "--device",
                "cuda",
                "--gpu-memory",
                "12GiB",
                "--json",
                "--set",
                "embeddings.train_embeddings=true",
            ]
        )
        == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert (
        d["capacity_bytes"] == 12 * GiB
        and d["fit"] == "fits"
        and sum(d["breakdown"].values()) == d["tensors_peak_bytes"]
    )
    assert d["common_gpus"] == {"8GiB": "fits", "12GiB": "fits", "16GiB": "fits", "24GiB": "fits"}
    assert d["cpu_training"]["fit"] == "fits" and d["cpu_training"]["ram_bytes"] > GiB
    assert main(["estimate", str(plan_file), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "logits_loss" in out and "GiB" in out and "Common GPUs: 8 GiB fits" in out
    assert main(["estimate", str(plan_file), "--set", "training.batch_size=0"]) == 2
    assert "training.batch_size: must be at least 1" in capsys.readouterr().err
    assert main(["estimate", str(plan_file), "--gpu-memory", "huge"]) == 2


def test_llama3_8b_both_matrices_4bit_fit_12gib_with_the_defaults():
    """Ticking the two boxes on Llama-3-8B, 4-bit, seq 1024, batch 1 and nothing else fits 12 GiB:
    the 8-bit states of the two matrices are what brings it under, and the estimate says so."""
    both = ["embeddings.train_embeddings=true", "embeddings.train_lm_head=true"]
    p = plan(*both, "model.quantization=4bit", "data.max_seq_len=1024", "training.batch_size=1")
    assert p.training.gradient_checkpointing and p.training.optimizer == "adamw"
    est = estimate(p, SHAPE, "cuda", capacity_bytes=12 * GiB)
    assert est.total_bytes <= 12 * GiB and est.fit in ("fits", "tight")
    saved = {x["key"]: x["bytes"] for x in est.saved_by_defaults}
    assert {"memory.frozen_copy", "memory.matrix_dtype", "memory.matrix_states"} <= set(saved)
    assert all(b > 0 for b in saved.values())
    # Without the 8-bit states default it would not fit; the saving reported is that difference.
    without = estimate(with_overrides(p, ["memory.matrix_states=auto"]), SHAPE, "cuda")
    assert without.total_bytes > 12 * GiB
    assert saved["memory.matrix_states"] == without.total_bytes - est.total_bytes
    # A default the user changed is not listed; nothing is listed when no default saves anything.
    assert "memory.loss" not in {
        x["key"] for x in estimate(plan(*both, "memory.loss=standard"), SHAPE).saved_by_defaults
    }
    lora_only = estimate(plan("memory.frozen_copy=true"), SHAPE).saved_by_defaults
    assert {x["key"] for x in lora_only} <= {"memory.loss"}


def test_data_lengths_give_the_longest_batch_and_keep_the_worst_case():
    p = plan("data.max_seq_len=2048", "training.batch_size=2", "training.gradient_checkpointing=false")
    worst = estimate(p, SHAPE, "cuda")
    lengths = [300, 120, 500, 80, 450]
    est = estimate(p, SHAPE, "cuda", data=DataTokens.of(lengths))
    assert est.data.seq_len == 500 and est.data.worst_case_bytes == worst.total_bytes
    # Every token labelled: the plan's estimate with every batch as long as the longest example.
    assert est.data.loss_tokens == 2 * 499
    assert est.total_bytes == estimate(with_overrides(p, ["data.max_seq_len=500"]), SHAPE, "cuda").total_bytes
    assert est.total_bytes < worst.total_bytes and "data" in est.to_dict() and "data" not in worst.to_dict()
    # Fewer labelled tokens (a masked prompt) shrink the loss's share: the two most labelled rows.
    lean = plan("data.max_seq_len=2048", "training.batch_size=2", "memory.loss_chunk_tokens=1024")
    masked = estimate(lean, SHAPE, "cuda", data=DataTokens.of(lengths, [9, 5, 9, 2, 3]))
    assert masked.data.loss_tokens == 18
    assert masked.total_bytes < estimate(lean, SHAPE, "cuda", data=DataTokens.of(lengths)).total_bytes
    # Examples longer than max_seq_len are cut to it; packed data fills every sequence.
    assert estimate(p, SHAPE, "cuda", data=DataTokens.of([5000, 10])).total_bytes == worst.total_bytes
    packed = estimate(with_overrides(p, ["data.packing=true"]), SHAPE, "cuda", data=DataTokens.of(lengths, [9] * 5))
    assert packed.data.packed and packed.total_bytes == packed.data.worst_case_bytes


def test_a_rare_long_example_is_named_with_the_max_seq_len_that_avoids_it():
    p = plan("data.max_seq_len=8192", "training.batch_size=4", "training.gradient_checkpointing=false")
    lengths = [200 + (i * 37) % 300 for i in range(300)] + [7000, 6000]
    est = estimate(p, SHAPE, "cuda", capacity_bytes=48 * GiB, data=DataTokens.of(lengths))
    d = est.data
    # At most 1% of 302 examples (3) are cut: the two long ones and the longest ordinary one.
    assert (d.seq_len, d.cut_at, d.cut_examples) == (7000, sorted(lengths)[-4], 3)
    assert d.cut_bytes == estimate(with_overrides(p, [f"data.max_seq_len={d.cut_at}"]), SHAPE, "cuda").total_bytes
    assert est.fit == "no" and d.cut_bytes <= 48 * GiB
    assert {"data.max_seq_len": d.cut_at} in [a.set for a in est.advice]
    # Evenly long data has no such examples.
    assert estimate(p, SHAPE, "cuda", data=DataTokens.of([500] * 50)).data.cut_at is None


def test_cli_estimates_for_the_data_and_the_worst_case(tmp_path, tiny_untied, alpaca_file, capsys):
    import yaml

    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        yaml.safe_dump({"model": {"name_or_path": str(tiny_untied)}, "data": {"path": str(alpaca_file)}})
    )
    assert main(["estimate", str(plan_file), "--device", "cpu", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["data"]["examples"] > 0 and d["data"]["seq_len"] < d["data"]["max_seq_len"]
    assert d["total_bytes"] < d["data"]["worst_case_bytes"]
    assert main(["estimate", str(plan_file), "--device", "cpu"]) == 0
    assert "For this data (" in capsys.readouterr().out
    assert main(["estimate", str(plan_file), "--device", "cpu", "--worst-case", "--json"]) == 0
    assert "data" not in json.loads(capsys.readouterr().out)
    plan_file.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_untied)}, "data": {"path": "gone.jsonl"}}))
    assert main(["estimate", str(plan_file), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "(worst case): the data file " in out and "gone.jsonl is not here" in out


@pytest.mark.parametrize(
    "extra", [{"train_lm_head": True}, {"new_tokens": ["<a>", "<b>"]}, {"train_lm_head": False, "new_tokens": ["<a>"]}]
)
@pytest.mark.parametrize("mode", ["full", "tokens", "lora"])
@pytest.mark.parametrize("which", ["tied", "untied"])
def test_trainable_parameters_match_what_peft_builds(tmp_path, tiny_tied, tiny_untied, mode, which, extra):
    """The estimate's count of trainable parameters equals the real PEFT model's, in every mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from headtune.core.embeddings.setup import add_new_tokens, init_new_rows, resolve_embeddings
    from headtune.core.estimate import read_model_config
    from headtune.core.plan import plan_from_dict
    from headtune.core.training.adapters import build_peft_model, count_parameters

    folder = tiny_tied if which == "tied" else tiny_untied
    rows = {"token_ids": [5, 6, 7]} if mode == "tokens" else {}
    p = plan_from_dict(
        {
            "model": {"name_or_path": str(folder), "dtype": "float32"},
            "data": {"path": "d.jsonl"},
            "embeddings": {"train_embeddings": True, "mode": mode, **rows, **extra},
        }
    )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    rows = add_new_tokens(tok, p.embeddings.new_tokens)
    init_new_rows(model, len(tok), rows)
    peft_model = build_peft_model(model, p, resolve_embeddings(model, p.embeddings, rows.ids))
    real = count_parameters(peft_model)[0]
    est = estimate(p, ModelShape.from_config(read_model_config(str(folder))), "cpu")
    assert est.trainable_params == real


# -- lean memory (core.training.lean): each option moves the estimate by what it removes -------------------

BOTH = ["embeddings.train_embeddings=true", "embeddings.train_lm_head=true", "embeddings.mode=full"]
QLORA_1024 = ["model.quantization=4bit", "data.max_seq_len=1024", "training.batch_size=1"]
M = SHAPE.matrix_params


def test_each_lean_option_removes_what_it_should():
    stock = estimate(plan(*QLORA_1024, *BOTH, *STOCK, "training.optimizer=adamw_8bit"), SHAPE, "cuda")

    def with_(*o):
        return estimate(plan(*QLORA_1024, *BOTH, *STOCK, "training.optimizer=adamw_8bit", *o), SHAPE, "cuda")

    # No frozen duplicates: two fp32 originals (the k-bit upcast) are gone.
    assert (
        stock.breakdown["weights_frozen"] - with_("memory.frozen_copy=false").breakdown["weights_frozen"] == 2 * M * 4
    )
    # No upcast: frozen originals and trained copies in bf16.
    no_up = with_("memory.matrix_dtype=model")
    assert stock.breakdown["weights_frozen"] - no_up.breakdown["weights_frozen"] == 2 * M * 2
    assert stock.breakdown["weights_trainable"] - no_up.breakdown["weights_trainable"] == 2 * M * 2
    # fp32 master: trained copies stay fp32, frozen originals do not.
    master = with_("memory.matrix_dtype=float32")
    assert master.breakdown["weights_frozen"] == no_up.breakdown["weights_frozen"]
    assert master.breakdown["weights_trainable"] == stock.breakdown["weights_trainable"]
    # 8-bit states for the embedding too (the Trainer keeps 32-bit for nn.Embedding).
    eight = with_("memory.matrix_states=8bit")
    assert stock.breakdown["optimizer_states"] - eight.breakdown["optimizer_states"] == pytest.approx(
        2 * M * 4 - (2 * M + 2 * M / 256 * 4), abs=8
    )
    # Chunked loss: the logits phase shrinks from seq x vocab to chunk x vocab.
    chunked = with_("memory.loss=chunked")
    loss_phases = ("forward_loss", "loss_backward", "head_backward")
    # stock: seq x vocab x (fp32 + bf16) beside the head's gradient; chunked: 256 tokens' worth.
    saved = max(stock.phases[k] for k in loss_phases) - max(chunked.phases[k] for k in loss_phases)
    assert saved >= 1024 * SHAPE.vocab * 6 - 256 * SHAPE.vocab * 8 - 2 * 1024 * 4096 * 2
    # Fused step (needs no clipping): no matrix gradient at the optimizer step.
    fused = with_("memory.fused_step=true", "training.max_grad_norm=0")
    ref = with_("training.max_grad_norm=0")
    assert ref.phases["optimizer_step"] - fused.phases["optimizer_step"] == 2 * M * 4


def test_fused_step_falls_back_where_it_would_not_be_exact():
    from headtune.core.plan.memory_options import resolve

    p = plan(*BOTH, "memory.fused_step=true")  # max_grad_norm 1.0 by default
    eff = resolve(p, "cuda")
    assert not eff.fused_step and any("max_grad_norm" in n for n in eff.notes)
    with_fused = estimate(p, SHAPE, "cuda")
    assert with_fused.notes == list(eff.notes) and "notes" in with_fused.to_dict()
    assert with_fused.tensors_peak_bytes == estimate(plan(*BOTH), SHAPE, "cuda").tensors_peak_bytes
    assert not resolve(
        plan(*BOTH, "memory.fused_step=true", "training.max_grad_norm=0", "training.grad_accum=4"), "cuda"
    ).fused_step
    assert resolve(plan(*BOTH, "memory.fused_step=true", "training.max_grad_norm=0"), "cuda").fused_step


def test_fused_step_off_under_a_distributed_launcher(monkeypatch):
    from headtune.core.plan.memory_options import resolve

    monkeypatch.setenv("WORLD_SIZE", "2")
    eff = resolve(plan(*BOTH, "memory.fused_step=true", "training.max_grad_norm=0"), "cuda")
    assert not eff.fused_step and any("distributed" in n for n in eff.notes)


def test_fallbacks_by_device():
    from headtune.core.plan.memory_options import resolve

    assert resolve(plan("memory.loss=fused"), "cpu").loss == "chunked"
    assert resolve(plan("memory.matrix_states=paged_8bit"), "cpu").matrix_states == "8bit"
    assert resolve(plan("memory.matrix_states=paged_8bit"), "cuda").matrix_states == "paged_8bit"
    assert resolve(plan("training.optimizer=adamw_8bit"), "cpu").matrix_states == "8bit"  # auto follows it
    # Paged states are reported apart, like a paged optimizer's.
    paged = estimate(plan(*BOTH, "memory.matrix_states=paged_8bit"), SHAPE, "cuda")
    assert paged.paged_optimizer_states_bytes > 0 and paged.breakdown["optimizer_states"] == 0


def test_llama3_8b_full_embeddings_and_head_fit_12gib_lean_not_stock():
    """A 12 GiB card's plan, by the estimate: QLoRA, full embeddings + head, seq 1024, batch 1, GC."""
    stock = estimate(plan(*QLORA_1024, *BOTH, *STOCK, "training.optimizer=paged_adamw_8bit"), SHAPE, "cuda")
    lean = estimate(
        plan(
            *QLORA_1024,
            *BOTH,
            "training.optimizer=adamw_8bit",
            "memory.matrix_states=8bit",
            "memory.fused_step=true",
            "training.max_grad_norm=0",
        ),
        SHAPE,
        "cuda",
    )
    # Stock: even with its paged states set apart it does not fit 16 GiB; lean fits 12 GiB with
    # every state on the GPU (no paging counted on).
    assert stock.total_bytes + stock.paged_optimizer_states_bytes > 20 * GiB
    assert stock.total_bytes > 12 * GiB
    assert lean.total_bytes < 12 * GiB and lean.paged_optimizer_states_bytes == 0


def test_advisor_proposes_lean_options():
    p = plan(*QLORA_1024, *BOTH, *STOCK, "training.optimizer=adamw_8bit")
    est = estimate(p, SHAPE, "cuda", capacity_bytes=12 * GiB)
    assert est.fit == "no"
    keys = {k for adv in est.advice for k in adv.set}
    assert {"memory.loss", "memory.frozen_copy", "memory.matrix_dtype", "memory.matrix_states"} <= keys
    best = est.advice[0]
    assert best.total_bytes <= 12 * GiB
    applied = with_overrides(p, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in best.set.items()])
    assert estimate(applied, SHAPE, "cuda").total_bytes == best.total_bytes


def test_loss_tokens_follow_where_the_labels_start_when_rows_are_cut():
    p = plan("data.max_seq_len=100", "training.batch_size=2")
    # Two replies after prompts of 30 and 60 tokens, both cut at 100: 70 and 40 labelled tokens kept.
    data = DataTokens.of([300, 200], trained=[270, 140], first=[30, 60])
    assert data.loss_tokens(p) == 70 + 40
    # Without the positions, each row counts as labelled from its second token on (an upper bound).
    assert DataTokens.of([300, 200], trained=[270, 140]).loss_tokens(p) == 2 * 99
    # Short rows keep all their labelled tokens.
    assert DataTokens.of([50, 20], trained=[20, 5], first=[30, 15]).loss_tokens(p) == 25


@pytest.mark.parametrize("matrices", ["both", "embedding"])
def test_token_rows_estimate_holds_where_the_matrices_dominate(tmp_path, tokenizer_dir, matrices):
    """Token rows build each trained matrix's whole gradient before narrowing it to the rows. With a
    small loss chunk the 128,256-row matrices dominate the peak, so a missed matrix shows."""
    from headtune.core.estimate import read_model_config
    from headtune.core.plan import plan_from_dict
    from headtune.core.testing import WORDS, build_model, plan_dict, write_jsonl
    from headtune.core.training.memtrack import measure_peak

    folder = build_model(tmp_path / "m", tokenizer_dir, 128_256, tied=False, hidden=256, layers=1)
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Repeat.", "output": " ".join(WORDS * 8)}] * 4)
    emb = {"mode": "tokens", "token_ids": list(range(100, 140)), "train_embeddings": True}
    emb["train_lm_head"] = matrices == "both"
    d = plan_dict(
        folder,
        data,
        tmp_path / "run",
        data={"val_fraction": 0.0, "max_seq_len": 64},
        training={"batch_size": 1},
        memory={"loss_chunk_tokens": 16},
        embeddings=emb,
    )
    d["model"]["dtype"] = "bfloat16"
    p = plan_from_dict(d)
    measured = measure_peak(p, steps=2)["peak_bytes"]
    est = estimate(p, ModelShape.from_config(read_model_config(str(folder))), device="cpu")
    assert 0.95 <= est.tensors_peak_bytes / measured <= 1.10, (est.tensors_peak_bytes, measured, est.peak_phase)


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_tuning_doubles_the_rows(method):
    """A batch of preference pairs is twice as many rows: the activations of batch_size pairs are
    those of 2 x batch_size sft rows; the whole estimate grows. No reference model is held."""
    for extra in ([], ["embeddings.train_embeddings=true", "embeddings.train_lm_head=true"]):
        sft = estimate(plan("training.batch_size=2", *extra), SHAPE, "cuda")
        pairs = estimate(plan("training.batch_size=2", f"training.method={method}", *extra), SHAPE, "cuda")
        rows = estimate(plan("training.batch_size=4", *extra), SHAPE, "cuda")
        assert pairs.total_bytes > sft.total_bytes
        assert pairs.breakdown["activations"] == rows.breakdown["activations"] > sft.breakdown["activations"]
        # The weights are the same: the reference is log-probabilities computed before training.
        assert pairs.breakdown["weights_frozen"] == sft.breakdown["weights_frozen"]
        assert pairs.breakdown["weights_trainable"] == sft.breakdown["weights_trainable"]
    notes = " ".join(pairs.notes)
    assert "two rows per example" in notes and (("no reference model" in notes) == (method == "dpo"))
    # With the data's lengths: the longest reply sets the rows' length, the labelled tokens double.
    p = plan("training.batch_size=2", f"training.method={method}", "memory.loss_chunk_tokens=1024")
    est = estimate(p, SHAPE, "cuda", data=DataTokens.of([300, 120, 500, 80], [9, 5, 9, 2]))
    assert (
        est.data.seq_len == 500
        and est.total_bytes
        > estimate(
            plan("training.batch_size=2"), SHAPE, "cuda", data=DataTokens.of([300, 120, 500, 80], [9, 5, 9, 2])
        ).total_bytes
    )
