"""Datasets: formats, chat-template masking, errors with line numbers, split and packing."""

from __future__ import annotations

import json

import pytest

from headtune.core.data import examples, reading
from headtune.core.errors import DataError
from headtune.core.model import templates
from headtune.core.plan import DataSpec


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "row,fmt",
    [
        ({"instruction": "a", "input": "", "output": "b"}, "alpaca"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages"),
        ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}, "sharegpt"),
        ({"text": "plain words"}, "text"),
    ],
)
def test_detect_format(tmp_path, row, fmt):
    examples, detected = reading.load_examples(str(write(tmp_path / "d.jsonl", json.dumps(row) + "\n")))
    assert detected == fmt and len(examples) == 1


def test_assistant_tokens_trained_prompt_masked(tok):
    ex = reading.Example(
        1,
        messages=[
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "say cat"},
            {"role": "assistant", "content": "the cat"},
            {"role": "user", "content": "and dog"},
            {"role": "assistant", "content": "the dog"},
        ],
    )
    template, _ = templates.resolve_template(tok, "model")
    f = examples.tokenize_example(tok, ex, template, 512)
    trained = [i for i, label in zip(f["input_ids"], f["labels"]) if label != reading.IGNORE_INDEX]
    masked = [i for i, label in zip(f["input_ids"], f["labels"]) if label == reading.IGNORE_INDEX]
    assert tok.decode(trained) == "the cat<|im_end|>\nthe dog<|im_end|>\n"
    assert "say cat" in tok.decode(masked) and "be nice" in tok.decode(masked)
    assert "the cat" not in tok.decode(masked)


def test_text_trains_every_token_and_ends_with_eos(tok):
    f = examples.tokenize_example(tok, reading.Example(1, text="the cat"), "", 512)
    assert f["labels"] == f["input_ids"] and f["input_ids"][-1] == tok.eos_token_id


def test_truncation(tok):
    ex = reading.Example(1, messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "red " * 200}])
    f = examples.tokenize_example(tok, ex, templates.CHATML_TEMPLATE, 32)
    assert len(f["input_ids"]) == 32 and f["truncated"]


def test_malformed_jsonl_line_is_named(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "ok"}\n\n{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(DataError) as e:
        reading.load_examples(str(path))
    assert "d.jsonl, line 4 is not valid JSON" in str(e.value) and e.value.line == 4


def test_missing_column_is_named(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "a", "input": "x"}]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"d.jsonl, line 2: the column 'output' is missing"):
        reading.load_examples(str(path))


def test_bad_turns(tmp_path):
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}
    with pytest.raises(DataError, match="line 1: turn 2 has role='robot'"):
        reading.load_examples(str(write(tmp_path / "d.jsonl", json.dumps(row) + "\n")))
    row = {"messages": [{"role": "user", "content": "a"}]}
    with pytest.raises(DataError, match="no assistant turn"):
        reading.load_examples(str(write(tmp_path / "e.jsonl", json.dumps(row) + "\n")))


def test_empty_missing_and_mislabelled_files(tmp_path):
    with pytest.raises(DataError, match="is empty"):
        reading.load_examples(str(write(tmp_path / "d.jsonl", "\n\n")))
    with pytest.raises(DataError, match="does not exist"):
        reading.load_examples(str(tmp_path / "none.jsonl"))
    with pytest.raises(DataError, match="not a readable Parquet file"):
        reading.load_examples(str(write(tmp_path / "d.parquet", "instruction,output\n")))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="bin.jsonl, line 1, column 1: byte 0xff is not UTF-8"):
        reading.load_examples(str(tmp_path / "bin.jsonl"))
    with pytest.raises(DataError, match="looks like JSON Lines"):
        reading.load_examples(str(write(tmp_path / "d.json", '{"text": "a"}\n{"text": "b"}\n')))
    with pytest.raises(DataError, match="does not read"):
        reading.load_examples(str(write(tmp_path / "d.xml", "<a/>")))
    with pytest.raises(DataError, match="cannot tell the format"):
        reading.load_examples(str(write(tmp_path / "q.jsonl", '{"question": "a"}\n')))


def test_csv_json_parquet_txt(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write(tmp_path / "d.csv", 'instruction,input,output\n"multi\nline",,b\nc,,d\n')
    ex, fmt = reading.load_examples(str(tmp_path / "d.csv"))
    assert fmt == "alpaca" and [e.line for e in ex] == [3, 4]
    write(tmp_path / "d.json", json.dumps([{"text": "a"}, {"text": "b"}]))
    assert len(reading.load_examples(str(tmp_path / "d.json"))[0]) == 2
    pq.write_table(pa.Table.from_pylist([{"text": "a"}, {"text": "b"}, {"text": "c"}]), tmp_path / "d.parquet")
    assert len(reading.load_examples(str(tmp_path / "d.parquet"))[0]) == 3
    write(tmp_path / "d.txt", "para one\nstill one\n\n\npara two\n")
    ex, fmt = reading.load_examples(str(tmp_path / "d.txt"))
    assert fmt == "text" and [e.text for e in ex] == ["para one\nstill one", "para two"] and ex[1].line == 5
    write(tmp_path / "bad.csv", "instruction,output\na,b,c\n")
    with pytest.raises(DataError, match="bad.csv, line 2 has more fields"):
        reading.load_examples(str(tmp_path / "bad.csv"))


def test_split_is_deterministic_and_disjoint():
    a = examples.split_indices(100, 0.1, seed=1)
    assert a == examples.split_indices(100, 0.1, seed=1)
    assert a != examples.split_indices(100, 0.1, seed=2)
    train, val = a
    assert len(val) == 10 and not set(train) & set(val) and len(train) + len(val) == 100
    assert examples.split_indices(5, 0.0, 1) == ([0, 1, 2, 3, 4], [])
    assert len(examples.split_indices(3, 0.05, 1)[1]) == 1  # at least one validation row


def test_prepare_pack_and_fallback_template(tmp_path, tok):
    rows = [{"instruction": f"q{i}", "output": f"answer {i}"} for i in range(20)]
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    spec = DataSpec(path=str(path), max_seq_len=64, val_fraction=0.1, packing=True)
    tok.chat_template = None
    try:
        prepared = examples.prepare(spec, tok, seed=0)
    finally:
        from headtune.core.testing import CHATML

        tok.chat_template = CHATML
    assert prepared.stats.template_source.startswith("chatml")
    assert prepared.stats.val_examples == 2 and prepared.stats.train_examples == 18
    assert len(prepared.train) < 18 and all(len(p["input_ids"]) <= 64 for p in prepared.train)
    assert sum(len(p["input_ids"]) for p in prepared.train) > 64


def test_collator_pads_and_masks():
    batch = examples.Collator(pad_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_template_refusal_is_a_data_error_with_the_line(tmp_path, tok):
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    (tmp_path / "t.jinja").write_text(strict)
    row = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
        ]
    }
    path = write(tmp_path / "d.jsonl", json.dumps(row) + "\n")
    spec = DataSpec(path=str(path), chat_template=str(tmp_path / "t.jinja"), max_seq_len=64, val_fraction=0.0)
    with pytest.raises(DataError, match="d.jsonl, line 1: the chat template refused this conversation"):
        examples.prepare(spec, tok, seed=0)
