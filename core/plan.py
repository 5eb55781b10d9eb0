"""The plan: one validated configuration object for a whole fine-tuning run.

The window edits it, ``headtune estimate`` reads it, ``headtune train`` runs it, and a copy
(``plan.yaml``, fully resolved) is saved in every run folder. Each field carries
``metadata={"help": ...}``; the same text becomes CLI help and GUI tooltips.

Loading is strict on purpose: unknown keys, wrong types, out-of-range values and impossible
combinations raise ``PlanError`` naming the dotted key and what is allowed, before any model
or data is touched. Relative paths resolve against the plan file's folder.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from .errors import PlanError

SCHEMA_VERSION = 1

Quantization = Literal["none", "8bit", "4bit"]
DType = Literal["bfloat16", "float16", "float32"]
AttnImpl = Literal["sdpa", "eager", "flash_attention_2"]
DataFormat = Literal["auto", "alpaca", "messages", "sharegpt", "text"]
EmbeddingsMode = Literal["full", "tokens", "lora"]
InitUntrained = Literal["none", "mean"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit"]
LossKind = Literal["standard", "chunked", "fused"]
MatrixDType = Literal["model", "float32", "peft"]
MatrixStates = Literal["auto", "8bit", "paged_8bit", "32bit", "trainer"]

# Named groups of LoRA target modules, expanded against the model's module names.
TARGET_PRESETS = ("attention", "attention+mlp", "all-linear")


def _f(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A dataclass field with help text (mutable defaults copied per instance)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: copy.deepcopy(value), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelSpec:
    name_or_path: str = _f("", "The base model: a hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct), "
                               "a local folder with config.json, or a .gguf file (de-quantized once and cached).")
    quantization: Quantization = _f("none", "How the frozen base weights are stored: none (16/32-bit), "
                                            "8bit (bitsandbytes LLM.int8) or 4bit (NF4, i.e. QLoRA).")
    double_quant: bool = _f(True, "4-bit only: also quantize the quantization constants (saves ~0.4 bit per weight).")
    dtype: DType = _f("bfloat16", "Precision of the base weights and of computation: bfloat16, float16 or float32.")
    attn_implementation: AttnImpl = _f("sdpa", "Attention kernel: sdpa (PyTorch, memory-efficient), eager, "
                                               "or flash_attention_2 (needs the flash-attn package and a GPU).")
    trust_remote_code: bool = _f(False, "Allow a model's own Python code from its repository to run. Only "
                                        "enable for models whose code you trust.")


@dataclass
class DataSpec:
    path: str = _f("", "Training data: a .jsonl, .json, .csv, .parquet or .txt file, or a hub dataset id.")
    format: DataFormat = _f("auto", "Row format: alpaca (instruction/input/output), messages (role/content), "
                                    "sharegpt (from/value), text (raw text, every token trained), or auto to detect.")
    chat_template: str = _f("model", "Chat template: 'model' (the tokenizer's own; ChatML when it has none), "
                                     "a built-in name (chatml, llama3), or a path to a Jinja file.")
    max_seq_len: int = _f(1024, "Longest example in tokens; longer ones are truncated.")
    val_fraction: float = _f(0.05, "Share of rows held out for validation (deterministic split); 0 disables.")
    packing: bool = _f(False, "Concatenate short examples into sequences of max_seq_len tokens (faster on "
                              "many short rows; examples can attend to the previous one in a pack).")


@dataclass
class AdapterSpec:
    r: int = _f(16, "LoRA rank: size of the low-rank update; higher learns more and uses more memory.")
    alpha: float = _f(32.0, "LoRA alpha: the update is scaled by alpha / r.")
    dropout: float = _f(0.05, "Dropout on the LoRA input during training (0 to 0.9).")
    target_modules: Union[str, list[str]] = _f(
        "all-linear", "Which layers get LoRA: attention, attention+mlp, all-linear, or an explicit list of "
                      "module names (e.g. [q_proj, v_proj]).")


@dataclass
class EmbeddingsSpec:
    train_embeddings: bool = _f(False, "Train the token embedding matrix (embed_tokens).")
    train_lm_head: bool = _f(False, "Train the language-modeling head (lm_head). On a model with tied "
                                    "embeddings both are one matrix, trained once.")
    mode: EmbeddingsMode = _f("full", "How to train them: full (a trainable copy of the whole matrix), tokens "
                                      "(only the rows in token_ids and new_tokens), or lora (a low-rank update).")
    learning_rate: Union[float, None] = _f(None, "Learning rate for embedding/head parameters (own parameter "
                                                 "group); empty = the training learning rate.")
    token_ids: list[int] = _f([], "Token ids whose rows are trained in tokens mode.")
    new_tokens: list[str] = _f([], "Token strings to add to the tokenizer; their rows start at the mean of "
                                   "the existing rows and are trained in every mode.")
    init_untrained: InitUntrained = _f("none", "Before training, set embedding/head rows that look untrained "
                                               "(see `headtune inspect`) to the mean of the other rows: mean, or "
                                               "none to leave them.")


@dataclass
class TrainingSpec:
    batch_size: int = _f(4, "Examples per device per step.")
    grad_accum: int = _f(1, "Gradient accumulation steps (effective batch = batch_size x grad_accum).")
    learning_rate: float = _f(2e-4, "Peak learning rate.")
    lr_scheduler: Scheduler = _f("cosine", "Learning-rate schedule after warm-up.")
    warmup_ratio: float = _f(0.03, "Share of steps spent warming the learning rate up (0 to 0.5).")
    weight_decay: float = _f(0.0, "AdamW weight decay (not applied to biases and norms).")
    max_grad_norm: float = _f(1.0, "Clip gradients to this norm; 0 disables clipping.")
    epochs: float = _f(1.0, "Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = _f(0, "Stop after this many optimizer steps; > 0 wins over epochs.")
    gradient_checkpointing: bool = _f(True, "Recompute activations in backward: much less memory, ~30% slower.")
    optimizer: Optimizer = _f("adamw", "adamw (32-bit states), adamw_8bit or paged_adamw_8bit (bitsandbytes; "
                                       "paged needs a CUDA GPU).")
    eval_every: int = _f(50, "Evaluate on the validation split every N steps (and at start and end); 0 disables.")
    save_every: int = _f(100, "Save a resumable checkpoint every N steps; 0 disables (the adapter is still "
                              "saved at the end and on stop).")
    save_total_limit: int = _f(2, "Keep at most this many checkpoints (oldest deleted first).")
    seed: int = _f(42, "Random seed for initialisation, shuffling and the validation split.")


@dataclass
class MemorySpec:
    loss: LossKind = _f("chunked", "How the loss is computed: chunked (a few hundred tokens at a time, so the "
                                   "batch x seq x vocab logits never exist; same loss), fused (Liger-Kernel or Cut "
                                   "Cross-Entropy on a CUDA GPU when installed, else chunked), or standard (the "
                                   "model's own loss over full logits).")
    loss_chunk_tokens: int = _f(256, "Tokens per chunk of the chunked loss: each chunk's logits take "
                                     "chunk x vocab x 6 bytes for a moment.")
    frozen_copy: bool = _f(False, "Keep the frozen original of a matrix trained in full beside its trainable copy "
                                  "(PEFT's default; only needed to switch the adapter off during training). Off: one "
                                  "matrix in memory; the saved adapter is the same.")
    matrix_dtype: MatrixDType = _f("model", "Precision of the embedding/head matrices: model (the model dtype, "
                                            "frozen and trained; 16-bit master weights with bf16 models), float32 "
                                            "(trained matrices as fp32 master weights: steadier, twice the memory), or "
                                            "peft (as PEFT prepares 4/8-bit models: every matrix, even frozen, in fp32).")
    matrix_states: MatrixStates = _f("auto", "Optimizer states of matrices trained in full: auto (the precision of "
                                             "training.optimizer), 8bit (bitsandbytes blockwise, 2 bytes a value), "
                                             "paged_8bit (8-bit, paged to CPU memory when the GPU is full; CUDA "
                                             "only), 32bit, or trainer (the Trainer's rule: 32-bit for the embedding "
                                             "under an 8-bit optimizer).")
    fused_step: bool = _f(False, "Update each fully trained matrix inside backward as soon as its gradient is "
                                 "complete, then drop the gradient, so the matrices' gradients never all exist. "
                                 "Exact; only with training.grad_accum 1 and training.max_grad_norm 0 (no clipping), "
                                 "not with float16; otherwise it stays off and the estimate says so.")


@dataclass
class OutputSpec:
    dir: str = _f("runs/run", "The run folder: plan, events, checkpoints and adapter go here. Must be new or "
                              "empty unless resuming.")


@dataclass
class Plan:
    schema_version: int = _f(SCHEMA_VERSION, "Version of the plan format (set by Headtune).")
    model: ModelSpec = field(default_factory=ModelSpec, metadata={"help": "The base model and how it is loaded."})
    data: DataSpec = field(default_factory=DataSpec, metadata={"help": "The dataset and how it is tokenised."})
    adapter: AdapterSpec = field(default_factory=AdapterSpec, metadata={"help": "LoRA settings."})
    embeddings: EmbeddingsSpec = field(default_factory=EmbeddingsSpec,
                                       metadata={"help": "Training the token embeddings and the LM head."})
    training: TrainingSpec = field(default_factory=TrainingSpec, metadata={"help": "Optimisation settings."})
    memory: MemorySpec = field(default_factory=MemorySpec,
                               metadata={"help": "Lean memory: the loss, the matrices' precision and optimizer states."})
    output: OutputSpec = field(default_factory=OutputSpec, metadata={"help": "Where the run is written."})

    # -- conversions -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as YAML atomically (temp file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_yaml(), encoding="utf-8")
        os.replace(tmp, path)

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    @property
    def embeddings_trained(self) -> bool:
        e = self.embeddings
        return e.train_embeddings or e.train_lm_head or bool(e.new_tokens)


# -- help text ---------------------------------------------------------------------------

def help_for(dotted: str) -> str:
    """The help text of a dotted key, e.g. ``help_for("embeddings.mode")``."""
    cls: Any = Plan
    f = None
    for part in dotted.split("."):
        fields = {x.name: x for x in dataclasses.fields(cls)}
        if part not in fields:
            raise KeyError(dotted)
        f = fields[part]
        cls = _hints(cls)[part]
    return f.metadata.get("help", "") if f is not None else ""


def all_keys() -> list[str]:
    """Every leaf key of the plan as a dotted path (for CLI help and the GUI)."""
    out = []
    for sec in dataclasses.fields(Plan):
        sub = _hints(Plan)[sec.name]
        if dataclasses.is_dataclass(sub):
            out += [f"{sec.name}.{f.name}" for f in dataclasses.fields(sub)]
        else:
            out.append(sec.name)
    return out


def choices_for(dotted: str) -> tuple[str, ...] | None:
    """The allowed values of a Literal-typed key, or None."""
    cls: Any = Plan
    tp: Any = None
    for part in dotted.split("."):
        tp = _hints(cls)[part]
        cls = tp
    return get_args(tp) if get_origin(tp) is Literal else None


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


# -- loading and validation --------------------------------------------------------------

def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "empty (null)"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints accepted for floats)."""
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise PlanError(f"{key}: {value!r} is not allowed; use {_describe(tp)}.", key)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except PlanError:
                continue
        raise PlanError(f"{key}: {value!r} is not valid; expected {_describe(tp)}.", key)
    if origin is list:
        if not isinstance(value, list):
            raise PlanError(f"{key}: expected {_describe(tp)}, got {value!r}.", key)
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise PlanError(f"{key}: {value!r} is not a finite number.", key)
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise PlanError(f"{key}: expected {_describe(tp)}, got {value!r}.", key)


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise PlanError(f"{prefix or 'the plan'}: expected a mapping of keys, got {data!r}.", prefix or None)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = f"{prefix}{unknown[0]}"
        raise PlanError(f"{k}: unknown key. Allowed here: {', '.join(names)}.", k)
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name] if data[name] is not None else {}, key + ".")
        else:
            kwargs[name] = _coerce(data[name], tp, key)
    return cls(**kwargs)


# Migrations from older plan files: version N -> N+1, applied in order. A plan file without
# schema_version is taken as the current version.
MIGRATIONS: dict[int, typing.Callable[[dict], dict]] = {}


def migrate(data: dict) -> dict:
    if not isinstance(data, dict):
        raise PlanError("The plan must be a mapping of sections (model:, data:, ...).")
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version < 1:
        raise PlanError(f"schema_version: {version!r} is not a plan format version.", "schema_version")
    if version > SCHEMA_VERSION:
        raise PlanError(f"schema_version: this plan was written by a newer Headtune (format {version}; "
                        f"this version reads up to {SCHEMA_VERSION}). Update Headtune.", "schema_version")
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](dict(data))
        version += 1
        data["schema_version"] = version
    data["schema_version"] = SCHEMA_VERSION
    return data


def plan_from_dict(data: dict, base_dir: str | os.PathLike | None = None, check: bool = True) -> Plan:
    """Build and validate a plan; relative paths resolve against ``base_dir``.

    ``check=False`` skips the checks across fields (types are still enforced): the window
    estimates memory for a plan that is still being written, e.g. before a dataset is chosen.
    """
    data = migrate(copy.deepcopy(data if data is not None else {}))
    plan = _build(Plan, data, "")
    if base_dir is not None:
        resolve_paths(plan, Path(base_dir))
    if check:
        validate(plan)
    return plan


def load_plan(path: str | os.PathLike, overrides: list[str] | None = None, check: bool = True) -> Plan:
    """Read a YAML plan file, apply ``key=value`` overrides, validate (``check=False``: types only,
    so the window can reopen a plan that is still being written)."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"The plan file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PlanError(f"The plan file {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    except UnicodeDecodeError:
        raise PlanError(f"The plan file {path} is not a text (UTF-8) file.") from None
    if not isinstance(data, dict):
        raise PlanError(f"The plan file {path} must hold a mapping of sections (model:, data:, ...), "
                        f"not a {type(data).__name__}.")
    data = apply_overrides(data, overrides or [], base_dir=Path.cwd())
    return plan_from_dict(data, base_dir=path.parent, check=check)


PATH_KEYS = ("model.name_or_path", "data.path", "data.chat_template", "output.dir")


def apply_overrides(data: dict, overrides: list[str], base_dir: Path | None = None) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a plan mapping.

    Relative paths typed on the command line mean the current folder, not the plan's: with
    ``base_dir`` they are made absolute against it here.
    """
    if not isinstance(data, dict):
        raise PlanError("The plan must be a mapping of sections (model:, data:, ...).")
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise PlanError(f"--set {item!r}: expected key=value, e.g. training.max_steps=20.")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in all_keys():
            raise PlanError(f"--set {key}: unknown key. Known keys: {', '.join(all_keys())}.", key)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        if base_dir is not None and key in PATH_KEYS and isinstance(value, str):
            value = _resolve(value, base_dir, always=key == "output.dir")
        node[leaf] = value
    return data


def with_overrides(plan: Plan, overrides: list[str]) -> Plan:
    """A validated copy of ``plan`` with ``key=value`` overrides applied."""
    return plan_from_dict(apply_overrides(plan.to_dict(), overrides))


def _looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~")) or "\\" in value or value.endswith(
        (".gguf", ".jsonl", ".json", ".csv", ".parquet", ".txt", ".jinja", ".j2"))


def _resolve(value: str, base: Path, always: bool = False) -> str:
    if not value or (value in ("model",) + BUILTIN_TEMPLATE_NAMES and not always):
        return value
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    candidate = base / expanded
    if always or candidate.exists() or _looks_local(value):
        return str(candidate.resolve())
    return value


def resolve_paths(plan: Plan, base: Path) -> None:
    """Make relative local paths absolute against ``base`` (the plan file's folder).

    A value that exists relative to ``base``, or looks like a file path, is a path; anything
    else (``org/name``) is left alone as a hub id.
    """
    def fix(value: str, always: bool = False) -> str:
        return _resolve(value, base, always)

    plan.model.name_or_path = fix(plan.model.name_or_path)
    plan.data.path = fix(plan.data.path)
    if plan.data.chat_template not in ("model",) + BUILTIN_TEMPLATE_NAMES:
        plan.data.chat_template = fix(plan.data.chat_template)
    plan.output.dir = fix(plan.output.dir, always=True)


BUILTIN_TEMPLATE_NAMES = ("chatml", "llama3")


def validate(plan: Plan) -> None:
    """Checks across fields; raises ``PlanError`` naming the key and what is allowed."""
    m, d, a, e, t = plan.model, plan.data, plan.adapter, plan.embeddings, plan.training

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise PlanError(f"{key}: {msg}", key)

    need(bool(m.name_or_path.strip()), "model.name_or_path",
         "no model given. Set a hub id, a local model folder or a .gguf file.")
    need(bool(d.path.strip()), "data.path", "no dataset given. Set a .jsonl/.json/.csv/.parquet/.txt file or a hub id.")
    need(d.max_seq_len >= 16, "data.max_seq_len", f"must be at least 16 tokens (got {d.max_seq_len}).")
    need(0.0 <= d.val_fraction <= 0.5, "data.val_fraction", f"must be between 0 and 0.5 (got {d.val_fraction}).")
    need(a.r >= 1, "adapter.r", f"the LoRA rank must be at least 1 (got {a.r}).")
    need(a.alpha > 0, "adapter.alpha", f"must be positive (got {a.alpha}).")
    need(0.0 <= a.dropout < 0.9, "adapter.dropout", f"must be in [0, 0.9) (got {a.dropout}).")
    if isinstance(a.target_modules, str):
        need(a.target_modules in TARGET_PRESETS, "adapter.target_modules",
             f"{a.target_modules!r} is not a preset; use one of {', '.join(TARGET_PRESETS)} or a list of module names.")
    else:
        need(bool(a.target_modules), "adapter.target_modules", "the list of module names is empty.")
    need(t.batch_size >= 1, "training.batch_size", f"must be at least 1 (got {t.batch_size}).")
    need(t.grad_accum >= 1, "training.grad_accum", f"must be at least 1 (got {t.grad_accum}).")
    need(t.learning_rate > 0, "training.learning_rate", f"must be positive (got {t.learning_rate}).")
    need(0.0 <= t.warmup_ratio <= 0.5, "training.warmup_ratio", f"must be between 0 and 0.5 (got {t.warmup_ratio}).")
    need(t.weight_decay >= 0, "training.weight_decay", f"must not be negative (got {t.weight_decay}).")
    need(t.max_grad_norm >= 0, "training.max_grad_norm", f"must not be negative (got {t.max_grad_norm}).")
    need(t.max_steps >= 0, "training.max_steps", f"must not be negative (got {t.max_steps}).")
    need(t.max_steps > 0 or t.epochs > 0, "training.epochs",
         f"must be positive when training.max_steps is 0 (got {t.epochs}).")
    need(t.eval_every >= 0, "training.eval_every", "must not be negative (0 disables evaluation).")
    need(t.save_every >= 0, "training.save_every", "must not be negative (0 disables checkpoints).")
    need(t.save_total_limit >= 1, "training.save_total_limit", "must keep at least 1 checkpoint.")
    if e.learning_rate is not None:
        need(e.learning_rate > 0, "embeddings.learning_rate", f"must be positive or empty (got {e.learning_rate}).")
    need(all(i >= 0 for i in e.token_ids), "embeddings.token_ids", "token ids cannot be negative.")
    need(len(set(e.new_tokens)) == len(e.new_tokens) and all(s.strip() for s in e.new_tokens),
         "embeddings.new_tokens", "token strings must be non-empty and unique.")
    trains = e.train_embeddings or e.train_lm_head
    if e.mode == "tokens" and trains:
        need(bool(e.token_ids or e.new_tokens), "embeddings.token_ids",
             "tokens mode trains only listed rows, but none are listed. Add token ids here or strings "
             "to embeddings.new_tokens, or choose mode full or lora.")
    if e.token_ids and not trains:
        raise PlanError("embeddings.token_ids: rows are listed but neither embeddings.train_embeddings nor "
                        "embeddings.train_lm_head is on. Tick one of them (with mode tokens).", "embeddings.token_ids")
    if e.token_ids and e.mode != "tokens":
        raise PlanError(f"embeddings.token_ids: rows are listed, but mode is {e.mode!r}, which trains the whole "
                        "matrix. Set embeddings.mode to tokens, or clear the list.", "embeddings.token_ids")
    if m.quantization != "none" or t.optimizer != "adamw":
        key = "model.quantization" if m.quantization != "none" else "training.optimizer"
        value = m.quantization if m.quantization != "none" else t.optimizer
        problem = bitsandbytes_problem()
        if problem:
            raise PlanError(f"{key}: {value} needs bitsandbytes, which {problem}. Install it "
                            f"(pip install bitsandbytes) or set {key} to "
                            f"{'none' if key == 'model.quantization' else 'adamw'}.", key)
    mem = plan.memory
    need(mem.loss_chunk_tokens >= 16, "memory.loss_chunk_tokens",
         f"must be at least 16 tokens (got {mem.loss_chunk_tokens}).")
    if mem.matrix_states in ("8bit", "paged_8bit"):
        problem = bitsandbytes_problem()
        if problem:
            raise PlanError(f"memory.matrix_states: {mem.matrix_states} needs bitsandbytes, which {problem}. Install "
                            "it (pip install bitsandbytes) or set memory.matrix_states to 32bit.", "memory.matrix_states")
    need(plan.schema_version == SCHEMA_VERSION, "schema_version", f"must be {SCHEMA_VERSION}.")


_BNB_PROBLEM: list[str | None] = []


def bitsandbytes_problem() -> str | None:
    """None when bitsandbytes imports; otherwise a short reason (cached)."""
    if not _BNB_PROBLEM:
        try:
            import importlib.util
            if importlib.util.find_spec("bitsandbytes") is None:
                _BNB_PROBLEM.append("is not installed")
            else:
                import bitsandbytes  # noqa: F401
                _BNB_PROBLEM.append(None)
        except Exception as exc:  # a broken native library shows up here
            _BNB_PROBLEM.append(f"failed to load ({exc.__class__.__name__}: {exc})")
    return _BNB_PROBLEM[0]
