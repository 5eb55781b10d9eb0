"""Chat with a run: the base answer is the plain base model's, the fine-tuned answer the adapter's."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from headtune.core.plan import plan_from_dict
from headtune.core.testing import plan_dict
from headtune.core.tools.chat import ChatPair
from headtune.core.training.job import TrainingJob

MESSAGES = [{"role": "user", "content": "Name colour number 3."}]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_untied):
    from headtune.core.testing import ALPACA_ROWS, write_jsonl

    root = tmp_path_factory.mktemp("chat")
    data = write_jsonl(root / "data.jsonl", ALPACA_ROWS)
    d = plan_dict(
        tiny_untied,
        data,
        root / "run",
        embeddings={"train_lm_head": True, "mode": "full"},
        training={"max_steps": 6, "learning_rate": 5e-2},
    )
    TrainingJob(plan_from_dict(d)).run()
    return root / "run"


def greedy(model, tok, ids, stop_ids, n):
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=sorted(stop_ids),
            pad_token_id=tok.pad_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
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


@pytest.mark.slow
def test_chat_command_answers_with_both(run):
    done = subprocess.run(
        [sys.executable, "-m", "headtune.core.cli", "chat", str(run), "--prompt", "Hi", "--max-new-tokens", "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("[base] ") and lines[1].startswith("[fine-tuned] ")


def test_chat_refuses_a_folder_without_adapter(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "headtune.core.cli", "chat", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and "not a Headtune run folder" in done.stderr and "Traceback" not in done.stderr


class FakePair:
    """Answers with fixed pieces; records what it was asked."""

    def __init__(self, pieces=("a", "b", "c")):
        self.pieces = pieces
        self.asked = []

    def stream(self, messages, tuned=True, max_new_tokens=128, temperature=0.0):
        self.asked.append((messages[-1]["content"], tuned, max_new_tokens))
        for p in self.pieces[:max_new_tokens]:
            yield ("T" if tuned else "B") + p


def test_json_lines_answers_each_request_with_both_models_and_keeps_the_model():
    import json as _json

    from headtune.core.tools.chat import serve_json_lines

    pair, loads, out = FakePair(), [], []
    lines = [
        _json.dumps({"messages": [{"role": "user", "content": "one"}], "max_new_tokens": 2}) + "\n",
        "\n",
        _json.dumps({"messages": [{"role": "user", "content": "two"}]}) + "\n",
    ]
    serve_json_lines(lambda: loads.append(1) or pair, iter(lines), out.append)
    assert loads == [1] and out[0] == {"type": "loaded"}  # loaded once for both prompts
    answers = [i for i, e in enumerate(out) if e["type"] == "answered"]
    assert len(answers) == 2 and all(not out[i]["stopped"] for i in answers)
    first = out[1 : answers[0]]
    assert [e["text"] for e in first] == ["Ba", "Ta", "Bb", "Tb"]  # interleaved, base first
    assert [e["tuned"] for e in first] == [False, True, False, True]
    assert "".join(e["text"] for e in out[answers[0] + 1 : answers[1]] if e["tuned"]) == "TaTbTc"
    assert [a[0] for a in pair.asked] == ["one", "one", "two", "two"]


def test_json_lines_stop_ends_the_current_answer():
    import json as _json
    import threading

    from headtune.core.tools.chat import serve_json_lines

    gate = threading.Event()

    class SlowPair(FakePair):
        def stream(self, messages, tuned=True, max_new_tokens=128, temperature=0.0):
            for i in range(max_new_tokens):
                gate.wait(5)
                yield str(i)

    def lines():
        yield _json.dumps({"messages": [{"role": "user", "content": "x"}], "max_new_tokens": 1000}) + "\n"
        yield _json.dumps({"stop": True}) + "\n"
        gate.set()

    out = []
    serve_json_lines(SlowPair, lines(), out.append)
    assert out[-1] == {"type": "answered", "stopped": True}
    assert sum(e["type"] == "piece" for e in out) < 1000


@pytest.mark.slow
def test_chat_json_lines_command_streams_and_reports_failures(run, tmp_path):
    import json as _json

    request = _json.dumps({"messages": MESSAGES, "max_new_tokens": 6}) + "\n"
    done = subprocess.run(
        [sys.executable, "-m", "headtune.core.cli", "chat", str(run), "--json-lines"],
        input=request,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    events = [_json.loads(x) for x in done.stdout.splitlines()]
    assert events[0] == {"type": "loaded"} and events[-1] == {"type": "answered", "stopped": False}
    pair = ChatPair(run, device="cpu")
    tuned = "".join(e["text"] for e in events if e["type"] == "piece" and e["tuned"])
    assert tuned == pair.answer(MESSAGES, tuned=True, max_new_tokens=6)
    done = subprocess.run(
        [sys.executable, "-m", "headtune.core.cli", "chat", str(tmp_path), "--json-lines"],
        input="",
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = _json.loads(done.stdout.splitlines()[-1])
    assert done.returncode == 2 and last["type"] == "failed" and "not a Headtune run folder" in last["message"]
