"""The memory estimate: a pure function of the plan, the model's config and the target device.

No weights are loaded; it takes well under a millisecond, so the window can call it on every
change. It models what this stack actually does (see MEMORY-FACTS in the project's shared
notes, re-checked against our own tracker):

- frozen weights by storage kind: 16/32-bit; bitsandbytes int8 (+ fp32 row scales); NF4 (4 bits +
  an absmax per 64 weights, 8-bit with an fp32 per 256 blocks under double quant);
  ``prepare_model_for_kbit_training`` casts every non-quantised parameter (embeddings, head,
  norms) to fp32; PEFT ``modules_to_save`` keeps the frozen original beside a trainable copy of
  the same dtype;
- trainable parameters, their gradients and optimizer states (fp32 LoRA; torch AdamW states in the
  parameter's dtype; bitsandbytes 8-bit states, with the Trainer's 32-bit override for
  ``nn.Embedding``; paged states live outside the allocator's count);
- activations (one hidden state per layer plus one recomputed layer with gradient checkpointing;
  every layer's intermediates without) and the loss region: cross-entropy upcasts the
  batch x seq x vocab logits to fp32 and, in backward, three such fp32 tensors are alive at once;
- the peak is a maximum over phases (forward/loss, head backward, body backward, optimizer step),
  reported with the breakdown of the phase that wins.

Category names of ``breakdown`` (bytes at the peak phase; they sum to ``tensors_peak_bytes``):
``weights_frozen`` (base weights as stored, quantisation constants included), ``weights_trainable``
(LoRA, trainable embedding/head copies or rows), ``gradients``, ``optimizer_states``,
``activations`` (hidden states kept for backward and the recomputed layer), ``logits_loss``
(logits, their fp32 upcast, log-softmax and their gradients), ``transient`` (short-lived buffers:
dequantised weights, optimizer-step temporaries, dense embedding gradients being accumulated).
``paged_optimizer_states`` and the CUDA ``overhead`` are reported apart.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ModelError, PlanError

GiB = 1024 ** 3
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
CATEGORIES = ("weights_frozen", "weights_trainable", "gradients", "optimizer_states", "activations",
              "logits_loss", "transient")
COMMON_GPUS_GIB = (8, 12, 16, 24)
# CUDA context + cuBLAS/cuDNN workspaces, and the caching allocator's slack over the tensor peak.
CUDA_CONTEXT_BYTES = 500 * 1024 ** 2
ALLOCATOR_SLACK = 0.08


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
    def from_config(cls, cfg: dict[str, Any]) -> "ModelShape":
        cfg = dict(cfg.get("text_config") or {}, **{k: v for k, v in cfg.items() if k != "text_config"})
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            return cls(
                vocab=int(cfg["vocab_size"]), hidden=hidden, layers=int(cfg["num_hidden_layers"]),
                intermediate=int(cfg.get("intermediate_size") or 4 * hidden), heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                tied=bool(cfg.get("tie_word_embeddings", False)),
                model_type=str(cfg.get("model_type", "")), max_positions=int(cfg.get("max_position_embeddings") or 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"The model's config.json lacks what the estimate needs ({exc}); only decoder-only "
                             "transformers with the usual keys (vocab_size, hidden_size, ...) are supported.") from None

    # -- parameter counts ----------------------------------------------------------------
    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one block, by leaf name."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}

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
    """config.json of a local folder, a cached hub model, or a GGUF file's header (no weights)."""
    from .models import resolve_source
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
        if not isinstance(cached, str):  # not cached: download config.json alone
            cached = hf_hub_download(name_or_path, "config.json")
        return json.loads(Path(cached).read_text(encoding="utf-8"))
    except Exception as exc:
        from .models import _hub_error
        raise (_hub_error(exc, name_or_path, False) or ModelError(
            f"Could not read the configuration of {name_or_path}: {exc}")) from None


def _gguf_config(path: Path) -> dict[str, Any]:
    """The config transformers builds from a GGUF header: from the cached conversion when there
    is one, else parsed once per process (about 15 s for SmolLM2: the tokenizer is read too)."""
    from .models import gguf_cache_folder
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


# -- the estimate --------------------------------------------------------------------------

@dataclass
class Advice:
    set: dict[str, Any]
    total_bytes: int
    why: str


@dataclass
class Estimate:
    tensors_peak_bytes: int
    overhead_bytes: int
    total_bytes: int
    breakdown: dict[str, int]
    phases: dict[str, int]
    peak_phase: str
    paged_optimizer_states_bytes: int = 0
    device: str = "cuda"
    trainable_params: int = 0
    capacity_bytes: int | None = None
    fit: str | None = None
    advice: list[Advice] = field(default_factory=list)
    # Why a memory: option will not run as written here (core.lean.resolve's fallbacks).
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.capacity_bytes is None:
            for k in ("capacity_bytes", "fit", "advice"):
                d.pop(k)
        return d


def _nf4_bytes(numel: int, double_quant: bool) -> float:
    blocks = numel / 64
    if double_quant:
        return numel / 2 + blocks + (blocks / 256) * 4
    return numel / 2 + blocks * 4


def estimate(plan, shape: ModelShape, device: str = "cuda", capacity_bytes: int | None = None,
             advise: bool = True) -> Estimate:
    """Estimate peak training memory of ``plan`` on ``shape``; ``device`` is "cuda" or "cpu"."""
    m, e, t, a, d = plan.model, plan.embeddings, plan.training, plan.adapter, plan.data
    dt = DTYPE_BYTES[m.dtype]
    kbit = m.quantization != "none"
    H, L = shape.hidden, shape.layers
    # New tokens either land on spare rows or add a few rows (N x hidden): negligible here.
    V = shape.vocab
    B, S = t.batch_size, d.max_seq_len
    T = B * S
    matrix = V * H
    tied = shape.tied
    # The memory options as they will run on this device (fallbacks included), as the job sees them.
    from .lean import matrix_bytes, resolve
    eff = resolve(plan, device, tied=shape.tied)
    # Non-quantised parameters after loading: k-bit preparation upcasts norms to fp32, and the
    # embedding/head matrices too unless memory.matrix_dtype says otherwise.
    dense_b = 4 if kbit else dt
    frozen_mb = matrix_bytes(eff, m.dtype, kbit, trained=False)
    train_mb = matrix_bytes(eff, m.dtype, kbit, trained=True)

    # Frozen base weights.
    blk = shape.block_linear_params
    if m.quantization == "4bit":
        frozen = _nf4_bytes(blk, m.double_quant)
    elif m.quantization == "8bit":
        frozen = blk + L * sum(o for _, o in shape.linear_shapes().values()) * 4
    else:
        frozen = blk * dt
    frozen += shape.norm_params * dense_b

    # What trains in each matrix, decided as adapters.resolve_embeddings decides it: a tied
    # matrix is trained once, from the embedding side; new tokens' rows train in every matrix,
    # through token rows where the matrix is not trained otherwise.
    train_emb = e.train_embeddings or (tied and e.train_lm_head)
    train_head = e.train_lm_head and not tied
    mech = {"emb": e.mode if train_emb else None, "head": e.mode if train_head else None}
    if e.new_tokens:
        for name in ("emb",) if tied else ("emb", "head"):
            mech[name] = mech[name] or "new_rows"
    rows_of = {"tokens": len(set(e.token_ids)) + len(e.new_tokens), "new_rows": len(e.new_tokens)}
    full_mats = sum(1 for v in mech.values() if v == "full")
    # Each matrix as stored frozen; memory.frozen_copy false drops the original of a fully trained one.
    frozen += matrix * frozen_mb * ((1 if tied else 2) - (0 if eff.frozen_copy else full_mats))
    lora_mats = sum(1 for v in mech.values() if v == "lora")
    token_rows_total = sum(rows_of.get(v, 0) for v in mech.values())

    # LoRA parameters (fp32) on the block's linear layers.
    targets = _lora_targets(a.target_modules, shape)
    lora = L * sum(a.r * (i + o) for name, (i, o) in shape.linear_shapes().items() if name in targets)
    lora += lora_mats * a.r * (V + H)
    trainable_fp32 = lora + token_rows_total * H  # token-row deltas are fp32
    full_copy_params = full_mats * matrix
    # (token rows also keep a copy of the original rows in the base dtype)
    weights_trainable = trainable_fp32 * 4 + full_copy_params * train_mb + token_rows_total * H * frozen_mb
    trainable_params = trainable_fp32 + full_copy_params

    # Optimizer states (8-bit states for the matrices make the whole optimizer bitsandbytes').
    paged = t.optimizer == "paged_adamw_8bit" or (eff.matrix_states == "paged_8bit" and full_mats > 0)
    eight = t.optimizer in ("adamw_8bit", "paged_adamw_8bit")
    bnb_opt = eight or (eff.matrix_states in ("8bit", "paged_8bit") and full_mats > 0)

    def adam_bytes(numel: int, param_bytes: int, embedding: bool) -> float:
        if not eight or numel < 4096:
            return 2 * numel * (param_bytes if not eight else 4)
        if embedding:  # the Trainer keeps 32-bit states for nn.Embedding weights
            return 2 * numel * 4
        return 2 * numel + 2 * (numel / 256) * 4

    def matrix_states(numel: int, embedding: bool) -> float:
        if eff.matrix_states == "trainer":
            # The embedding copy is an nn.Embedding (32-bit states under bitsandbytes); the head a Linear.
            return adam_bytes(numel, train_mb, embedding)
        if eff.matrix_states == "32bit":  # torch AdamW keeps states in the parameter's dtype
            return 2 * numel * (4 if eight else train_mb)
        return 2 * numel + 2 * (numel / 256) * 4  # bitsandbytes 8-bit blockwise (+ fp32 absmax per 256)

    states = adam_bytes(trainable_fp32, 4, False)
    states += matrix_states(matrix, True) if mech["emb"] == "full" else 0
    states += matrix_states(matrix, False) if mech["head"] == "full" else 0
    matrix_grads = full_copy_params * train_mb
    grads = trainable_fp32 * 4 + matrix_grads
    if tied and mech["emb"] == "lora":
        # PEFT ties the head's LoRA to the embedding's through a second Parameter on the same
        # storage: one copy of the values, but two gradients and two sets of optimizer states.
        shared = a.r * (V + H)
        grads += shared * 4
        states += adam_bytes(shared, 4, False)

    # Activations.
    act_b = dt  # computation dtype (bf16 autocast or the model's dtype)
    per_layer_saved = T * _layer_activation_factor(shape, a, act_b, targets)
    if t.gradient_checkpointing:
        activations = L * T * H * act_b + per_layer_saved
    else:
        activations = L * per_layer_saved
    activations += T * H * 4 * 2  # final norm input/output and the hidden state fed to the head

    # Loss region (standard): log-softmax output + nll gradient + log-softmax gradient, all fp32.
    # LoRA on the head adds its own batch x seq x vocab output in forward.
    lora_on_head = mech["head"] == "lora" or (tied and mech["emb"] == "lora")
    logits_fwd = T * V * (act_b + 4 + (act_b if lora_on_head else 0))
    logits_bwd = T * V * 12
    logits_head = T * V * (4 + act_b)

    # Trainable token rows on the head: each forward builds the merged full matrix, which the
    # head's matmul keeps for its backward.
    rows_mechs = ("tokens", "new_rows")
    tokens_on_head = mech["head"] in rows_mechs or (tied and mech["emb"] in rows_mechs)
    merged_head = matrix * frozen_mb if tokens_on_head else 0
    # Transients: the head's weight gradient, dense embedding gradients, optimizer temporaries.
    head_full = mech["head"] == "full" or (tied and mech["emb"] == "full")
    head_grad = matrix * train_mb if head_full else 0
    # The embedding copy's gradient appears only at the very end of backward (untied: it becomes
    # .grad as is; tied: autograd adds it to the head's .grad out of place, so the new gradient
    # and the sum are two more dense matrices for a moment — measured, hidden-512 rows).
    emb_grad_pending = matrix * train_mb if (mech["emb"] == "full" and not tied) else 0
    emb_grad = 2 * matrix * train_mb if (mech["emb"] == "full" and tied) else 0
    dequant = (max(i * o for i, o in shape.linear_shapes().values()) * act_b) if m.quantization == "4bit" else 0
    # Fused AdamW updates in place; bitsandbytes needs only per-block scale buffers.
    opt_tmp = 2 * (trainable_params / 256) * 4 if bnb_opt else 0

    # Under 16-bit autocast an fp32 head weight (PEFT's k-bit upcast, fp32 master weights) is cast
    # to a 16-bit copy for the matmul, which the matmul keeps for its backward (measured: bf16,
    # 4-bit rows of benchmarks/lean_memory.py).
    head_store_b = train_mb if head_full else frozen_mb
    autocast_copy = matrix * act_b if head_store_b != act_b else 0
    logits_fwd += autocast_copy
    logits_bwd += autocast_copy
    logits_head += autocast_copy
    loss_grads = 0  # gradients that the loss itself creates (the chunked loss: the head's, in forward)
    if eff.loss != "standard":
        C = min(eff.loss_chunk, T)
        if not (lora_on_head or tokens_on_head):
            # core.lean's chunked linear cross-entropy: the head's gradient is accumulated in place
            # during the loss (so it exists from then on, and no second one appears in backward);
            # per chunk an fp32 logits buffer (+ its 16-bit matmul output, then a 16-bit gradient);
            # the labelled hidden rows and their gradient.
            head_b = train_mb if head_full else frozen_mb  # the chunk's matmul runs in this dtype
            chunk = C * V * (4 + (head_b if head_b != 4 else 0))
            rows = 2 * T * H * act_b
            logits_fwd = chunk + rows
            logits_bwd = rows
            logits_head = rows
            loss_grads = head_grad
            head_grad = 0  # already counted at the loss
        else:
            # Any other head (LoRA, token rows): checkpointed chunks, each recomputed in backward.
            # (measured on CPU, fp32: about 10 bytes per chunk token and vocabulary entry either way)
            logits_fwd = C * V * (6 + act_b) + autocast_copy
            logits_bwd = C * V * (6 + act_b) + autocast_copy
            logits_head = C * V * (4 + act_b) + autocast_copy

    # The fused step updates each fully trained matrix inside backward and drops its gradient:
    # an untied head's right after the loss's backward, the embedding's (or a tied matrix's) at
    # the very end of backward; none is left for the optimizer step.
    untied_head_part = matrix * train_mb if (mech["head"] == "full" and not tied) else 0
    fused_body_drop = untied_head_part if eff.fused_step else 0
    fused_step_drop = matrix_grads if eff.fused_step else 0
    body_grads = grads - emb_grad_pending - fused_body_drop
    emb_grads = grads - fused_body_drop

    static = frozen + weights_trainable + (0 if paged else states)
    phases = {
        "forward_loss": static + activations + logits_fwd + merged_head + dequant + loss_grads,
        "loss_backward": static + activations + logits_bwd + merged_head + loss_grads,
        "head_backward": static + activations + logits_head + head_grad + merged_head + loss_grads,
        "body_backward": static + per_layer_saved + (L * T * H * act_b if t.gradient_checkpointing else activations)
                          + body_grads + dequant,
        "embedding_backward": static + emb_grads + emb_grad + T * H * act_b,
        "optimizer_step": static + grads - fused_step_drop + opt_tmp,
    }
    peak_phase = max(phases, key=phases.get)
    peak = int(phases[peak_phase])
    bd = _breakdown(peak_phase, frozen, weights_trainable, grads, 0 if paged else states, activations,
                    per_layer_saved, logits_fwd, logits_bwd, logits_head, head_grad, emb_grad_pending,
                    emb_grad, dequant, merged_head, opt_tmp, T * H * act_b, L * T * H * act_b,
                    t.gradient_checkpointing, loss_grads, body_grads, emb_grads, grads - fused_step_drop)
    bd = {k: int(v) for k, v in bd.items()}
    drift = peak - sum(bd.values())
    bd["transient"] += drift  # rounding only: keep the sum exact
    overhead = int(CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * peak) if device.startswith("cuda") else 0
    est = Estimate(tensors_peak_bytes=peak, overhead_bytes=overhead, total_bytes=peak + overhead, breakdown=bd,
                   phases={k: int(v) for k, v in phases.items()}, peak_phase=peak_phase,
                   paged_optimizer_states_bytes=int(states) if paged else 0, device=device,
                   trainable_params=int(trainable_params), notes=list(eff.notes))
    if capacity_bytes:
        est.capacity_bytes = int(capacity_bytes)
        est.fit = fit_verdict(est.total_bytes, capacity_bytes)
        if advise and est.fit != "fits":
            est.advice = advisor(plan, shape, device, capacity_bytes)
    return est


def _breakdown(phase, frozen, wtrain, grads, states, activations, per_layer, lf, lb, lh, head_grad,
               emb_grad_pending, emb_grad, dequant, merged, opt_tmp, thd, checkpoints, gc, loss_grads, body_grads,
               emb_grads, step_grads) -> dict[str, float]:
    bd = dict.fromkeys(CATEGORIES, 0.0)
    bd.update(weights_frozen=frozen, weights_trainable=wtrain, optimizer_states=states)
    if phase == "forward_loss":
        bd.update(activations=activations, logits_loss=lf, gradients=loss_grads, transient=dequant + merged)
    elif phase == "loss_backward":
        bd.update(activations=activations, logits_loss=lb, gradients=loss_grads, transient=merged)
    elif phase == "head_backward":
        bd.update(activations=activations, logits_loss=lh, gradients=head_grad + loss_grads, transient=merged)
    elif phase == "body_backward":
        bd.update(activations=per_layer + (checkpoints if gc else activations), gradients=body_grads,
                  transient=dequant)
    elif phase == "embedding_backward":
        bd.update(gradients=emb_grads, transient=emb_grad, activations=thd)
    else:
        bd.update(gradients=step_grads, transient=opt_tmp)
    return bd


def _lora_targets(target_modules, shape: ModelShape) -> set[str]:
    names = set(shape.linear_shapes())
    if isinstance(target_modules, list):
        return names & set(target_modules)
    if target_modules == "attention":
        return {"q_proj", "k_proj", "v_proj", "o_proj"}
    return names  # attention+mlp and all-linear cover the whole block of a Llama-style model


def _layer_activation_factor(shape: ModelShape, a, act_b: int, targets: set[str]) -> float:
    """Bytes kept per token by one decoder layer for its backward (SDPA attention)."""
    H, I = shape.hidden, shape.intermediate
    q = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    # norm in/out (fp32 variance path), q/k/v (+rope copies), attention output, o_proj in,
    # residuals, MLP: gate, up, act(gate), product.
    elems = 2 * H + 2 * (q + 2 * kv) + q + q + 2 * H + 4 * I
    fp32_norms = 2 * 2 * H * 4
    lora_inputs = sum(shape.linear_shapes()[n][0] for n in targets) * act_b if a.dropout > 0 else 0
    lora_mid = len(targets) * a.r * 4
    return elems * act_b + fp32_norms + lora_inputs + lora_mid + shape.heads * 4


def fit_verdict(total: int, capacity: int) -> str:
    if total > capacity:
        return "no"
    return "tight" if total > 0.9 * capacity else "fits"


ADVICE_STEPS = [
    ({"training.gradient_checkpointing": True}, "recompute activations in backward (about 30% slower)"),
    ({"training.optimizer": "adamw_8bit"}, "8-bit optimizer states"),
    ({"training.optimizer": "paged_adamw_8bit"}, "8-bit optimizer states paged to CPU memory when the GPU is full"),
    ({"model.quantization": "4bit"}, "store the frozen base weights in 4-bit NF4 (QLoRA)"),
    ({"embeddings.mode": "tokens"}, "train only selected token rows instead of whole matrices"),
    # Lean memory (core.lean): exact ones first in this list; the estimate ranks them anyway.
    ({"memory.loss": "chunked"}, "compute the loss a chunk of tokens at a time: same loss, no full-vocabulary logits"),
    ({"memory.frozen_copy": False}, "drop the frozen original beside each matrix trained in full (exact)"),
    ({"memory.matrix_dtype": "model"}, "keep the embedding/head matrices in the model dtype (16-bit master weights)"),
    ({"memory.matrix_states": "8bit"}, "8-bit optimizer states for the embedding/head matrices"),
    ({"memory.fused_step": True, "training.max_grad_norm": 0.0},
     "update the embedding/head matrices inside backward, so their gradients never all exist (no clipping)"),
]
FULL_MATRIX_KEYS = ("memory.frozen_copy", "memory.matrix_dtype", "memory.matrix_states", "memory.fused_step")


def advisor(plan, shape: ModelShape, device: str, capacity: int) -> list[Advice]:
    """Changes that make the plan fit, each re-estimated; those that fit first, lowest total first."""
    candidates: list[tuple[dict, str]] = []
    for change, why in ADVICE_STEPS:
        if all(plan.get(k) == v for k, v in change.items()):
            continue
        if "embeddings.mode" in change and not (plan.embeddings.train_embeddings or plan.embeddings.train_lm_head):
            continue
        if "embeddings.mode" in change and not (plan.embeddings.token_ids or plan.embeddings.new_tokens):
            continue
        if change.get("training.optimizer") == "paged_adamw_8bit" and not device.startswith("cuda"):
            continue
        e = plan.embeddings
        if any(k in change for k in FULL_MATRIX_KEYS) and not (
                (e.train_embeddings or e.train_lm_head) and e.mode == "full"):
            continue  # these act on matrices trained in full only
        if "memory.fused_step" in change and (plan.training.grad_accum > 1 or plan.model.dtype == "float16"):
            continue  # it would not be exact, so it stays off (core.lean.resolve)
        candidates.append((change, why))
    S, B = plan.data.max_seq_len, plan.training.batch_size
    for seq in (S // 2, S // 4):
        if seq >= 128:
            candidates.append(({"data.max_seq_len": seq}, f"shorter sequences ({seq} tokens)"))
    if B > 1:
        candidates.append(({"training.batch_size": max(1, B // 2), "training.grad_accum": plan.training.grad_accum * 2},
                           "half the batch, twice the accumulation (same effective batch)"))
    if plan.adapter.r > 8:
        candidates.append(({"adapter.r": plan.adapter.r // 2}, f"LoRA rank {plan.adapter.r // 2}"))
    out, combined = [], {}
    for change, why in candidates:
        est = estimate(_changed(plan, change), shape, device, advise=False)
        out.append(Advice(set=change, total_bytes=est.total_bytes, why=why))
    # A combination of the changes, best first, when no single one fits.
    if out and not any(x.total_bytes <= capacity for x in out):
        for adv in sorted(out, key=lambda x: x.total_bytes):
            if "training.optimizer" in adv.set and "training.optimizer" in combined:
                continue  # one optimizer at a time
            combined.update(adv.set)
            total = estimate(_changed(plan, combined), shape, device, advise=False).total_bytes
            if total <= capacity:
                out.append(Advice(set=dict(combined), total_bytes=total, why="these changes together"))
                break
    return sorted(out, key=lambda x: (x.total_bytes > capacity, x.total_bytes))


def _changed(plan, change: dict[str, Any]):
    """A copy of ``plan`` with dotted keys set (values the advisor knows to be valid)."""
    sections = {}
    for key, value in change.items():
        section, leaf = key.split(".")
        sections.setdefault(section, {})[leaf] = value
    return replace(plan, **{s: replace(getattr(plan, s), **kv) for s, kv in sections.items()})


def plan_estimate(plan, device: str = "cuda", capacity_bytes: int | None = None) -> tuple[Estimate, ModelShape]:
    """Read the model's config for ``plan`` and estimate (no weights loaded)."""
    shape = ModelShape.from_config(read_model_config(plan.model.name_or_path))
    return estimate(plan, shape, device, capacity_bytes), shape


def detect_capacity(device: str) -> tuple[int | None, str]:
    """(bytes, description) of the target's memory: the GPU's total, or this computer's RAM."""
    if device.startswith("cuda"):
        try:
            import torch
            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                return int(total), f"{torch.cuda.get_device_name()} ({total / GiB:.1f} GiB)"
        except Exception:
            pass
        return None, "no CUDA GPU detected"
    import psutil
    total = psutil.virtual_memory().total
    return int(total), f"this computer's RAM ({total / GiB:.1f} GiB)"


def gib(n: float) -> float:
    return n / GiB


def parse_size(text: str) -> int:
    """'12GiB', '12 GB', '12g', '12000MiB' or plain bytes -> bytes (GB taken as GiB, like GPU specs)."""
    s = text.strip().lower().replace(" ", "")
    units = {"tib": 1024 ** 4, "tb": 1024 ** 4, "t": 1024 ** 4, "gib": GiB, "gb": GiB, "g": GiB,
             "mib": 1024 ** 2, "mb": 1024 ** 2, "m": 1024 ** 2, "b": 1, "": 1}
    for unit in sorted(units, key=len, reverse=True):
        if s.endswith(unit):
            number = s[: len(s) - len(unit)] if unit else s
            try:
                value = float(number)
            except ValueError:
                break
            if value <= 0 or not math.isfinite(value):
                break
            return int(value * units[unit])
    raise PlanError(f"--gpu-memory {text!r}: expected a size such as 12GiB, 8GB or 24000MiB.")

