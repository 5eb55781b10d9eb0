"""Adapter variants (DoRA, rsLoRA, LoRA+): each trains, reloads with identical logits and merges
into an export equal to the adapter model; each does what it says (DoRA's magnitude vectors
train, rsLoRA's scale is alpha / sqrt(r), LoRA+'s B matrices get the higher learning rate)."""

from __future__ import annotations

import math

import pytest
import torch

from headtune.core.plan import plan_from_dict
from headtune.core.testing import plan_dict
from headtune.core.tools.export import export_run
from headtune.core.training.job import TrainingJob
from headtune.core.training.trained import load_trained

IDS = torch.tensor([[1, 5, 17, 42, 99, 7, 200, 3]])
VARIANTS = {
    "dora": {"dora": True},
    "rslora": {"rslora": True},
    "loraplus": {"loraplus_ratio": 16.0},
    "dora+rslora+loraplus": {"dora": True, "rslora": True, "loraplus_ratio": 8.0},
}


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def run_variant(tmp_path, model_dir, data, adapter: dict, embeddings: dict | None = None, name="run"):
    d = plan_dict(
        model_dir,
        data,
        tmp_path / name,
        adapter={"r": 4, "alpha": 8, "dropout": 0.0, **adapter},
        embeddings=embeddings or {},
        training={"max_steps": 3, "learning_rate": 5e-2, "save_every": 0},
    )
    job = TrainingJob(plan_from_dict(d))
    job.run()
    return job, tmp_path / name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_reloads_and_merges_exactly(tmp_path, tiny_untied, alpaca_file, variant):
    from transformers import AutoModelForCausalLM

    job, run = run_variant(tmp_path, tiny_untied, alpaca_file, VARIANTS[variant])
    trained = logits(job.model.eval())
    reloaded, _, _ = load_trained(run)
    torch.testing.assert_close(logits(reloaded), trained, rtol=0, atol=0)
    base = AutoModelForCausalLM.from_pretrained(tiny_untied, dtype=torch.float32).eval()
    assert (logits(base) - trained).abs().max() > 1e-3  # it learned something
    out = tmp_path / "merged"
    export_run(run, "merged", out, dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(merged), trained, rtol=0, atol=1e-4)


def test_dora_with_lora_on_the_embeddings_and_head(tmp_path, tiny_untied, alpaca_file):
    from transformers import AutoModelForCausalLM

    emb = {"train_embeddings": True, "train_lm_head": True, "mode": "lora"}
    job, run = run_variant(tmp_path, tiny_untied, alpaca_file, {"dora": True}, emb)
    trained = logits(job.model.eval())
    reloaded, _, _ = load_trained(run)
    torch.testing.assert_close(logits(reloaded), trained, rtol=0, atol=0)
    out = tmp_path / "merged"
    export_run(run, "merged", out, dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(merged), trained, rtol=0, atol=1e-4)


def test_each_variant_does_what_it_says(tmp_path, tiny_untied, alpaca_file):
    job, _ = run_variant(tmp_path, tiny_untied, alpaca_file, {"dora": True, "rslora": True, "loraplus_ratio": 16.0})
    model = job.model
    magnitudes = {n: p for n, p in model.named_parameters() if "lora_magnitude_vector" in n}
    assert magnitudes and all(p.requires_grad for p in magnitudes.values())
    # rsLoRA: alpha / sqrt(r), not alpha / r.
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers and all(m.scaling["default"] == pytest.approx(8 / math.sqrt(4)) for m in layers)
    # LoRA+: the B matrices and the magnitudes learn 16 times faster than the A matrices.
    opt = job.trainer.optimizer
    lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        fast = "lora_B" in name or "lora_magnitude_vector" in name
        assert lr_of[id(p)] == pytest.approx(5e-2 * (16 if fast else 1)), name


def test_dora_on_a_tied_matrix_through_lora_is_refused_before_writing(tmp_path, tiny_tied, alpaca_file):
    from headtune.core.errors import PlanError

    emb = {"train_embeddings": True, "mode": "lora"}
    with pytest.raises(PlanError, match="adapter.dora") as err:
        run_variant(tmp_path, tiny_tied, alpaca_file, {"dora": True}, emb)
    assert err.value.key == "adapter.dora"
    assert not (tmp_path / "run").exists()
    # The other modes train a tied matrix under DoRA.
    job, _ = run_variant(tmp_path, tiny_tied, alpaca_file, {"dora": True}, {"train_embeddings": True, "mode": "full"})
    assert torch.isfinite(logits(job.model.eval())).all()
