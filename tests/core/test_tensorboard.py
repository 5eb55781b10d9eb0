"""TensorBoard event files: a run asked for them writes the loss, learning rate, evaluation and
memory as scalars in the run folder (read back record by record); without tensorboardX the plan
is refused before anything is written."""

from __future__ import annotations

import struct
import sys

import pytest

from headtune.core import events as ev
from headtune.core.errors import PlanError
from headtune.core.plan import plan_from_dict
from headtune.core.runfolder import RunFolder
from headtune.core.testing import plan_dict
from headtune.core.training.job import TrainingJob


def read_scalars(folder) -> dict[str, dict[int, float]]:
    """Every scalar of every event file under ``folder`` (TFRecord: length, its CRC, the record, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files
    for path in files:
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            record = data[at + 12 : at + 12 + length]
            at += 12 + length + 4
            event = Event.FromString(record)
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_event_files_hold_the_runs_scalars(tmp_path, tiny_untied, alpaca_file):
    d = plan_dict(
        tiny_untied,
        alpaca_file,
        tmp_path / "run",
        training={"max_steps": 4, "eval_every": 2},
        output={"dir": str(tmp_path / "run"), "tensorboard": True},
    )
    events: list = []
    TrainingJob(plan_from_dict(d), sinks=[events.append]).run()
    scalars = read_scalars(RunFolder(tmp_path / "run").tensorboard_dir)
    steps = {e.step: e.loss for e in events if isinstance(e, ev.Step)}
    assert len(steps) == 4
    assert scalars["train/loss"] == pytest.approx(steps)
    assert set(scalars["train/learning_rate"]) == set(steps)
    assert scalars["eval/loss"] == pytest.approx({e.step: e.eval_loss for e in events if isinstance(e, ev.Eval)})
    assert all(v > 0 for v in scalars["memory/process_gib"].values())


def test_missing_writer_is_refused_before_writing(tmp_path, tiny_untied, alpaca_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    d = plan_dict(
        tiny_untied, alpaca_file, tmp_path / "run", output={"dir": str(tmp_path / "run"), "tensorboard": True}
    )
    with pytest.raises(PlanError, match="headtune\\[tensorboard\\]") as err:
        TrainingJob(plan_from_dict(d)).run()
    assert err.value.key == "output.tensorboard"
    assert not (tmp_path / "run").exists()


def test_preference_rewards_become_scalars(tmp_path):
    from headtune.core.training.tensorboard import TensorBoardSink

    sink = TensorBoardSink(tmp_path / "tb")
    step = dict(total_steps=2, learning_rate=1e-3, grad_norm=None, tokens_per_s=1.0, epoch=0.0)
    sink(ev.Step(step=1, loss=0.69, **step))  # sft: no reward scalars
    sink(
        ev.Step(
            step=2, loss=0.6, reward_margin=0.3, reward_accuracy=0.75, reward_chosen=0.2, reward_rejected=-0.1, **step
        )
    )
    sink(ev.Eval(step=2, eval_loss=0.5, eval_reward_accuracy=1.0, eval_reward_margin=0.4))
    sink(ev.Finished(step=2, adapter_path=""))
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["train/reward_margin"] == pytest.approx({2: 0.3})
    assert scalars["train/reward_accuracy"] == {2: 0.75} and scalars["train/reward_rejected"] == pytest.approx(
        {2: -0.1}
    )
    assert scalars["eval/reward_accuracy"] == {2: 1.0} and scalars["eval/reward_margin"] == pytest.approx({2: 0.4})
