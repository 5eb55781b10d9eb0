"""Batching: padding-free batches give each row exactly the logits and loss it gets padded, train
to the same losses, and a model that would let the rows see each other falls back to padding;
length-grouped batches run."""

from __future__ import annotations

import pytest
import torch

from headtune.core import events as ev
from headtune.core.data.examples import Collator, FlatCollator
from headtune.core.plan import plan_from_dict
from headtune.core.testing import plan_dict
from headtune.core.training.job import TrainingJob
from headtune.core.training.padding_free import honours_row_positions

ROWS = [
    {"input_ids": [5, 9, 30, 31, 7, 2, 8], "labels": [-100, -100, -100, 31, 7, 2, 8]},
    {"input_ids": [11, 12, 13], "labels": [11, 12, 13]},
    {"input_ids": list(range(40, 52)), "labels": [-100] * 4 + list(range(44, 52))},
]


def load(model_dir, attn="sdpa"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn).eval()
    model.config.use_cache = False
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_flat_batch_equals_padded_rows(tiny_untied, attn):
    model = load(tiny_untied, attn)
    flat = FlatCollator()(ROWS)
    assert flat["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in ROWS))
    flat.pop("attention_mask")  # as the trainer does
    padded = Collator(0)(ROWS)
    with torch.no_grad():
        out_flat, out_padded = model(**flat), model(**padded)
    start = 0
    for i, row in enumerate(ROWS):
        n = len(row["input_ids"])
        torch.testing.assert_close(out_flat.logits[0, start : start + n], out_padded.logits[i, :n], rtol=0, atol=1e-5)
        start += n
    torch.testing.assert_close(out_flat.loss, out_padded.loss, rtol=0, atol=1e-6)


def test_a_model_that_mixes_rows_is_detected(tiny_untied):
    model = load(tiny_untied)
    assert honours_row_positions(model)
    forward = model.forward

    def ignoring_positions(*args, position_ids=None, **kw):
        return forward(*args, **kw)

    model.forward = ignoring_positions
    assert not honours_row_positions(model)


def losses(tmp_path, model_dir, data, batching, name):
    d = plan_dict(
        model_dir,
        data,
        tmp_path / name,
        data={"batching": batching},
        training={"max_steps": 4, "batch_size": 4, "eval_every": 2},
    )
    events: list = []
    job = TrainingJob(plan_from_dict(d), sinks=[events.append])
    job.run()
    steps = [e.loss for e in events if isinstance(e, ev.Step)]
    evals = [e.eval_loss for e in events if isinstance(e, ev.Eval)]
    return job, steps, evals


def test_padding_free_trains_to_the_padded_losses(tmp_path, tiny_untied, alpaca_file):
    job, flat_steps, flat_evals = losses(tmp_path, tiny_untied, alpaca_file, "padding_free", "flat")
    assert job.batching == "padding_free"
    job, padded_steps, padded_evals = losses(tmp_path, tiny_untied, alpaca_file, "padded", "padded")
    assert job.batching == "padded"
    assert len(flat_steps) == 4 and len(flat_evals) == 3
    assert flat_steps == pytest.approx(padded_steps, abs=1e-4)
    assert flat_evals == pytest.approx(padded_evals, abs=1e-4)


def test_grouped_batches_train(tmp_path, tiny_untied, alpaca_file):
    job, steps, _ = losses(tmp_path, tiny_untied, alpaca_file, "grouped", "grouped")
    assert len(steps) == 4 and all(s > 0 for s in steps)
    from transformers.trainer_pt_utils import LengthGroupedSampler

    assert isinstance(job.trainer._get_train_sampler(), LengthGroupedSampler)
