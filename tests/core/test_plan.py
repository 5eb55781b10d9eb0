"""The plan: defaults, YAML round trip, overrides, path resolution and validation messages."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from headtune.core.errors import PlanError
from headtune.core.plan import (
    SCHEMA_VERSION,
    Plan,
    all_keys,
    apply_overrides,
    choices_for,
    help_for,
    load_plan,
    plan_from_dict,
)


def minimal(tmp_path, **extra):
    d = {
        "model": {"name_or_path": "org/model"},
        "data": {"path": str(tmp_path / "d.jsonl")},
        "output": {"dir": str(tmp_path / "run")},
    }
    for k, v in extra.items():
        d.setdefault(k, {}).update(v)
    return d


def test_every_key_has_help_text():
    keys = all_keys()
    assert "embeddings.mode" in keys and "training.max_steps" in keys and "output.dir" in keys
    for key in keys:
        assert len(help_for(key)) > 10, key
    assert choices_for("model.quantization") == ("none", "8bit", "4bit")
    assert choices_for("embeddings.mode") == ("full", "tokens", "lora")


def test_yaml_round_trip(tmp_path):
    plan = plan_from_dict(
        minimal(
            tmp_path,
            embeddings={"train_embeddings": True, "mode": "tokens", "token_ids": [3, 4], "new_tokens": ["<x>"]},
        )
    )
    path = tmp_path / "plan.yaml"
    plan.save(path)
    again = load_plan(path)
    assert again == plan
    assert yaml.safe_load(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert not (tmp_path / "plan.yaml.tmp").exists()


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(PlanError) as e:
        plan_from_dict(minimal(tmp_path, training={"batch_sise": 2}))
    assert "training.batch_sise" in str(e.value) and "batch_size" in str(e.value)
    assert e.value.key == "training.batch_sise"


@pytest.mark.parametrize(
    "section,key,value,expected",
    [
        ("training", "batch_size", "four", "training.batch_size: expected an integer"),
        ("training", "batch_size", 0, "training.batch_size: must be at least 1"),
        (
            "model",
            "quantization",
            "3bit",
            "model.quantization: '3bit' is not allowed; use one of 'none', '8bit', '4bit'",
        ),
        ("embeddings", "train_embeddings", "yes", "embeddings.train_embeddings: expected true or false"),
        ("embeddings", "token_ids", [1, "x"], "embeddings.token_ids[1]: expected an integer"),
        ("data", "val_fraction", 0.9, "data.val_fraction: must be between 0 and 0.5"),
        ("adapter", "target_modules", "everything", "adapter.target_modules: 'everything' is not a preset"),
    ],
)
def test_bad_values_name_key_and_allowed(tmp_path, section, key, value, expected):
    with pytest.raises(PlanError) as e:
        plan_from_dict(minimal(tmp_path, **{section: {key: value}}))
    assert expected in str(e.value)


def test_impossible_combinations(tmp_path):
    with pytest.raises(PlanError, match="tokens mode trains only listed rows"):
        plan_from_dict(minimal(tmp_path, embeddings={"train_embeddings": True, "mode": "tokens"}))
    with pytest.raises(PlanError, match="neither embeddings.train_embeddings nor"):
        plan_from_dict(minimal(tmp_path, embeddings={"mode": "tokens", "token_ids": [1]}))
    with pytest.raises(PlanError, match="Set embeddings.mode to tokens"):
        plan_from_dict(minimal(tmp_path, embeddings={"train_embeddings": True, "mode": "full", "token_ids": [1]}))
    with pytest.raises(PlanError, match="model.name_or_path: no model given"):
        plan_from_dict({"data": {"path": "x.jsonl"}})


def test_bitsandbytes_missing_is_refused(tmp_path, monkeypatch):
    from headtune.core.plan import checks as plan_mod

    monkeypatch.setattr(plan_mod, "_BNB_PROBLEM", ["is not installed"])
    with pytest.raises(PlanError, match="model.quantization: 4bit needs bitsandbytes, which is not installed"):
        plan_from_dict(minimal(tmp_path, model={"quantization": "4bit"}))
    with pytest.raises(PlanError, match="training.optimizer: adamw_8bit needs bitsandbytes"):
        plan_from_dict(minimal(tmp_path, training={"optimizer": "adamw_8bit"}))


def test_overrides_parse_yaml_values(tmp_path):
    d = apply_overrides(
        minimal(tmp_path),
        [
            "training.max_steps=20",
            "data.max_seq_len=512",
            "embeddings.token_ids=[5, 6]",
            "embeddings.learning_rate=1e-5",
            "embeddings.train_embeddings=true",
            "embeddings.mode=tokens",
        ],
    )
    plan = plan_from_dict(d)
    assert plan.training.max_steps == 20 and plan.data.max_seq_len == 512
    assert plan.embeddings.token_ids == [5, 6] and plan.embeddings.learning_rate == 1e-5
    with pytest.raises(PlanError, match="--set training.nope: unknown key"):
        apply_overrides({}, ["training.nope=1"])
    with pytest.raises(PlanError, match="expected key=value"):
        apply_overrides({}, ["training.max_steps"])


def test_relative_paths_resolve_against_plan_folder(tmp_path):
    folder = tmp_path / "plans"
    folder.mkdir()
    (folder / "data.jsonl").write_text("{}\n")
    (folder / "plan.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                "data": {"path": "data.jsonl"},
                "output": {"dir": "runs/a"},
            }
        )
    )
    plan = load_plan(folder / "plan.yaml")
    assert plan.data.path == str(folder / "data.jsonl")
    assert plan.output.dir == str(folder / "runs" / "a")
    assert plan.model.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id stays a hub id


def test_schema_version(tmp_path):
    with pytest.raises(PlanError, match="written by a newer Headtune"):
        plan_from_dict({**minimal(tmp_path), "schema_version": SCHEMA_VERSION + 1})
    # A plan without a version is read as the current format.
    assert plan_from_dict(minimal(tmp_path)).schema_version == SCHEMA_VERSION


def test_missing_and_invalid_plan_files(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(PlanError, match="not valid YAML at line"):
        load_plan(bad)


def test_defaults_are_sensible():
    p = Plan()
    assert p.model.quantization == "none" and p.training.gradient_checkpointing
    assert dataclasses.fields(p.embeddings)[0].metadata["help"]


def test_command_line_paths_mean_the_current_folder(tmp_path, monkeypatch):
    folder = tmp_path / "plans"
    folder.mkdir()
    (folder / "plan.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": "org/m"}, "data": {"path": "x.jsonl"}}))
    here = tmp_path / "work"
    here.mkdir()
    (here / "mine.jsonl").write_text("{}\n")
    monkeypatch.chdir(here)
    plan = load_plan(folder / "plan.yaml", ["data.path=mine.jsonl", "output.dir=runs/x"])
    assert plan.data.path == str(here / "mine.jsonl") and plan.output.dir == str(here / "runs" / "x")
    assert load_plan(folder / "plan.yaml").data.path == str(folder / "x.jsonl")


def test_plan_must_be_a_mapping_and_numbers_finite(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- model\n- data\n")
    with pytest.raises(PlanError, match="must hold a mapping of sections"):
        load_plan(bad)
    with pytest.raises(PlanError, match="must be a mapping"):
        plan_from_dict(["x"])
    for value in (".inf", "nan"):
        with pytest.raises(PlanError, match="training.epochs: .* is not a finite number"):
            plan_from_dict(apply_overrides(minimal(tmp_path), [f"training.epochs={value}"]))
