"""What the window previews, headless: model facts from the config, data preview, token lookup."""

from __future__ import annotations

import pytest

from headtune.core.data.examples import tokenize_example
from headtune.core.data.reading import IGNORE_INDEX
from headtune.core.errors import DataError, ModelError
from headtune.core.events import Eval, Finished, JsonlSink, Started, Step, Stopped, summarize_run
from headtune.core.model.sources import load_tokenizer, resolve_source
from headtune.core.plan import DataSpec
from headtune.core.testing import ALPACA_ROWS, write_jsonl
from headtune.core.tools.preview import find_tokens, model_summary, preview_data, search_vocab


@pytest.fixture(scope="module")
def tokenizer(tiny_untied):
    return load_tokenizer(resolve_source(str(tiny_untied)))


def test_model_summary_reads_the_config_only(tiny_untied, tiny_tied, tiny_llama3_vocab, tmp_path):
    s = model_summary(str(tiny_untied))
    assert (s.architecture, s.vocab, s.hidden, s.layers, s.context, s.tied, s.source) == (
        "LlamaForCausalLM",
        512,
        64,
        2,
        512,
        False,
        "folder",
    )
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_untied, dtype=torch.float32)
    assert s.params == sum(p.numel() for p in model.parameters())
    assert model_summary(str(tiny_tied)).tied is True
    assert model_summary(str(tiny_llama3_vocab)).vocab == 128_256
    with pytest.raises(ModelError, match="does not exist"):
        model_summary(str(tmp_path / "nowhere"))


def test_preview_data_splits_trained_and_masked_text(tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ALPACA_ROWS)
    p = preview_data(DataSpec(path=str(data), max_seq_len=64), tokenizer, table_rows=5)
    assert (p.format, p.rows, p.columns, len(p.table)) == ("alpaca", 40, ["instruction", "input", "output"], 5)
    assert p.table[0][0] == ALPACA_ROWS[0]["instruction"]
    trained = "".join(t for t, k in p.segments if k == "trained")
    masked = "".join(t for t, k in p.segments if k == "masked")
    assert trained.startswith(ALPACA_ROWS[0]["output"]) and "<|im_end|>" in trained
    assert ALPACA_ROWS[0]["instruction"] in masked and ALPACA_ROWS[0]["output"] not in masked
    # Lengths are before truncation; the trained/masked counts are within max_seq_len.
    assert len(p.lengths) == 40 and p.truncated == 0
    short = preview_data(DataSpec(path=str(data), max_seq_len=16), tokenizer)
    assert short.lengths == p.lengths and short.truncated == sum(n > 16 for n in p.lengths)
    assert short.trained_tokens + short.masked_tokens == sum(min(n, 16) for n in p.lengths)
    assert any(k == "cut" for _, k in short.segments)
    # The same split the trainer uses.
    from headtune.core.data.reading import load_examples
    from headtune.core.model.templates import resolve_template

    ex = load_examples(str(data))[0][0]
    f = tokenize_example(tokenizer, ex, resolve_template(tokenizer, "model")[0], 64)
    assert p.trained_tokens >= sum(1 for x in f["labels"] if x != IGNORE_INDEX)


def test_preview_of_preference_pairs_shows_each_reply_once(tokenizer, tmp_path):
    """Preference data previews as one conversation per reply (chosen, rejected) whose last reply
    alone is trained: the lengths the estimate reads are the replies' rows."""
    user = {"role": "user", "content": "Name a colour."}
    turns = [user, {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another?"}]
    rows = [
        {
            "chosen": [*turns, {"role": "assistant", "content": "Blue is another."}],
            "rejected": [*turns, {"role": "assistant", "content": "no"}],
        }
    ] * 3
    p = preview_data(DataSpec(path=str(write_jsonl(tmp_path / "p.jsonl", rows)), max_seq_len=64), tokenizer)
    assert p.format == "preference" and p.rows == 3 and len(p.lengths) == 6
    trained = "".join(t for t, k in p.segments if k == "trained")
    assert trained.startswith("Blue is another.") and "Red." not in trained


def test_preview_data_names_the_bad_line(tokenizer, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", ALPACA_ROWS[:3], raw_lines=["{nope"])
    with pytest.raises(DataError, match="bad.jsonl, line 4"):
        preview_data(DataSpec(path=str(bad)), tokenizer)


def test_find_tokens_by_text_or_id(tokenizer):
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert find_tokens(tokenizer, "<|im_end|>, 5") == [(end, "<|im_end|>"), (5, tokenizer.convert_ids_to_tokens(5))]
    pieces = find_tokens(tokenizer, "colour numbers")
    assert (
        len(pieces) >= 2
        and [t for t, _ in pieces] == tokenizer("colour numbers", add_special_tokens=False)["input_ids"]
    )
    with pytest.raises(DataError, match="outside this vocabulary"):
        find_tokens(tokenizer, "99999")
    hits = search_vocab(tokenizer, "im_")
    assert {tok for _, tok in hits} >= {"<|im_start|>", "<|im_end|>"}
    assert hits[0][0] in tokenizer.all_special_ids  # special tokens first
    assert search_vocab(tokenizer, "  ") == []


def test_summarize_run(tmp_path):
    assert summarize_run(tmp_path) is None
    sink = JsonlSink(tmp_path / "events.jsonl")
    sink(Started(total_steps=10, trainable_params=1, total_params=2, train_examples=3, val_examples=1, device="cpu"))
    sink(Step(step=1, total_steps=10, loss=2.0, learning_rate=1e-3, grad_norm=None, tokens_per_s=1.0, epoch=0.1))
    sink(Stopped(step=1, adapter_path="a", checkpoint_path="c"))
    s = summarize_run(tmp_path)
    assert (s.state, s.step, s.total_steps, s.last_loss) == ("stopped", 1, 10, 2.0)
    # Resumed and finished: the last word wins.
    sink(
        Started(
            total_steps=10,
            trainable_params=1,
            total_params=2,
            train_examples=3,
            val_examples=1,
            device="cpu",
            resumed_from_step=1,
        )
    )
    sink(Eval(step=10, eval_loss=1.5))
    sink(Finished(step=10, adapter_path="a"))
    sink.close()
    s = summarize_run(tmp_path)
    assert (s.state, s.step, s.eval_loss) == ("finished", 10, 1.5)
