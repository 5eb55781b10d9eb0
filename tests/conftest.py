"""Shared fixtures: tiny real Llama models and a real BPE tokenizer, built locally (no hub)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on network retries in tests
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from headtune.core.testing import ALPACA_ROWS, build_model, build_tokenizer, write_jsonl


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_untied(tmp_path_factory, tokenizer_dir) -> Path:
    return build_model(tmp_path_factory.mktemp("untied"), tokenizer_dir, vocab_size=512, tied=False)


@pytest.fixture(scope="session")
def tiny_tied(tmp_path_factory, tokenizer_dir) -> Path:
    return build_model(tmp_path_factory.mktemp("tied"), tokenizer_dir, vocab_size=512, tied=True)


@pytest.fixture(scope="session")
def tiny_llama3_vocab(tmp_path_factory, tokenizer_dir) -> Path:
    """Untied, with the real Llama 3 vocabulary size (128,256 rows) and a small hidden size."""
    return build_model(tmp_path_factory.mktemp("v128k"), tokenizer_dir, vocab_size=128_256, tied=False, hidden=16)


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "data.jsonl", ALPACA_ROWS)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv(
        "HEADTUNE_CACHE",
        os.environ.get("HEADTUNE_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "headtune-cache"),
    )
