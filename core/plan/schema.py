"""The plan's schema: one dataclass per section, each field with its help text, range and choices.

The window edits a ``Plan``, ``headtune estimate`` reads it, ``headtune train`` runs it, and a copy
(``plan.yaml``, fully resolved) is saved in every run folder. Each field carries
``metadata={"help": ...}``; the same text becomes CLI help and GUI tooltips.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from ..embeddings import MODE_NAMES, MODES

SCHEMA_VERSION = 1

Quantization = Literal["none", "8bit", "4bit"]
DType = Literal["bfloat16", "float16", "float32"]
AttnImpl = Literal["sdpa", "eager", "flash_attention_2"]
DataFormat = Literal["auto", "alpaca", "messages", "sharegpt", "text", "preference"]
Method = Literal["sft", "dpo", "orpo"]
InitUntrained = Literal["none", "mean"]
NewTokenInit = Literal["pieces", "mean"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit"]
LossKind = Literal["standard", "chunked", "fused"]
MatrixDType = Literal["model", "float32", "peft"]
MatrixStates = Literal["auto", "8bit", "paged_8bit", "32bit", "trainer"]
Batching = Literal["padding_free", "grouped", "padded"]
Sharding = Literal["none", "fsdp"]

# Named groups of LoRA target modules, expanded against the model's module names.
TARGET_PRESETS = ("attention", "attention+mlp", "all-linear")


def _f(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple[str, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    unit: str = "",
    **kw: Any,
) -> Any:
    """A dataclass field with its help text, and optionally its allowed range (``ge``/``gt`` below,
    ``le``/``lt`` above, ``unit`` for messages) or its choices (for a ``str`` field whose values
    come from a registry). Mutable defaults are copied per instance."""
    meta: dict[str, Any] = {"help": help}
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if bounds:
        meta["range"] = dict(bounds, unit=unit)
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: copy.deepcopy(value), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class ModelSpec:
    name_or_path: str = _f(
        "",
        "The base model: a hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct), "
        "a local folder with config.json, or a .gguf file (de-quantized once and cached).",
    )
    quantization: Quantization = _f(
        "none",
        "How the frozen base weights are stored: none (16/32-bit), "
        "8bit (bitsandbytes LLM.int8) or 4bit (NF4, i.e. QLoRA).",
    )
    double_quant: bool = _f(True, "4-bit only: also quantize the quantization constants (saves ~0.4 bit per weight).")
    dtype: DType = _f("bfloat16", "Precision of the base weights and of computation: bfloat16, float16 or float32.")
    attn_implementation: AttnImpl = _f(
        "sdpa",
        "Attention kernel: sdpa (PyTorch, memory-efficient), eager, "
        "or flash_attention_2 (needs the flash-attn package and a GPU).",
    )
    trust_remote_code: bool = _f(
        False,
        "Allow a model's own Python code from its repository to run. Only enable for models whose code you trust.",
    )


@dataclass
class DataSpec:
    path: str = _f("", "Training data: a .jsonl, .json, .csv, .parquet or .txt file, or a hub dataset id.")
    format: DataFormat = _f(
        "auto",
        "Row format: alpaca (instruction/input/output), messages (role/content), "
        "sharegpt (from/value), text (raw text, every token trained), preference (pairs for "
        "training.method dpo or orpo: prompt/chosen/rejected, chosen/rejected conversations, or "
        "question/response_j/response_k), or auto to detect.",
    )
    chat_template: str = _f(
        "model",
        "Chat template: 'model' (the tokenizer's own; ChatML when it has none), "
        "a built-in name (chatml, llama3), or a path to a Jinja file.",
    )
    max_seq_len: int = _f(1024, "Longest example in tokens; longer ones are truncated.", ge=16, unit="tokens")
    val_fraction: float = _f(
        0.05, "Share of rows held out for validation (deterministic split); 0 disables.", ge=0.0, le=0.5
    )
    packing: bool = _f(
        False,
        "Concatenate short examples into sequences of max_seq_len tokens (faster on "
        "many short rows; examples can attend to the previous one in a pack).",
    )
    batching: Batching = _f(
        "padding_free",
        "How rows form a batch: padding_free (the rows laid end to end as one sequence, positions "
        "restarting and attention kept within each row: no compute or memory spent on padding, same "
        "loss), grouped (rows of similar length batched together, each padded to the longest), or "
        "padded (rows in random order, each padded to the longest of its batch).",
    )


@dataclass
class AdapterSpec:
    r: int = _f(16, "LoRA rank: size of the low-rank update; higher learns more and uses more memory.", ge=1)
    alpha: float = _f(32.0, "LoRA alpha: the update is scaled by alpha / r.", gt=0)
    dropout: float = _f(0.05, "Dropout on the LoRA input during training (0 to 0.9).", ge=0.0, lt=0.9)
    target_modules: str | list[str] = _f(
        "all-linear",
        "Which layers get LoRA: attention, attention+mlp, all-linear, or an explicit list of "
        "module names (e.g. [q_proj, v_proj]).",
    )
    dora: bool = _f(
        False,
        "DoRA: split each adapted weight into a magnitude and a direction and train both (a vector "
        "per layer more, and more activation memory and time than plain LoRA).",
    )
    rslora: bool = _f(
        False,
        "Rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead of alpha / r, so high ranks keep learning.",
    )
    loraplus_ratio: float = _f(
        1.0,
        "LoRA+: the B matrices learn this many times faster than the A matrices (1 = classic LoRA; "
        "16 is LoRA+'s suggestion, often with a lower learning rate).",
        ge=1.0,
    )


@dataclass
class EmbeddingsSpec:
    train_embeddings: bool = _f(False, "Train the token embedding matrix (embed_tokens).")
    train_lm_head: bool = _f(
        False,
        "Train the language-modeling head (lm_head). On a model with tied "
        "embeddings both are one matrix, trained once.",
    )
    mode: str = _f("full", "How to train them: " + ", ".join(m.help for m in MODES.values()) + ".", choices=MODE_NAMES)
    learning_rate: float | None = _f(
        None,
        "Learning rate for embedding/head parameters (own parameter group); empty = the training learning rate.",
        gt=0,
    )
    token_ids: list[int] = _f([], "Token ids whose rows are trained in tokens mode.")
    new_tokens: list[str] = _f(
        [],
        "Special token strings to add to the tokenizer (never split, e.g. <tool_call>); "
        "their rows start as embeddings.new_token_init says and are trained in every mode.",
    )
    vocab_tokens: list[str] = _f(
        [],
        "Ordinary tokens to add: words or word parts from the data (a leading space is part "
        "of a word, as in ' Spektrometrie'), joined by new BPE merges so they appear inside "
        "text and decode exactly; `headtune vocab` and the Training tab propose them. Their "
        "rows train in every mode. Byte-level BPE tokenizers only (GPT-2, Llama 3, Qwen, SmolLM2).",
    )
    new_token_init: NewTokenInit = _f(
        "pieces",
        "How new tokens' rows start (embedding and untied head): pieces (the mean of the rows "
        "of the pieces the base tokenizer splits the token into) or mean (the mean of all rows).",
    )
    vocab_count: int = _f(50, "Proposing new tokens from the data: at most this many.", ge=1, le=20000, unit="tokens")
    vocab_min_share: float = _f(
        0.001,
        "Proposing new tokens from the data: stop at the first token that saves less than this "
        "share of the trained text's tokens (0.001 = 0.1 %; 0 = no limit).",
        ge=0.0,
        lt=1.0,
    )
    init_untrained: InitUntrained = _f(
        "none",
        "Before training, set embedding/head rows that look untrained "
        "(see `headtune inspect`) to the mean of the other rows: mean, or "
        "none to leave them.",
    )

    @property
    def adds_tokens(self) -> bool:
        """New tokens (special or ordinary) are added, so their rows train."""
        return bool(self.new_tokens or self.vocab_tokens)

    @property
    def added_count(self) -> int:
        """Tokens the plan adds (ordinary ones may bring a few intermediate pieces besides)."""
        return len(self.new_tokens) + len(self.vocab_tokens)


@dataclass
class TrainingSpec:
    method: Method = _f(
        "sft",
        "What the run learns from: sft (supervised: the replies of the data), dpo (Direct Preference "
        "Optimization: pairs of a chosen and a rejected reply, against the starting model as reference) or "
        "orpo (odds-ratio preference optimisation: the chosen reply's loss plus a preference term, no "
        "reference). dpo and orpo need preference data (prompt/chosen/rejected).",
    )
    pref_beta: float = _f(
        0.1,
        "dpo: beta, how far the model may move from the reference (the reward is beta x the change of a "
        "reply's log-probability); higher keeps it closer. Common values 0.01 to 0.5.",
        gt=0.0,
        le=10.0,
    )
    orpo_lambda: float = _f(
        0.1,
        "orpo: lambda, the weight of the odds-ratio preference term beside the chosen reply's loss (0.1 in "
        "the ORPO paper).",
        gt=0.0,
        le=10.0,
    )
    batch_size: int = _f(4, "Examples per device per step.", ge=1)
    grad_accum: int = _f(1, "Gradient accumulation steps (effective batch = batch_size x grad_accum).", ge=1)
    learning_rate: float = _f(2e-4, "Peak learning rate.", gt=0)
    lr_scheduler: Scheduler = _f("cosine", "Learning-rate schedule after warm-up.")
    warmup_ratio: float = _f(0.03, "Share of steps spent warming the learning rate up (0 to 0.5).", ge=0.0, le=0.5)
    weight_decay: float = _f(0.0, "AdamW weight decay (not applied to biases and norms).", ge=0.0)
    max_grad_norm: float = _f(1.0, "Clip gradients to this norm; 0 disables clipping.", ge=0.0)
    epochs: float = _f(1.0, "Passes over the training data (ignored when max_steps > 0).", ge=0.0)
    max_steps: int = _f(0, "Stop after this many optimizer steps; > 0 wins over epochs.", ge=0)
    gradient_checkpointing: bool = _f(True, "Recompute activations in backward: much less memory, ~30% slower.")
    optimizer: Optimizer = _f(
        "adamw", "adamw (32-bit states), adamw_8bit or paged_adamw_8bit (bitsandbytes; paged needs a CUDA GPU)."
    )
    eval_every: int = _f(50, "Evaluate on the validation split every N steps (and at start and end); 0 disables.", ge=0)
    save_every: int = _f(
        100,
        "Save a resumable checkpoint every N steps; 0 disables (the adapter is still saved at the end and on stop).",
        ge=0,
    )
    save_total_limit: int = _f(2, "Keep at most this many checkpoints (oldest deleted first).", ge=1)
    seed: int = _f(42, "Random seed for initialisation, shuffling and the validation split.")
    devices: int = _f(
        1,
        "Processes to train on, one per GPU (data parallel): each takes batch_size examples per step, so the "
        "global batch is devices x batch_size x grad_accum. 0 = every GPU this computer has (1 without one); "
        "N > 1 without a GPU runs N CPU processes. `headtune train` starts them itself; under torchrun or "
        "accelerate launch the launcher decides and this is ignored.",
        ge=0,
    )
    sharding: Sharding = _f(
        "none",
        "How the processes of a multi-device run hold the model: none (data parallel: each process holds the "
        "whole model) or fsdp (fully sharded: each decoder layer's weights, and the embedding/head with the rest, "
        "split over the processes and gathered a unit at a time, for models that do not fit one GPU). Not with "
        "8-bit quantization or the bitsandbytes optimizers. Ignored on one process.",
    )


@dataclass
class MemorySpec:
    loss: LossKind = _f(
        "chunked",
        "How the loss is computed: chunked (a few hundred tokens at a time, so the "
        "batch x seq x vocab logits never exist; same loss), fused (Liger-Kernel or Cut "
        "Cross-Entropy on a CUDA GPU when installed, else chunked), or standard (the "
        "model's own loss over full logits).",
    )
    loss_chunk_tokens: int = _f(
        256,
        "Tokens per chunk of the chunked loss: each chunk's logits take chunk x vocab x 6 bytes for a moment.",
        ge=16,
        unit="tokens",
    )
    frozen_copy: bool = _f(
        False,
        "Keep the frozen original of a matrix trained in full beside its trainable copy "
        "(PEFT's default; only needed to switch the adapter off during training). Off: one "
        "matrix in memory; the saved adapter is the same.",
    )
    matrix_dtype: MatrixDType = _f(
        "model",
        "Precision of the embedding/head matrices: model (the model dtype, "
        "frozen and trained; 16-bit master weights with bf16 models), float32 "
        "(trained matrices as fp32 master weights: steadier, twice the memory), or "
        "peft (as PEFT prepares 4/8-bit models: every matrix, even frozen, in fp32).",
    )
    matrix_states: MatrixStates = _f(
        "8bit",
        "Optimizer states of matrices trained in full: 8bit (bitsandbytes blockwise, 2 bytes a "
        "value; the default, measured to change the loss by less than another seed does: "
        "docs/matrix-states-loss.md), auto (the precision of training.optimizer), "
        "paged_8bit (8-bit, paged to CPU memory when the GPU is full; CUDA "
        "only), 32bit, or trainer (the Trainer's rule: 32-bit for the embedding "
        "under an 8-bit optimizer).",
    )
    fused_step: bool = _f(
        False,
        "Update each fully trained matrix inside backward as soon as its gradient is "
        "complete, then drop the gradient, so the matrices' gradients never all exist. "
        "Exact; only with training.grad_accum 1 and training.max_grad_norm 0 (no clipping), "
        "not with float16; otherwise it stays off and the estimate says so.",
    )


@dataclass
class OutputSpec:
    dir: str = _f(
        "runs/run",
        "The run folder: plan, events, checkpoints and adapter go here. Must be new or empty unless resuming.",
    )
    tensorboard: bool = _f(
        False,
        "Also write TensorBoard event files (loss, learning rate, evaluation, memory) into the run "
        "folder's tensorboard/ folder, for `tensorboard --logdir`. Needs the tensorboard extra.",
    )


@dataclass
class Plan:
    schema_version: int = _f(SCHEMA_VERSION, "Version of the plan format (set by Headtune).")
    model: ModelSpec = field(default_factory=ModelSpec, metadata={"help": "The base model and how it is loaded."})
    data: DataSpec = field(default_factory=DataSpec, metadata={"help": "The dataset and how it is tokenised."})
    adapter: AdapterSpec = field(default_factory=AdapterSpec, metadata={"help": "LoRA settings."})
    embeddings: EmbeddingsSpec = field(
        default_factory=EmbeddingsSpec, metadata={"help": "Training the token embeddings and the LM head."}
    )
    training: TrainingSpec = field(default_factory=TrainingSpec, metadata={"help": "Optimisation settings."})
    memory: MemorySpec = field(
        default_factory=MemorySpec,
        metadata={"help": "Lean memory: the loss, the matrices' precision and optimizer states."},
    )
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
        return e.train_embeddings or e.train_lm_head or e.adds_tokens


# -- what the schema says about a key ------------------------------------------------------


def _field(dotted: str) -> tuple[dataclasses.Field, Any]:
    """The dataclass field of a dotted key and its type; KeyError for an unknown key."""
    cls: Any = Plan
    f, tp = None, None
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            raise KeyError(dotted)
        fields = {x.name: x for x in dataclasses.fields(cls)}
        if part not in fields:
            raise KeyError(dotted)
        f, tp = fields[part], _hints(cls)[part]  # type: ignore[arg-type]
        cls = tp
    if f is None:
        raise KeyError(dotted)
    return f, tp


def help_for(dotted: str) -> str:
    """The help text of a dotted key, e.g. ``help_for("embeddings.mode")``."""
    return _field(dotted)[0].metadata.get("help", "")


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
    """The allowed values of a key with choices (a Literal type, or a registry's names), or None."""
    f, tp = _field(dotted)
    if "choices" in f.metadata:
        return f.metadata["choices"]
    return get_args(tp) if get_origin(tp) is Literal else None


def range_for(dotted: str) -> dict[str, Any] | None:
    """The allowed range of a numeric key: some of ``ge``, ``gt``, ``le``, ``lt``, and ``unit``; or None."""
    return _field(dotted)[0].metadata.get("range")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]
