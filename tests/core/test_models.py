"""Model sources and the messages a user sees when a model cannot be had."""

from __future__ import annotations

import json

import pytest

from headtune.core.errors import ModelError
from headtune.core.model import sources as models


def test_local_folder_and_file_problems(tmp_path, tiny_tied):
    assert models.resolve_source(str(tiny_tied)).kind == "folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        models.resolve_source(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="does not exist"):
        models.resolve_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file, but not a .gguf model"):
        models.resolve_source(str(tmp_path / "weights.bin"))


def test_hub_id_absent_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = models.resolve_source("headtune-tests/no-such-model")
    assert source.kind == "hub"
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        models.load_tokenizer(source)


def test_remote_code_needed(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "headtune_custom",
                "architectures": ["CustomForCausalLM"],
                "auto_map": {
                    "AutoConfig": "configuration_custom.CustomConfig",
                    "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
                },
            }
        )
    )
    with pytest.raises(ModelError, match="needs its own Python code to load.*trust_remote_code: true"):
        models.load_config(models.resolve_source(str(folder)))


def test_gated_message_explains_token():
    class GatedRepoError(Exception):
        pass

    err = models.hub_error(GatedRepoError("Access to model meta-llama/x is restricted"), "meta-llama/x", False)
    assert err is not None and "HF_TOKEN" in str(err) and "hf auth login" in str(err)


def test_tied_and_module_names(tiny_tied, tiny_untied):
    from transformers import AutoModelForCausalLM

    tied = AutoModelForCausalLM.from_pretrained(tiny_tied)
    untied = AutoModelForCausalLM.from_pretrained(tiny_untied)
    assert models.is_tied(tied) and not models.is_tied(untied)
    assert models.embedding_module_names(untied) == ("model.embed_tokens", "lm_head")


def test_hub_dataset_offline_is_a_data_error(monkeypatch):
    from headtune.core.data.reading import load_examples
    from headtune.core.errors import DataError

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="neither a local file nor loadable from the hub"):
        load_examples("headtune-tests/no-such-dataset")
