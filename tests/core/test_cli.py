"""The ``headtune`` command: help, exit codes, messages without tracebacks, a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from headtune.core.cli import main
from headtune.core.testing import ALPACA_ROWS, plan_dict, write_jsonl


def write_plan(tmp_path, model_dir, data_file, **sections):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan_dict(model_dir, data_file, tmp_path / "run", **sections)))
    return path


def test_help_lists_commands_and_plan_keys(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("gui", "train", "estimate", "export", "inspect"):
        assert cmd in out
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--set KEY=VALUE" in out and "--resume RUN_DIR" in out
    assert "embeddings.mode [full | tokens | lora]" in out and "training.max_steps" in out


def test_version_parses(capsys):
    assert main(["--version"]) == 0
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert lines["headtune"] == "0.1.0" and lines["torch"].startswith("2.") and "transformers" in lines


def test_train_runs_and_overrides(tmp_path, tiny_untied, alpaca_file, capsys):
    plan = write_plan(tmp_path, tiny_untied, alpaca_file)
    assert main(["train", str(plan), "--set", "training.max_steps=2", "--set", "data.max_seq_len=48"]) == 0
    out = capsys.readouterr().out
    assert "step 2/2" in out and "Finished 2 steps" in out
    saved = yaml.safe_load((tmp_path / "run" / "plan.yaml").read_text())
    assert saved["training"]["max_steps"] == 2 and saved["data"]["max_seq_len"] == 48


def test_bad_plan_exit_2_one_paragraph(tmp_path, tiny_untied, alpaca_file, capsys):
    plan = write_plan(tmp_path, tiny_untied, alpaca_file)
    assert main(["train", str(plan), "--set", "training.batch_size=-1"]) == 2
    err = capsys.readouterr().err
    assert "training.batch_size: must be at least 1" in err and "Traceback" not in err
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_bad_dataset_exit_2_names_line(tmp_path, tiny_untied, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ALPACA_ROWS[:5], raw_lines=["not json"])
    plan = write_plan(tmp_path, tiny_untied, data)
    assert main(["train", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "d.jsonl, line 6 is not valid JSON" in err and "Traceback" not in err


def test_missing_model_exit_2(tmp_path, alpaca_file, capsys):
    plan = write_plan(tmp_path, tmp_path / "nope", alpaca_file)
    assert main(["train", str(plan)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_failure_during_run_exit_1_and_debug_traceback(tmp_path, tiny_untied, alpaca_file, capsys, monkeypatch):
    from headtune.core.training import trainer as trainer_mod

    def boom(self, *a, **k):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(trainer_mod.HeadtuneTrainer, "training_step", boom)
    plan = write_plan(tmp_path, tiny_untied, alpaca_file)
    assert main(["train", str(plan)]) == 1
    err = capsys.readouterr().err
    assert "Training failed at step 0: RuntimeError: simulated kernel failure" in err and "Traceback" not in err
    # A bug, not bad input: said so, with the traceback kept in the run folder for the report.
    log = tmp_path / "run" / "error-traceback.txt"
    assert "unexpected error" in err and str(log) in err and "please report it" in err
    assert "simulated kernel failure" in log.read_text() and "Traceback" in log.read_text()
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "failed" and events[-1]["error_type"] == "InternalError"
    plan2 = tmp_path / "p2.yaml"
    plan2.write_text(plan.read_text().replace(str(tmp_path / "run"), str(tmp_path / "run2")))
    assert main(["--debug", "train", str(plan2)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_usage_errors(capsys):
    assert main(["train"]) == 2
    assert "give a plan file, --demo, or --resume" in capsys.readouterr().err
    assert main(["export", "missing-run", "--format", "adapter", "--out", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["estimate", "missing.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "plan.yaml", "--demo"]) == 2
    assert "either a plan file or --demo" in capsys.readouterr().err


def test_resume_from_command_line(tmp_path, tiny_untied, alpaca_file, capsys):
    plan = write_plan(tmp_path, tiny_untied, alpaca_file, training={"max_steps": 2, "save_every": 2})
    assert main(["train", str(plan)]) == 0
    assert main(["train", "--resume", str(tmp_path / "run"), "--set", "training.max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert "step 3/3" in out and "step 1/3" not in out.split("Finished 2 steps")[1]


def test_console_script_installed():
    """The real entry point runs in a fresh process (exit code and output from the installed script)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "headtune.core.cli", "--version"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.startswith("headtune ")


def _events_json(args, cwd, stdin_lines=(), stop_after_steps=None):
    """Run ``headtune train --events-json``; returns (exit code, events, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "headtune.core.cli", "train", "--events-json", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    events, steps = [], 0
    for line in proc.stdout:
        events.append(json.loads(line))  # nothing but JSON on stdout
        if events[-1]["type"] == "step":
            steps += 1
            if stop_after_steps is not None and steps == stop_after_steps:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
    proc.stdin.close()
    return proc.wait(timeout=120), events, proc.stderr.read()


@pytest.mark.slow
def test_events_json_streams_every_event_and_stops_on_request(tmp_path, tiny_untied, alpaca_file):
    plan = write_plan(tmp_path, tiny_untied, alpaca_file, training={"max_steps": 500})
    code, events, err = _events_json([str(plan)], tmp_path, stop_after_steps=2)
    assert code == 0, err
    types = [e["type"] for e in events]
    assert types[0] == "log" and "started" in types and types[-1] == "stopped", types
    stopped = events[-1]
    assert 2 <= stopped["step"] < 500 and stopped["checkpoint_path"]
    # The stopped run resumes from the command line in the same mode.
    code, events, err = _events_json(["--resume", str(tmp_path / "run"), "--set", "training.max_steps=6"], tmp_path)
    assert code == 0, err
    assert [e["step"] for e in events if e["type"] == "step"][0] == stopped["step"] + 1
    assert events[-1]["type"] == "finished" and events[-1]["step"] == 6


@pytest.mark.slow
def test_events_json_reports_bad_input_as_a_failed_event(tmp_path, tiny_untied, alpaca_file):
    plan = write_plan(tmp_path, tiny_untied, alpaca_file, training={"batch_size": 0})
    code, events, err = _events_json([str(plan)], tmp_path)
    assert code == 2
    assert [e["type"] for e in events] == ["failed"]
    assert "training.batch_size" in events[0]["message"] and "Traceback" not in err


def test_json_modes_end_a_failure_with_a_failed_line(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    assert main(["export", missing, "--format", "adapter", "--out", str(tmp_path / "out"), "--progress-json"]) == 2
    captured = capsys.readouterr()
    last = json.loads(captured.out.strip().splitlines()[-1])
    assert last["type"] == "failed" and last["error_type"] and missing in last["message"]
    assert missing in captured.err  # the person at a terminal still reads it there
    assert main(["inspect", missing, "--json"]) == 2
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["type"] == "failed" and missing in last["message"]
    # Without a JSON mode, stdout stays empty.
    assert main(["export", missing, "--format", "adapter", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().out == ""
