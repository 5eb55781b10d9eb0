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
