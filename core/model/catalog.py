"""The models Headtune lists in its catalog, with the config.json facts the estimate reads.

``resources/catalog.json`` holds a curated list of models people fine-tune on one home GPU (Llama
3.x, Qwen2.5/Qwen3, Gemma 2/3, Mistral 7B, Phi-3/3.5/4-mini, SmolLM2; base and instruct), each
with its licence, whether the hub gates it, and the keys of its config.json that ``ModelShape``
reads. So the list, its fit badges and ``headtune estimate`` of a listed model work offline,
before anything is downloaded. ``tools/refresh_catalog.py`` rewrites the facts from the hub.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..errors import ModelError

# The keys of a model's config.json the catalog keeps: what ModelShape.from_config reads.
CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "max_position_embeddings",
)


@dataclass(frozen=True)
class CatalogModel:
    """One listed hub model: its id, family, base or instruct, licence, gating and config facts."""

    id: str
    family: str
    variant: str  # "base" | "instruct"
    licence: str
    gated: bool
    config: dict[str, Any]


def catalog_text() -> str:
    return resources.files("headtune.resources").joinpath("catalog.json").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def catalog_models() -> tuple[CatalogModel, ...]:
    """The curated list, in its file's order (read once per process)."""
    return parse_catalog(catalog_text())


def parse_catalog(text: str) -> tuple[CatalogModel, ...]:
    try:
        doc = json.loads(text)
        out = []
        for i, row in enumerate(doc["models"]):
            missing = [k for k in CONFIG_KEYS if k not in row["config"]]
            if missing:
                raise ValueError(f"model {i} ({row.get('id')}) lacks {', '.join(missing)}")
            out.append(
                CatalogModel(
                    id=str(row["id"]),
                    family=str(row["family"]),
                    variant=str(row["variant"]),
                    licence=str(row["licence"]),
                    gated=bool(row["gated"]),
                    config={k: row["config"][k] for k in CONFIG_KEYS},
                )
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"The model catalog (resources/catalog.json) cannot be read: {exc}") from None
    return tuple(out)


def catalog_entry(repo_id: str) -> CatalogModel | None:
    """The listed model with this hub id (case as the hub spells it, or any case), if any."""
    for m in catalog_models():
        if m.id == repo_id or m.id.lower() == repo_id.lower():
            return m
    return None
