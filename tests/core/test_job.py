"""The training job: events, run folder rules, stop and resume, failures and their messages."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from headtune.core import events as ev
from headtune.core.errors import DataError, OutOfMemoryError, PlanError, RunError
from headtune.core.plan import plan_from_dict
from headtune.core.testing import ALPACA_ROWS, plan_dict, write_jsonl
from headtune.core.training.job import TrainingJob, resume_plan


def make_plan(tmp_path, model_dir, data_file, name="run", **sections):
    return plan_from_dict(plan_dict(model_dir, data_file, tmp_path / name, **sections))


def test_events_and_run_folder(tmp_path, tiny_untied, alpaca_file):
    seen = []
    plan = make_plan(tmp_path, tiny_untied, alpaca_file, training={"max_steps": 4, "eval_every": 2, "save_every": 2})
    result = TrainingJob(plan, sinks=[seen.append]).run()
    run = tmp_path / "run"
    assert isinstance(result, ev.Finished) and result.step == 4 and result.eval_loss is not None
    assert (run / "plan.yaml").is_file() and (run / "adapter" / "adapter_config.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    lines = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    types = [x["type"] for x in lines]
    assert types.count("step") == 4 and types[-1] == "finished" and "memory" in types
    assert [x["step"] for x in lines if x["type"] == "eval"] == [0, 2, 4]  # start, every 2, end
    step = next(x for x in lines if x["type"] == "step")
    assert {"step", "loss", "learning_rate", "grad_norm", "tokens_per_s"} <= set(step)
    assert step["tokens_per_s"] > 0 and step["loss"] > 0
    mem = next(x for x in lines if x["type"] == "memory")
    assert mem["rss_bytes"] > 10_000_000
    # The sink saw the same events as the file (plus nothing lost), and they read back typed.
    assert [e.to_dict() for e in seen if e.type != "log"] == [x for x in lines if x["type"] != "log"]
    assert [type(e).__name__ for e in ev.read_events(run / "events.jsonl")][-1] == "Finished"
    assert any("% of tokens trained, the rest masked" in getattr(e, "message", "") for e in seen)


def test_existing_run_folder_is_refused_and_untouched(tmp_path, tiny_untied, alpaca_file):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PlanError, match="already exists and is not empty"):
        TrainingJob(make_plan(tmp_path, tiny_untied, alpaca_file)).run()
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_bad_dataset_writes_nothing(tmp_path, tiny_untied):
    data = write_jsonl(tmp_path / "d.jsonl", ALPACA_ROWS[:3], raw_lines=['{"instruction": "x", "output": 5}'])
    with pytest.raises(DataError, match=r"d.jsonl, line 4: 'output' must be text"):
        TrainingJob(make_plan(tmp_path, tiny_untied, data)).run()
    assert not (tmp_path / "run").exists()


def test_missing_model_writes_nothing(tmp_path, alpaca_file):
    from headtune.core.errors import ModelError

    plan = make_plan(tmp_path, tmp_path / "no-such-model", alpaca_file)
    with pytest.raises(ModelError, match="does not exist"):
        TrainingJob(plan).run()
    assert not (tmp_path / "run").exists()


def test_token_ids_outside_vocabulary(tmp_path, tiny_untied, alpaca_file):
    plan = make_plan(
        tmp_path,
        tiny_untied,
        alpaca_file,
        embeddings={"train_embeddings": True, "mode": "tokens", "token_ids": [3, 100000]},
    )
    with pytest.raises(PlanError, match=r"\[100000\] are outside the vocabulary \(size 512\)"):
        TrainingJob(plan).run()
    assert not (tmp_path / "run").exists()


def test_not_enough_disk(tmp_path, tiny_untied, alpaca_file, monkeypatch):
    from headtune.core.training import job as job_mod

    monkeypatch.setattr(job_mod, "_free_bytes", lambda path: 1000)
    with pytest.raises(RunError, match="Not enough free disk space"):
        TrainingJob(make_plan(tmp_path, tiny_untied, alpaca_file)).run()
    assert not (tmp_path / "run").exists()


def test_out_of_memory_is_explained_and_recorded(tmp_path, tiny_untied, alpaca_file):
    def explode(event):
        if isinstance(event, ev.Step) and event.step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    plan = make_plan(tmp_path, tiny_untied, alpaca_file, training={"max_steps": 4, "batch_size": 2})
    with pytest.raises(OutOfMemoryError) as e:
        TrainingJob(plan, sinks=[explode]).run()
    assert "ran out of memory at step 2" in str(e.value) and "data.max_seq_len" in str(e.value)
    # The way forward is named: no checkpoint yet, so a new folder for the changed plan.
    assert "Nothing was saved" in str(e.value) and f"--set output.dir={tmp_path / 'run'}-2" in str(e.value)
    last = json.loads((tmp_path / "run" / "events.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "failed" and last["error_type"] == "OutOfMemoryError" and last["step"] == 2
    # With a checkpoint, it is named and kept.
    plan = make_plan(tmp_path, tiny_untied, alpaca_file, "run2", training={"max_steps": 4, "save_every": 1})
    with pytest.raises(OutOfMemoryError, match=r"The last checkpoint, .*checkpoint-1, is kept"):
        TrainingJob(plan, sinks=[explode]).run()


def adapter_tensors(run):
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_stop_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_untied, alpaca_file):
    sections = dict(
        training={"max_steps": 4, "save_every": 2, "learning_rate": 1e-2, "lr_scheduler": "cosine"},
        embeddings={"train_embeddings": True, "mode": "full"},
    )
    TrainingJob(make_plan(tmp_path, tiny_untied, alpaca_file, "straight", **sections)).run()

    job = TrainingJob(make_plan(tmp_path, tiny_untied, alpaca_file, "stopped", **sections))
    job.sinks.append(lambda e: job.request_stop() if isinstance(e, ev.Step) and e.step == 2 else None)
    stopped = job.run()
    run = tmp_path / "stopped"
    assert isinstance(stopped, ev.Stopped) and stopped.step == 2
    assert stopped.checkpoint_path.endswith("checkpoint-2") and (run / "adapter").is_dir()
    assert (run / "checkpoints" / "checkpoint-2" / "optimizer.pt").is_file()

    steps = []
    resumed = TrainingJob(resume_plan(run), sinks=[lambda e: steps.append(e)], resume=True).run()
    assert isinstance(resumed, ev.Finished) and resumed.step == 4
    assert [e.step for e in steps if isinstance(e, ev.Step)] == [3, 4]
    assert next(e for e in steps if isinstance(e, ev.Started)).resumed_from_step == 2
    # Same weights as never stopping: optimizer moments, scheduler and data order were restored.
    a, b = adapter_tensors(tmp_path / "straight"), adapter_tensors(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_resume_refuses_changed_plan_and_missing_checkpoint(tmp_path, tiny_untied, alpaca_file):
    plan = make_plan(tmp_path, tiny_untied, alpaca_file, training={"max_steps": 2, "save_every": 0})
    TrainingJob(plan).run()
    run = tmp_path / "run"
    with pytest.raises(PlanError, match="Changed: training.learning_rate"):
        resume_plan(run, ["training.learning_rate=0.5"])
    assert resume_plan(run, ["training.max_steps=10"]).training.max_steps == 10
    with pytest.raises(PlanError, match="no checkpoint to resume from"):
        TrainingJob(resume_plan(run, ["training.max_steps=10"]), resume=True).run()
    with pytest.raises(PlanError, match="not a Headtune run folder"):
        resume_plan(tmp_path)


def test_stop_before_training_writes_nothing(tmp_path, tiny_untied, alpaca_file):
    seen = []
    job = TrainingJob(make_plan(tmp_path, tiny_untied, alpaca_file), sinks=[seen.append])
    job.request_stop()
    result = job.run()
    assert isinstance(result, ev.Stopped) and result.step == 0 and not (tmp_path / "run").exists()
    assert seen[-1] is result


def test_eight_bit_optimizer_on_embeddings(tmp_path, tiny_untied, alpaca_file):
    import bitsandbytes as bnb

    # The stock memory options (the Trainer's rule; memory.matrix_states 8bit is tested in test_lean.py).
    plan = make_plan(
        tmp_path,
        tiny_untied,
        alpaca_file,
        training={"optimizer": "adamw_8bit", "max_steps": 2},
        embeddings={"train_embeddings": True, "train_lm_head": True, "mode": "full"},
        memory={"matrix_states": "trainer", "frozen_copy": True},
    )
    job = TrainingJob(plan)
    assert isinstance(job.run(), ev.Finished)
    opt = job.trainer.optimizer.optimizer
    assert isinstance(opt, bnb.optim.optimizer.Optimizer8bit) and opt.args.optim_bits == 8
    head = next(p for n, p in job.model.named_parameters() if "lm_head.modules_to_save" in n)
    assert opt.state[head]["state1"].dtype == torch.uint8  # 8-bit Adam states for the trained head
    emb = next(p for n, p in job.model.named_parameters() if "embed_tokens.modules_to_save" in n)
    assert opt.state[emb]["state1"].dtype == torch.float32  # the Trainer's 32-bit rule for nn.Embedding


def test_paged_optimizer_needs_gpu(tmp_path, tiny_untied, alpaca_file):
    plan = make_plan(tmp_path, tiny_untied, alpaca_file, training={"optimizer": "paged_adamw_8bit"})
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(PlanError, match="paged_adamw_8bit .* needs a CUDA GPU"):
        TrainingJob(plan).run()
    assert not (tmp_path / "run").exists()


def test_torn_event_line_is_skipped(tmp_path):
    path = tmp_path / "events.jsonl"
    sink = ev.JsonlSink(path)
    sink(ev.Step(step=1, total_steps=2, loss=1.0, learning_rate=0.1, grad_norm=None, tokens_per_s=5.0, epoch=0.1))
    sink.close()
    with path.open("a") as fh:
        fh.write('{"type": "step", "st')
    events = list(ev.read_events(path))
    assert len(events) == 1 and events[0].loss == 1.0


def test_eight_bit_runs_do_not_pin_models(tmp_path, tiny_untied, alpaca_file):
    """bitsandbytes' global override registry is emptied after a run (it held whole models)."""
    import bitsandbytes as bnb

    plan = make_plan(
        tmp_path,
        tiny_untied,
        alpaca_file,
        training={"optimizer": "adamw_8bit", "max_steps": 1},
        embeddings={"train_embeddings": True, "mode": "full"},
    )
    TrainingJob(plan).run()
    manager = bnb.optim.GlobalOptimManager.get_instance()
    assert manager.module_weight_config_triple == [] and manager.pid2config == {}


def test_divergence_stops_the_run_saves_nothing_of_it_and_says_what_to_change(tmp_path, tiny_untied, alpaca_file):
    """A learning rate that blows the weights up: the first loss that is not finite stops the run
    with a failure (exit 1 from the command line), the checkpoints before it are kept, none of it
    or after it is written, no adapter is written, and no step event carries a NaN."""
    from headtune.core.cli import main

    plan = make_plan(
        tmp_path,
        tiny_untied,
        alpaca_file,
        training={"learning_rate": 1e30, "max_steps": 6, "save_every": 1, "max_grad_norm": 1.0},
    )
    path = tmp_path / "plan.yaml"
    plan.save(path)
    assert main(["train", str(path)]) == 1
    run = tmp_path / "run"
    events = list(ev.read_events(run / "events.jsonl"))
    failed = events[-1]
    assert isinstance(failed, ev.Failed) and failed.error_type == "RunError"
    assert "Training diverged at step" in failed.message and "training.learning_rate" in failed.message
    diverged = failed.step
    steps = [e for e in events if isinstance(e, ev.Step)]
    assert diverged >= 2 and [e.step for e in steps] == list(range(1, diverged))
    assert all(math.isfinite(e.loss) for e in steps)
    assert not (run / "adapter").exists()
    kept = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir())
    assert kept and max(kept) == diverged - 1
    assert f"checkpoint-{diverged - 1}, is kept" in failed.message
