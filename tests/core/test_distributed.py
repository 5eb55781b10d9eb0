"""Data parallelism for real: 2 CPU processes (gloo) under torch.distributed.run equal one process
with the global batch, in every embeddings mode, tied and untied, with evaluation on; a stop that
reaches one process stops both at the same step; a refused plan exits 2 on every process. The same
for fully sharded training (``training.sharding: fsdp``, the second half of this file), plus its
saved adapter's reload, resume from a sharded checkpoint, QLoRA and the combinations it refuses.

One launch runs every scenario (starting the processes is the slow part), see
``distributed_worker.py``. Tolerance: the two runs add the same gradients in a different order
(per process, then across processes), so they differ by float32 rounding, which Adam's
normalisation can magnify in elements whose gradient is near zero: measured at most 6e-7 after 3
steps at learning rate 1e-2; the test allows 1e-5 absolute, while a run whose processes did not
average their gradients (each training on its half of the batch) is off by 6e-2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from headtune.core import events as ev
from headtune.core.plan import plan_from_dict
from headtune.core.testing import ALPACA_ROWS, PREFERENCE_ROWS, plan_dict, write_jsonl
from headtune.core.training.job import TrainingJob

WORKER = Path(__file__).with_name("distributed_worker.py")
MODES = {
    "full": {"train_embeddings": True, "train_lm_head": True, "mode": "full"},
    "tokens": {"train_embeddings": True, "train_lm_head": True, "mode": "tokens", "token_ids": [5, 6, 7, 40, 41]},
    "lora": {"train_embeddings": True, "train_lm_head": True, "mode": "lora"},
}
# 32-bit optimizer states for the matrices trained in full: 8-bit blockwise states (the default)
# round each value to a code, so a float32 difference in the order gradients are summed can move a
# value across a code boundary; the comparison is about the processes, not that rounding.
EXACT_STATES = {"matrix_states": "32bit"}
TRAINING = {"max_steps": 3, "batch_size": 2, "eval_every": 2, "gradient_checkpointing": False}
STOP_TRAINING = {"max_steps": 4, "batch_size": 2, "save_every": 0, "lr_scheduler": "cosine"}


def torchrun(nproc: int, args: list[str], env: dict | None = None, timeout: int = 600):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def adapter(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def run_scenarios(root: Path, scenarios: list[dict]) -> dict:
    """Run ``scenarios`` in one launch of 2 processes; what each rank saw, by scenario name."""
    (root / "scenarios.json").write_text(json.dumps(scenarios), encoding="utf-8")
    done = torchrun(2, [str(WORKER), str(root / "scenarios.json"), str(root)])
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        sc["name"]: [json.loads((root / f"{sc['name']}-rank{r}.json").read_text()) for r in (0, 1)] for sc in scenarios
    }


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tiny_untied, tiny_tied):
    """Every scenario run once by 2 processes with batch 2 (global batch 4)."""
    root = tmp_path_factory.mktemp("dp")
    data = write_jsonl(root / "data.jsonl", ALPACA_ROWS)
    models = {"untied": tiny_untied, "tied": tiny_tied}
    scenarios = [
        {
            "name": f"{mode}-{tie}",
            "plan": plan_dict(
                models[tie], data, root / f"{mode}-{tie}", embeddings=emb, training=TRAINING, memory=EXACT_STATES
            ),
        }
        for mode, emb in MODES.items()
        for tie in models
    ]
    stop_plan = plan_dict(tiny_untied, data, root / "stop", embeddings=MODES["full"], training=STOP_TRAINING)
    scenarios.append({"name": "stop", "plan": stop_plan, "stop_rank": 1, "stop_at": 1, "resume": True})
    epochs = {"max_steps": 0, "epochs": 1, "batch_size": 4, "eval_every": 0, "gradient_checkpointing": False}
    scenarios.append({"name": "epochs", "plan": plan_dict(tiny_untied, data, root / "epochs", training=epochs)})
    pairs = write_jsonl(root / "pairs.jsonl", PREFERENCE_ROWS)
    dpo = plan_dict(tiny_untied, pairs, root / "dpo", training=dict(TRAINING, method="dpo"))
    scenarios.append({"name": "dpo", "plan": dpo})
    return root, data, models, run_scenarios(root, scenarios)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tie", ["untied", "tied"])
def test_two_processes_equal_one_with_the_global_batch(launched, tmp_path, mode, tie):
    root, data, models, seen = launched
    training = dict(TRAINING, batch_size=4)
    one = TrainingJob(
        plan_from_dict(
            plan_dict(
                models[tie], data, tmp_path / "one", embeddings=MODES[mode], training=training, memory=EXACT_STATES
            )
        )
    )
    result = one.run()
    assert isinstance(result, ev.Finished) and result.eval_loss is not None
    ranks = seen[f"{mode}-{tie}"]
    # Both processes ended at the same step with the same token-weighted validation loss as one.
    assert [r["run"]["type"] for r in ranks] == ["Finished", "Finished"]
    assert [r["run"]["step"] for r in ranks] == [3, 3]
    for r in ranks:
        assert r["run"]["eval_loss"] == pytest.approx(result.eval_loss, rel=1e-5)
    a, b = adapter(tmp_path / "one"), adapter(root / f"{mode}-{tie}")
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    # The main process alone wrote the run's events, the loading lines included.
    events = [json.loads(line) for line in (root / f"{mode}-{tie}" / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events].count("started") == 1 and events[0]["type"] == "log"
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3]


@pytest.mark.slow
def test_dpo_on_two_processes_equals_one_with_the_global_batch(launched, tmp_path):
    """Each process computes the reference of every pair; the pairs' loss, the validation figures
    and the step's reward figures (summed over the processes) equal one process's."""
    root, _data, models, seen = launched
    pairs = root / "pairs.jsonl"
    steps: list = []
    plan = plan_dict(models["untied"], pairs, tmp_path / "one", training=dict(TRAINING, method="dpo", batch_size=4))
    result = TrainingJob(plan_from_dict(plan), sinks=[steps.append]).run()
    assert [r["run"]["type"] for r in seen["dpo"]] == ["Finished", "Finished"]
    for r in seen["dpo"]:
        assert r["run"]["eval_loss"] == pytest.approx(result.eval_loss, rel=1e-5)
    a, b = adapter(tmp_path / "one"), adapter(root / "dpo")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    events = [json.loads(line) for line in (root / "dpo" / "events.jsonl").read_text().splitlines()]
    two = [e for e in events if e["type"] == "step"]
    one = [e for e in steps if isinstance(e, ev.Step)]
    assert [e["step"] for e in two] == [1, 2, 3]
    for x, y in zip(two[1:], one[1:]):  # step 1's margins are 0 up to rounding
        assert x["reward_margin"] == pytest.approx(y.reward_margin, rel=1e-3)
        assert x["reward_chosen"] == pytest.approx(y.reward_chosen, rel=1e-3, abs=1e-6)
    evals = [e for e in events if e["type"] == "eval"]
    assert evals[-1]["eval_reward_accuracy"] == [e for e in steps if isinstance(e, ev.Eval)][-1].eval_reward_accuracy


@pytest.mark.slow
def test_an_epoch_is_counted_over_every_process(launched):
    """36 training rows, 4 per process per step: 9 batches shared by 2 processes, 5 steps each
    (the last share wraps around), announced as run."""
    _, _, _, seen = launched
    main, other = seen["epochs"]
    assert main["announced_steps"] == 5 and main["run"]["step"] == 5 and other["run"]["step"] == 5
    assert other["events"] == 0  # the other process reports nothing


@pytest.mark.slow
def test_a_stop_on_one_process_stops_both_then_resume_equals_one_process(launched, tmp_path):
    root, data, models, seen = launched
    ranks = seen["stop"]
    stopped = [r["run"] for r in ranks]
    assert [s["type"] for s in stopped] == ["Stopped", "Stopped"], stopped
    step = stopped[0]["step"]
    assert 1 <= step < 4 and stopped[1]["step"] == step
    assert [p.name for p in (root / "stop" / "checkpoints").iterdir()] == [f"checkpoint-{step}"]
    assert [r["resumed"]["step"] for r in ranks] == [4, 4]
    one = TrainingJob(
        plan_from_dict(
            plan_dict(
                models["untied"],
                data,
                tmp_path / "one",
                embeddings=MODES["full"],
                training=dict(STOP_TRAINING, batch_size=4),
            )
        )
    )
    one.run()
    a, b = adapter(tmp_path / "one"), adapter(root / "stop")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_a_refused_plan_exits_2_on_every_process(tmp_path, tiny_untied):
    data = write_jsonl(tmp_path / "data.jsonl", ALPACA_ROWS)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")  # not a run folder, not empty
    plan = tmp_path / "plan.yaml"
    plan_from_dict(plan_dict(tiny_untied, data, out)).save(plan)
    codes = tmp_path / "codes"
    codes.mkdir()
    # The folder the built-in launcher reads each process's exit code from.
    done = torchrun(2, ["-m", "headtune.core.cli", "train", str(plan)], env={"HEADTUNE_LAUNCHER_DIR": str(codes)})
    assert {f.name: f.read_text() for f in codes.iterdir()} == {"rank-0.exit": "2", "rank-1.exit": "2"}
    # Only the main process checks the folder; both refuse, and the message is said once.
    assert done.stderr.count("already exists and is not empty") == 1, done.stderr
    # No process printed a traceback (torchrun by hand prints its own, naming no Headtune code).
    frames = [line for line in done.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [f for f in frames if "headtune" in f], done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_sharded_launcher_configuration_is_refused_before_loading(tmp_path, tiny_untied, monkeypatch):
    from headtune.core.errors import BadInputError

    data = write_jsonl(tmp_path / "data.jsonl", ALPACA_ROWS)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    job = TrainingJob(plan_from_dict(plan_dict(tiny_untied, data, tmp_path / "run")))
    with pytest.raises(BadInputError, match="FSDP"):
        job.run()
    assert job.model is None and not (tmp_path / "run").exists()


def test_the_estimate_per_device(tmp_path, tiny_untied, capsys):
    """DDP: the one-device estimate plus the gradient buckets (the trainable values once more);
    FSDP: weights, gradients and states split, the largest unit gathered twice; the global batch."""
    from headtune.core.cli import main
    from headtune.core.estimate import ModelShape, estimate, per_device
    from headtune.core.plan import Plan, with_overrides
    from headtune.core.testing import LLAMA3_8B

    base = Plan()
    base.model.name_or_path, base.data.path = "meta-llama/Meta-Llama-3-8B", "d.jsonl"
    plan = with_overrides(base, ["embeddings.train_lm_head=true", "training.batch_size=2", "training.grad_accum=3"])
    shape = ModelShape.from_config(LLAMA3_8B)
    est = estimate(plan, shape, "cuda")
    one, four = per_device(plan, shape, est, 1), per_device(plan, shape, est, 4)
    assert one.global_batch == 6 and four.global_batch == 24
    assert one.ddp_buckets_bytes == 0 and one.ddp_total_bytes == est.total_bytes
    assert four.ddp_buckets_bytes == est.breakdown["weights_trainable"] > 525_336_576  # the head copy, at least
    assert four.ddp_total_bytes > est.total_bytes + four.ddp_buckets_bytes  # the allocator slack grows with it
    # Sharding the 8B weights over 4 devices saves more than the gathered units cost.
    assert four.fsdp_total_bytes < est.total_bytes < four.ddp_total_bytes

    data = write_jsonl(tmp_path / "data.jsonl", ALPACA_ROWS)
    path = tmp_path / "plan.yaml"
    plan_from_dict(plan_dict(tiny_untied, data, tmp_path / "run", training={"devices": 2})).save(path)
    assert main(["estimate", str(path), "--device", "cuda", "--gpu-memory", "8GiB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["per_device"]["devices"] == 2 and out["per_device"]["global_batch"] == 4
    assert main(["estimate", str(path), "--device", "cuda", "--gpu-memory", "8GiB"]) == 0
    assert "On 2 devices (training.devices): global batch 4" in capsys.readouterr().out


@pytest.mark.slow
def test_the_built_in_launcher_kill_9_of_one_process_then_resume(tmp_path, tiny_untied):
    """`headtune train --events-json` with training.devices: 2, as the window runs it: process 0's
    events only, one run. A process killed outright: the other stops with a message naming the
    cause and the kept checkpoint, exit 1 (process 0's). `--resume` then finishes the run on 2
    processes again, equal to one process with the global batch."""
    import time

    import psutil

    data = write_jsonl(tmp_path / "data.jsonl", ALPACA_ROWS)
    plan = tmp_path / "plan.yaml"
    training = {"max_steps": 200, "devices": 2, "save_every": 2, "eval_every": 0, "gradient_checkpointing": False}
    run = tmp_path / "run"
    plan_from_dict(plan_dict(tiny_untied, data, run, training=training)).save(plan)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(*args: str) -> tuple[subprocess.Popen, Path]:
        out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}.jsonl"
        with out.open("w") as f:  # stdin stays open, as the window keeps it (closing it stops the run)
            cli = [sys.executable, "-m", "headtune.core.cli", "train", *args, "--events-json"]
            return subprocess.Popen(cli, stdin=subprocess.PIPE, stdout=f, stderr=subprocess.DEVNULL, env=env), out

    def events(out: Path) -> list[dict]:
        return [json.loads(line) for line in out.read_text().splitlines()]

    launcher, out = start(str(plan))
    deadline = time.time() + 300
    while not (run / "checkpoints" / "checkpoint-2").is_dir() and time.time() < deadline:
        time.sleep(0.2)
    ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    assert len(ranks) == 1
    ranks[0].kill()
    assert launcher.wait(timeout=300) == 1
    first = events(out)
    assert [e["type"] for e in first].count("started") == 1 and first[-1]["type"] == "failed"
    assert "Another process of this 2-process run stopped answering" in first[-1]["message"]
    assert "is kept" in first[-1]["message"]
    steps = [e["step"] for e in first if e["type"] == "step"]
    assert steps == list(range(1, len(steps) + 1))  # one run's steps, once each

    kept = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))
    budget = kept + 2
    resumed, out = start("--resume", str(run), "--set", f"training.max_steps={budget}")
    assert resumed.wait(timeout=600) == 0
    second = events(out)
    assert [e["type"] for e in second].count("started") == 1 and second[-1]["type"] == "finished"
    assert [e["step"] for e in second if e["type"] == "step"] == [kept + 1, kept + 2]
    one = dict(training, max_steps=budget, devices=1, batch_size=4, save_every=0)
    TrainingJob(plan_from_dict(plan_dict(tiny_untied, data, tmp_path / "one", training=one))).run()
    a, b = adapter(tmp_path / "one"), adapter(run)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


# -- fully sharded (FSDP): training.sharding: fsdp --------------------------------------------
# Tolerance: as for data parallelism, the two runs add the same gradients in a different order
# (FSDP reduce-scatters each process's gradient shard by shard), so they differ by float32
# rounding that Adam can magnify where a gradient is near zero: measured at most 8.7e-6 after 3
# steps at learning rate 1e-2 (the tied full matrix), under the 1e-5 allowed; a run whose
# processes did not combine their gradients is off by about 6e-2.
SHARDED = dict(TRAINING, sharding="fsdp")
SHARDED_CASES = [("full", "untied"), ("full", "tied"), ("tokens", "untied"), ("tokens", "tied"), ("lora", "untied")]
# Accumulation (gradients kept unreduced until the last micro-batch) and gradient checkpointing
# (each layer gathered again for its recomputation), global batch 4 as above.
ACCUM = dict(SHARDED, batch_size=1, grad_accum=2, gradient_checkpointing=True)
SHARDED_STOP = dict(STOP_TRAINING, sharding="fsdp", save_every=2)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_untied, tiny_tied):
    """Every FSDP scenario run once by 2 processes with batch 2 (global batch 4)."""
    root = tmp_path_factory.mktemp("fsdp")
    data = write_jsonl(root / "data.jsonl", ALPACA_ROWS)
    models = {"untied": tiny_untied, "tied": tiny_tied}
    scenarios = [
        {
            "name": f"{mode}-{tie}",
            "plan": plan_dict(
                models[tie], data, root / f"{mode}-{tie}", embeddings=MODES[mode], training=SHARDED, memory=EXACT_STATES
            ),
            "logits": True,
        }
        for mode, tie in SHARDED_CASES
    ]
    # LoRA on a tied matrix: refused (its head factors share the embedding's memory).
    lora_tied = plan_dict(tiny_tied, data, root / "lora-tied", embeddings=MODES["lora"], training=SHARDED)
    scenarios.append({"name": "lora-tied", "plan": lora_tied})
    scenarios.append(
        {
            "name": "accum",
            "plan": plan_dict(
                tiny_untied, data, root / "accum", embeddings=MODES["full"], training=ACCUM, memory=EXACT_STATES
            ),
        }
    )
    # QLoRA: 4-bit NF4 weights (float32 compute, so the comparison is about the processes, not
    # bfloat16 rounding), LoRA only, gradient checkpointing.
    qlora = plan_dict(tiny_untied, data, root / "qlora", training=dict(SHARDED, gradient_checkpointing=True))
    qlora["model"]["quantization"] = "4bit"
    scenarios.append({"name": "qlora", "plan": qlora})
    # Default memory options: the 8-bit matrix states fall back to 32-bit under FSDP.
    stop_plan = plan_dict(tiny_untied, data, root / "stop", embeddings=MODES["full"], training=SHARDED_STOP)
    scenarios.append({"name": "stop", "plan": stop_plan, "stop_rank": 1, "stop_at": 2, "resume": True})
    return root, data, models, run_scenarios(root, scenarios)


def assert_same_adapter(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("mode,tie", SHARDED_CASES)
def test_fsdp_two_processes_equal_one_with_the_global_batch(sharded, tmp_path, mode, tie):
    """The adapter saved from the shards (LoRA factors, the full matrices' trained copies, the
    token rows) equals one process's with the global batch; so does the validation loss; and the
    adapter reloads with the logits the sharded model computed."""
    from headtune.core.training.trained import load_trained

    root, data, models, seen = sharded
    training = dict(TRAINING, batch_size=4)
    one = TrainingJob(
        plan_from_dict(
            plan_dict(
                models[tie], data, tmp_path / "one", embeddings=MODES[mode], training=training, memory=EXACT_STATES
            )
        )
    )
    result = one.run()
    ranks = seen[f"{mode}-{tie}"]
    assert [r["run"]["type"] for r in ranks] == ["Finished", "Finished"], ranks
    assert [r["run"]["step"] for r in ranks] == [3, 3]
    for r in ranks:
        assert r["run"]["eval_loss"] == pytest.approx(result.eval_loss, rel=1e-5)
    assert_same_adapter(adapter(tmp_path / "one"), adapter(root / f"{mode}-{tie}"))
    model, _, plan = load_trained(root / f"{mode}-{tie}")
    assert plan.training.sharding == "fsdp"
    with torch.no_grad():
        reloaded = model(input_ids=torch.tensor([[1, 5, 17, 42, 99, 7]])).logits.float()
    for r in ranks:
        torch.testing.assert_close(reloaded, torch.tensor(r["logits"]), rtol=0, atol=1e-5)
    events = [json.loads(line) for line in (root / f"{mode}-{tie}" / "events.jsonl").read_text().splitlines()]
    assert any("sharded over 2 processes" in e.get("message", "") for e in events if e["type"] == "log")


@pytest.mark.slow
def test_fsdp_with_accumulation_and_checkpointing_equals_one_process(sharded, tmp_path):
    root, data, models, seen = sharded
    assert [r["run"]["step"] for r in seen["accum"]] == [3, 3]
    training = dict(TRAINING, batch_size=4, gradient_checkpointing=True)
    one = plan_dict(
        models["untied"], data, tmp_path / "one", embeddings=MODES["full"], training=training, memory=EXACT_STATES
    )
    TrainingJob(plan_from_dict(one)).run()
    assert_same_adapter(adapter(tmp_path / "one"), adapter(root / "accum"))


@pytest.mark.slow
def test_fsdp_stop_then_resume_from_the_sharded_checkpoint_equals_one_process(sharded, tmp_path):
    """The checkpoint holds the adapter and the optimizer state gathered whole (keyed by name);
    the resumed run loads the weights, scatters the state back, and ends where one process does."""
    root, data, models, seen = sharded
    stopped = [r["run"] for r in seen["stop"]]
    assert [s["type"] for s in stopped] == ["Stopped", "Stopped"], stopped
    assert stopped[0]["step"] == stopped[1]["step"] >= 2
    state = torch.load(next((root / "stop" / "checkpoints").iterdir()) / "optimizer.pt", weights_only=True)
    assert all(isinstance(k, str) for k in state["state"])  # by name, whole
    assert [r["resumed"]["step"] for r in seen["stop"]] == [4, 4]
    one = plan_dict(
        models["untied"],
        data,
        tmp_path / "one",
        embeddings=MODES["full"],
        training=dict(STOP_TRAINING, batch_size=4),
        memory=EXACT_STATES,
    )
    TrainingJob(plan_from_dict(one)).run()
    assert_same_adapter(adapter(tmp_path / "one"), adapter(root / "stop"))


@pytest.mark.slow
def test_fsdp_refuses_lora_on_a_tied_model_on_every_process(sharded):
    root, _, _, seen = sharded
    runs = [r["run"] for r in seen["lora-tied"]]
    assert [r["exit_code"] for r in runs] == [2, 2]
    assert all("cannot shard LoRA on the embeddings and head" in r["error"] for r in runs)
    assert not (root / "lora-tied").exists()


@pytest.mark.parametrize(
    "change,says",
    [
        ({"training": {"optimizer": "adamw_8bit"}}, "cannot run training.optimizer adamw_8bit"),
        pytest.param(
            {"model": {"quantization": "8bit"}}, "cannot shard an 8-bit (LLM.int8) model", marks=pytest.mark.slow
        ),
    ],
)
def test_an_fsdp_plan_it_cannot_run_exits_2_on_every_process(tmp_path, tiny_untied, change, says):
    """Refused before any model loads, on both processes, with the reason and no traceback."""
    data = write_jsonl(tmp_path / "data.jsonl", ALPACA_ROWS)
    d = plan_dict(tiny_untied, data, tmp_path / "run", training={"sharding": "fsdp"})
    for section, values in change.items():
        d[section].update(values)
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps(d), encoding="utf-8")  # plan_from_dict itself refuses it
    codes = tmp_path / "codes"
    codes.mkdir()
    done = torchrun(2, ["-m", "headtune.core.cli", "train", str(plan)], env={"HEADTUNE_LAUNCHER_DIR": str(codes)})
    assert {f.name: f.read_text() for f in codes.iterdir()} == {"rank-0.exit": "2", "rank-1.exit": "2"}
    assert says in done.stderr, done.stderr
    frames = [line for line in done.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [f for f in frames if "headtune" in f], done.stderr
    assert not (tmp_path / "run").exists()


def test_fsdp_memory_options_as_they_run():
    """8-bit matrix states fall back to 32-bit (bitsandbytes steps whole tensors); the fused step is off."""
    from headtune.core.plan import Plan, with_overrides
    from headtune.core.plan.memory_options import resolve

    base = Plan()
    base.model.name_or_path, base.data.path = "m", "d.jsonl"
    plan = with_overrides(
        base,
        [
            "training.sharding=fsdp",
            "embeddings.train_lm_head=true",
            "training.max_grad_norm=0",
            "memory.fused_step=true",
        ],
    )
    eff = resolve(plan, "cuda")
    assert eff.matrix_states == "32bit" and not eff.fused_step
    assert any("sharded" in n for n in eff.notes)
    assert resolve(with_overrides(plan, ["training.sharding=none"]), "cuda").matrix_states == "8bit"


@pytest.mark.slow
def test_fsdp_qlora_equals_one_process(sharded, tmp_path):
    """The packed 4-bit weights are sharded (as bytes) and gathered whole for each layer; the LoRA
    factors trained on them equal one process's with the global batch."""
    root, data, models, seen = sharded
    assert [r["run"]["type"] for r in seen["qlora"]] == ["Finished", "Finished"], seen["qlora"]
    training = dict(TRAINING, batch_size=4, gradient_checkpointing=True)
    one = plan_dict(models["untied"], data, tmp_path / "one", training=training)
    one["model"]["quantization"] = "4bit"
    TrainingJob(plan_from_dict(one)).run()
    assert_same_adapter(adapter(tmp_path / "one"), adapter(root / "qlora"))


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_fsdp_refuses_preference_tuning_before_loading(method):
    from headtune.core.errors import ShardingError
    from headtune.core.plan import Plan, with_overrides

    base = Plan()
    base.model.name_or_path, base.data.path = "m", "d.jsonl"
    with pytest.raises(ShardingError, match=f"does not run training.method {method}"):
        with_overrides(base, ["training.sharding=fsdp", f"training.method={method}"])
