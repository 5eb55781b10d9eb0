"""Chat with a run: the base answer is the plain base model's, the fine-tuned answer the adapter's."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from helpers import plan_dict
from headtune.core.tools.chat import ChatPair
from headtune.core.training.job import TrainingJob
from headtune.core.plan import plan_from_dict

MESSAGES = [{"role": "user", "content": "Name colour number 3."}]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_untied):
    from helpers import ALPACA_ROWS, write_jsonl
    root = tmp_path_factory.mktemp("chat")
    data = write_jsonl(root / "data.jsonl", ALPACA_ROWS)
    d = plan_dict(tiny_untied, data, root / "run", embeddings={"train_lm_head": True, "mode": "full"},
                  training={"max_steps": 6, "learning_rate": 5e-2})
    TrainingJob(plan_from_dict(d)).run()
    return root / "run"


def greedy(model, tok, ids, stop_ids, n):
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=sorted(stop_ids), pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    new = new[: next((i for i, t in enumerate(new) if t in stop_ids), len(new))]
    return tok.decode(new, skip_special_tokens=False)


def test_base_and_tuned_answers_match_their_models(run, tiny_untied):
    from transformers import AutoModelForCausalLM
    pair = ChatPair(run, device="cpu")
    ids = pair.prompt_ids(MESSAGES)
    base = AutoModelForCausalLM.from_pretrained(tiny_untied, dtype=torch.float32).eval()
    base_answer = pair.answer(MESSAGES, tuned=False, max_new_tokens=12)
    tuned_answer = pair.answer(MESSAGES, tuned=True, max_new_tokens=12)
    assert base_answer == greedy(base, pair.tokenizer, ids, pair.stop_ids, 12)
    assert tuned_answer == greedy(pair.model, pair.tokenizer, ids, pair.stop_ids, 12)
    assert base_answer != tuned_answer  # the head was trained for 6 steps at a high rate
    pieces = list(pair.stream(MESSAGES, tuned=True, max_new_tokens=12))
    assert len(pieces) > 1 and "".join(pieces) == tuned_answer  # streamed piece by piece


def test_chat_command_answers_with_both(run):
    done = subprocess.run([sys.executable, "-m", "headtune.core.cli", "chat", str(run), "--prompt", "Hi",
                           "--max-new-tokens", "5"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[base] ") and lines[1].startswith("[fine-tuned] ")


def test_chat_refuses_a_folder_without_adapter(tmp_path):
    done = subprocess.run([sys.executable, "-m", "headtune.core.cli", "chat", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "not a Headtune run folder" in done.stderr and "Traceback" not in done.stderr
