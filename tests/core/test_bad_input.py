"""Hostile but realistic input: each gets a clear message and exit 2, and nothing is written.

Encodings (a byte-order mark, a Latin-1 byte), plans nested absurdly deep, names too long for the
file system, an empty or unusable run folder, a garbage plan in a run folder, a reader that goes
away (``| head``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from headtune.core.cli import main
from headtune.core.data.reading import read_rows
from headtune.core.errors import DataError, PlanError
from headtune.core.plan import load_plan, plan_from_dict
from headtune.core.testing import ALPACA_ROWS, plan_dict

LONG = "/tmp/" + "x" * 5000  # longer than any file system's name limit


def write_plan(tmp_path, model, data, **over):
    d = plan_dict(model, data, tmp_path / "run", **over)
    path = tmp_path / "plan.yaml"
    plan_from_dict(d).save(path)
    return path


def test_a_byte_order_mark_is_not_data(tmp_path):
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in ALPACA_ROWS[:3]).encode())
    rows, _ = read_rows(str(data))
    assert [r.value for r in rows] == ALPACA_ROWS[:3]
    plan = tmp_path / "p.yaml"
    plan.write_bytes(b"\xef\xbb\xbfmodel: {name_or_path: org/m}\ndata: {path: x.jsonl}\n")
    assert load_plan(plan).model.name_or_path == "org/m"


def test_a_byte_that_is_not_utf8_is_named_by_line_and_column(tmp_path):
    data = tmp_path / "latin1.jsonl"
    lines = [json.dumps(r).encode() for r in ALPACA_ROWS[:3]] + [
        '{"instruction": "café", "output": "b"}'.encode("latin-1")
    ]
    data.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"latin1.jsonl, line 4, column 21: byte 0xe9 is not UTF-8") as e:
        read_rows(str(data))
    assert e.value.line == 4


def test_a_plan_nested_absurdly_deep_is_refused(tmp_path):
    plan = tmp_path / "deep.yaml"
    plan.write_text("a: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(PlanError, match="nested far too deeply"):
        load_plan(plan)


def test_names_too_long_for_the_file_system_exit_2(tmp_path, tiny_untied, alpaca_file, capsys):
    plan = write_plan(tmp_path, tiny_untied, alpaca_file)
    for args in (
        ["estimate", LONG],
        ["estimate", str(plan), "--set", f"model.name_or_path={LONG}"],
        ["train", str(plan), "--set", f"data.path={LONG}.jsonl"],
        ["train", str(plan), "--set", f"output.dir={LONG}"],
    ):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "unexpected error" not in err and ("cannot" in err), err
    assert not (tmp_path / "run").exists()


def test_an_unusable_run_folder_is_refused_before_anything_loads(tmp_path, tiny_untied, alpaca_file, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    plan = write_plan(tmp_path, tiny_untied, alpaca_file)
    assert main(["train", str(plan), "--set", f"output.dir={blocker}/run"]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(PlanError, match="output.dir: no run folder given"):
        plan_from_dict(plan_dict(tiny_untied, alpaca_file, ""))


def test_a_garbage_plan_in_a_run_folder_is_bad_input_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.yaml").write_text("{{{ not a plan")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML at line 1" in err and "unexpected" not in err


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("training.epochs", "-1", "training.epochs: must not be negative"),
        ("schema_version", "true", "schema_version: True is not a plan format version"),
    ],
)
def test_values_that_once_slipped_through(tmp_path, tiny_untied, alpaca_file, capsys, key, value, message):
    plan = write_plan(tmp_path, tiny_untied, alpaca_file)
    assert main(["estimate", str(plan), "--set", f"{key}={value}"]) == 2
    assert message in capsys.readouterr().err


def test_a_reader_that_goes_away_is_not_an_error(tmp_path, tiny_untied, alpaca_file):
    plan = write_plan(tmp_path, tiny_untied, alpaca_file)
    proc = subprocess.run(
        f"'{sys.executable}' -m headtune.core.cli estimate '{plan}' --json | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout == "{" and "Traceback" not in proc.stderr and "Broken" not in proc.stderr, proc.stderr


def test_weights_that_do_not_cover_the_model_are_refused(tmp_path, tiny_untied, alpaca_file, capsys):
    """A checkpoint without lm_head.weight would train on a random head: refused, naming it."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "no-head"
    shutil.copytree(tiny_untied, folder)
    weights = load_file(str(folder / "model.safetensors"))
    del weights["lm_head.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    plan = write_plan(tmp_path, folder, alpaca_file)
    assert main(["train", str(plan)]) == 2
    assert "do not cover the model: lm_head.weight is missing" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_truncated_model_weights_are_refused(tmp_path, tiny_untied, alpaca_file, capsys):
    import shutil

    folder = tmp_path / "cut"
    shutil.copytree(tiny_untied, folder)
    f = folder / "model.safetensors"
    with f.open("r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    plan = write_plan(tmp_path, folder, alpaca_file)
    assert main(["train", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is damaged" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_running_out_of_memory_while_loading_weights_gives_memory_advice(monkeypatch):
    from headtune.core.errors import OutOfMemoryError
    from headtune.core.model import sources

    def no_memory():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: not enough memory")

    with pytest.raises(OutOfMemoryError, match="ran out of memory while loading the weights of m.*4-bit"):
        sources._call(no_memory, "m", False, "weights")
