"""The few numbers of a model that memory depends on, read from its config.json alone (no weights).

A local folder's config.json, a cached hub model's, or a GGUF file's header: the estimate, the model
summary and the export's resource check all start here, so each stays a pure function of the config.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a decoder-only transformer that memory depends on."""

    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    model_type: str = "llama"
    max_positions: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelShape:
        cfg = dict(cfg.get("text_config") or {}, **{k: v for k, v in cfg.items() if k != "text_config"})
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            return cls(
                vocab=int(cfg["vocab_size"]),
                hidden=hidden,
                layers=int(cfg["num_hidden_layers"]),
                intermediate=int(cfg.get("intermediate_size") or 4 * hidden),
                heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                tied=bool(cfg.get("tie_word_embeddings", False)),
                model_type=str(cfg.get("model_type", "")),
                max_positions=int(cfg.get("max_position_embeddings") or 0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(
                f"The model's config.json lacks what the estimate needs ({exc}); only decoder-only "
                "transformers with the usual keys (vocab_size, hidden_size, ...) are supported."
            ) from None

    # -- parameter counts ----------------------------------------------------------------
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one block, by leaf name."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }

    @property
    def block_linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linear_shapes().values())

    @property
    def matrix_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden

    @property
    def total_params(self) -> int:
        return self.block_linear_params + self.matrix_params * (1 if self.tied else 2) + self.norm_params


def read_model_config(name_or_path: str) -> dict[str, Any]:
    """config.json of a local folder, a cached hub model, or a GGUF file's header (no weights).

    A hub model that is not cached but is in the catalog (``catalog.py``) gets the catalog's facts,
    so its estimate needs no network."""
    from .sources import resolve_source

    source = resolve_source(name_or_path, convert_gguf=False)  # clear errors for bad paths
    if source.kind == "folder":
        cfg = Path(source.folder) / "config.json"
        try:
            return json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"The model's {cfg} cannot be read as JSON ({exc}).") from None
    if source.kind == "gguf":
        try:
            return _gguf_config(Path(source.folder))
        except Exception as exc:
            raise ModelError(f"The GGUF file {source.folder} has no readable header ({exc}).") from None
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        if not isinstance(cached, str):
            from .catalog import catalog_entry

            listed = catalog_entry(name_or_path)
            if listed is not None:  # a catalog model: its facts ship with Headtune (works offline)
                return dict(listed.config)
            cached = hf_hub_download(name_or_path, "config.json")  # else download config.json alone
        return json.loads(Path(cached).read_text(encoding="utf-8"))
    except Exception as exc:
        from .sources import hub_error

        raise (
            hub_error(exc, name_or_path, False)
            or ModelError(f"Could not read the configuration of {name_or_path}: {exc}")
        ) from None


def _gguf_config(path: Path) -> dict[str, Any]:
    """The config transformers builds from a GGUF header: from the cached conversion when there
    is one, else parsed once per process (about 15 s for SmolLM2: the tokenizer is read too)."""
    from .sources import gguf_cache_folder

    cached = gguf_cache_folder(path) / "config.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    stat = path.stat()
    return dict(_parse_gguf_config(str(path.resolve()), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _parse_gguf_config(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    parsed = load_gguf_checkpoint(path, return_tensors=False)
    cfg = dict(parsed["config"])
    if "tie_word_embeddings" not in cfg:
        # GGUF stores no output matrix when the model ties it to the embedding.
        names = {t for t in parsed.get("tensors", {})} if isinstance(parsed.get("tensors"), dict) else set()
        cfg["tie_word_embeddings"] = "output.weight" not in names if names else True
    return cfg
