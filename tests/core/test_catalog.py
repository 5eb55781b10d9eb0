"""The model catalog: its shipped facts, the rows it lists, and fit badges that are the estimate."""

from __future__ import annotations

import json
import re

import pytest

from headtune.core.cli import main
from headtune.core.estimate import GiB, ModelShape, read_model_config
from headtune.core.model.catalog import CONFIG_KEYS, catalog_entry, catalog_models, catalog_text, parse_catalog
from headtune.core.tools.catalog import (
    compute_badges,
    filter_entries,
    fit_filters,
    list_entries,
    variants,
)
from headtune.core.tools.demo import demo_plan

# Parameters each family's size in its name stands for (the name says "8B"; 8.03 B are counted).
SIZE = re.compile(r"-(\d+(?:\.\d+)?)([MBmb])(?:-|$)")


def test_catalog_covers_the_families_with_whole_facts():
    models = catalog_models()
    assert len(models) >= 40
    assert len({m.id for m in models}) == len(models)
    families = {m.family.split()[0].rstrip("-0123456789.") for m in models}
    assert {"Llama", "Qwen2.5", "Qwen3", "Gemma", "Mistral", "Phi", "SmolLM2"} <= families | {m.family for m in models}
    assert {m.variant for m in models} == {"base", "instruct"}
    for m in models:
        assert set(m.config) == set(CONFIG_KEYS)
        shape = ModelShape.from_config(m.config)
        size = SIZE.search(m.id)
        if size:
            stated = float(size.group(1)) * (1e6 if size.group(2).lower() == "m" else 1e9)
        else:
            assert "-mini-" in m.id, m.id
            stated = 3.8e9  # Phi's "mini"
        # The counted parameters are about what the name states (a typo in a fact shows here; gemma-2-2b
        # really has 2.6 B).
        assert 0.8 * stated < shape.total_params < 1.35 * stated, (m.id, shape.total_params)
        assert shape.heads % shape.kv_heads == 0, m.id


def test_a_bad_catalog_file_is_named():
    from headtune.core.errors import ModelError

    good = json.loads(catalog_text())
    del good["models"][3]["config"]["vocab_size"]
    with pytest.raises(ModelError, match=r"catalog.json.*model 3 \(meta-llama/\S+\) lacks vocab_size$"):
        parse_catalog(json.dumps(good))


def test_a_listed_model_is_estimated_offline_from_the_catalog(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    cfg = read_model_config("meta-llama/Llama-3.1-8B-Instruct")  # not cached, no network in tests
    assert cfg == catalog_entry("meta-llama/Llama-3.1-8B-Instruct").config
    assert cfg["vocab_size"] == 128_256 and cfg["tie_word_embeddings"] is False


@pytest.mark.parametrize(
    "model, rows",
    [("meta-llama/Llama-3.2-3B-Instruct", False), ("Qwen/Qwen3-4B", True), ("google/gemma-2-2b-it", False)],
)
def test_badges_equal_headtune_estimate_for_the_same_plan_and_card(model, rows, monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    common = [f"model.name_or_path={model}", "data.max_seq_len=1024", "training.batch_size=2"]
    if rows:  # a plan that lists its own rows
        common += ["embeddings.mode=tokens", "embeddings.token_ids=[5,6,7]"]
    plan = demo_plan(common)
    listed = [e for e in list_entries() if e.name == model]
    badges = compute_badges(plan, listed, "cuda", 12 * GiB)
    verdicts = set()
    for badge in badges.rows[model]:
        args = ["estimate", "--demo", "--worst-case", "--device", "cuda", "--gpu-memory", "12GiB", "--json"]
        for o in [*common, *badge.overrides]:
            args += ["--set", o]
        assert main(args) == 0
        printed = json.loads(capsys.readouterr().out)
        assert (badge.total_bytes, badge.fit) == (printed["total_bytes"], printed["fit"]), badge.variant.label
        verdicts.add(badge.fit)
    assert len({b.total_bytes for b in badges.rows[model]}) == len(badges.rows[model])  # each variant differs


def test_variants_follow_the_registry_and_the_plan_rows():
    from headtune.core.embeddings import MODES

    plan = demo_plan()
    keys = [v.key for v in variants(plan)]
    assert keys == ["lora_only", *MODES]
    tokens = next(v for v in variants(plan) if v.key == "tokens")
    assert len(tokens.change["embeddings.token_ids"]) == 256 and "256 rows" in tokens.label
    with_rows = demo_plan(["embeddings.mode=tokens", "embeddings.token_ids=[1,2,3]"])
    by_key = {v.key: v for v in variants(with_rows)}
    assert "embeddings.token_ids" not in by_key["tokens"].change  # the plan's own rows are estimated
    assert by_key["full"].change["embeddings.token_ids"] == []  # rows belong to the row-wise mode only


def test_bigger_cards_and_smaller_plans_change_the_badges():
    plan = demo_plan()
    entries = [e for e in list_entries() if e.name == "meta-llama/Llama-3.1-8B-Instruct"]
    small = compute_badges(plan, entries, "cuda", 8 * GiB).rows[entries[0].name]
    big = compute_badges(plan, entries, "cuda", 80 * GiB).rows[entries[0].name]
    assert all(b.fit == "no" for b in small) and all(b.fit == "fits" for b in big)
    quantized = compute_badges(demo_plan(["model.quantization=4bit"]), entries, "cuda", 8 * GiB)
    assert quantized.rows[entries[0].name][0].total_bytes < small[0].total_bytes
    assert "LoRA only" in compute_badges(plan, entries, "cuda", 8 * GiB).summary(entries[0].name)


def test_search_size_and_fit_filters():
    plan = demo_plan()
    entries = list_entries()
    badges = compute_badges(plan, entries, "cuda", 8 * GiB)
    names = [e.name for e in filter_entries(entries, badges, "qwen3 instruct")]
    assert names and all("Qwen3" in n for n in names)
    small = filter_entries(entries, badges, size="under 1 B")
    assert small and all(e.params < 1e9 for e in small)
    big = filter_entries(entries, badges, size="9 B and more")
    assert big and all(e.params >= 9e9 for e in big)
    fits = filter_entries(entries, badges, fit=fit_filters(badges.variants)["fits: + full"])
    assert fits and len(fits) < len(entries)
    for e in fits:
        assert next(b for b in badges.rows[e.name] if b.variant.key == "full").fit in ("fits", "tight")
    assert len(filter_entries(entries, badges, fit="")) >= len(fits)


def test_cached_hub_models_and_recent_folders_join_the_list(monkeypatch, tmp_path, tiny_tied):
    from huggingface_hub import constants

    snap = tmp_path / "hub" / "models--someone--tiny" / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((tiny_tied / "config.json").read_text())
    (snap / "model.safetensors").write_bytes(b"x")
    (tmp_path / "hub" / "models--someone--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny" / "refs" / "main").write_text("b" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    entries = {e.name: e for e in list_entries([str(tiny_tied), "/no/such/folder"])}
    cached, recent = entries["someone/tiny"], entries[str(tiny_tied)]
    assert cached.origin == "cache" and cached.downloaded and cached.shape is not None
    assert recent.origin == "recent" and recent.shape is not None and recent.shape.tied
    assert "/no/such/folder" not in entries
    assert not entries["Qwen/Qwen3-4B"].downloaded


def test_refresh_tool_rewrites_facts_from_the_hub_config(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hub_server import FakeHub, Repo

    listed = catalog_entry("Qwen/Qwen3-4B")
    hub_config = {  # as the hub serves it: more keys than the estimate reads
        "architectures": ["Qwen3ForCausalLM"],
        **listed.config,
        "rope_theta": 1000000,
        "torch_dtype": "bfloat16",
    }
    hub = FakeHub().start()
    hub.repos["Qwen/Qwen3-4B"] = Repo({"config.json": json.dumps(hub_config).encode()}, gated=True)
    hub.tokens_with_access.add("hf_ok")
    doc = json.loads(catalog_text())
    row = next(r for r in doc["models"] if r["id"] == "Qwen/Qwen3-4B")
    row["config"]["vocab_size"] = 1  # stale facts
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(doc))
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    env["HF_TOKEN"] = "hf_ok"
    tool = Path(__file__).resolve().parents[2] / "tools" / "refresh_catalog.py"
    try:
        done = subprocess.run(
            [sys.executable, str(tool), "--catalog", str(catalog), "--only", "Qwen/Qwen3-4B"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        hub.stop()
    assert done.returncode == 0, done.stderr
    assert "vocab_size: 1 -> 151936" in done.stdout and "gated: False -> True" in done.stdout
    refreshed = next(m for m in parse_catalog(catalog.read_text()) if m.id == "Qwen/Qwen3-4B")
    assert refreshed.config == listed.config and refreshed.gated
    assert len(parse_catalog(catalog.read_text())) == len(catalog_models())
