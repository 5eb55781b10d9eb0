"""Peak training memory of a plan, by phase and category: a pure function of the plan and the config.

No weights are loaded; it takes well under a millisecond, so the window can call it on every
change. It models what this stack actually does (each term checked against measured peaks, see
``benchmarks/memory_accuracy.py``):

- frozen weights by storage kind: 16/32-bit; bitsandbytes int8 (+ fp32 row scales); NF4 (4 bits +
  an absmax per 64 weights, 8-bit with an fp32 per 256 blocks under double quant);
  ``prepare_model_for_kbit_training`` casts every non-quantised parameter (embeddings, head,
  norms) to fp32; what each embeddings mode keeps of its matrix comes from the mode itself
  (``core.embeddings``: a full copy, LoRA factors, row deltas);
- trainable parameters, their gradients and optimizer states (fp32 LoRA; torch AdamW states in the
  parameter's dtype; bitsandbytes 8-bit states, with the Trainer's 32-bit override for
  ``nn.Embedding``; paged states live outside the allocator's count);
- activations (one hidden state per layer plus one recomputed layer with gradient checkpointing;
  every layer's intermediates without) and the loss region, by the path the head takes through
  the loss (a plain matrix, a low-rank update, merged rows) and the loss option (standard: fp32
  batch x seq x vocab logits; chunked: a chunk of tokens at a time);
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

from dataclasses import asdict, dataclass, field
from typing import Any

from ..embeddings import ADAPTER, PLAIN, ROWS, MatrixFacts, decide
from ..model.shape import ModelShape
from ..plan.memory_options import Effective, matrix_bytes, resolve

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
CATEGORIES = (
    "weights_frozen",
    "weights_trainable",
    "gradients",
    "optimizer_states",
    "activations",
    "logits_loss",
    "transient",
)
# Below this many values bitsandbytes keeps 32-bit optimizer states.
BNB_MIN_8BIT_SIZE = 4096
# bitsandbytes' blockwise 8-bit states: one fp32 absmax per block of this many values.
BNB_STATE_BLOCK = 256
# The chunked loss through a head that is not one plain matrix (LoRA on the head, trainable token
# rows): checkpointed chunks recomputed in backward. Measured with the live-tensor tracker (2-layer
# Llama, 128,256 vocabulary, hidden 64, chunks of 128 and 512 labelled tokens and single chunks of
# 34 to 226, float32 and bfloat16, LoRA and token-row heads; the calibration rows of
# benchmarks/memory_accuracy.py --defaults): 12 bytes per labelled chunk token and vocabulary entry
# whatever the dtype.
CHECKPOINTED_CHUNK_BYTES = 12
# DoRA on a head trained through LoRA: chunk x vocab outputs alive at once in a chunk of the loss
# (fitted with the live-tensor tracker on 2-layer Llamas with the 128,256 vocabulary, bfloat16:
# hidden 64 with chunks of 256 tokens and hidden 128 with chunks of 128: 3.75, with 4.2 bytes per
# value of the matrix for its fp32 dense update).
DORA_HEAD_OUTPUTS = 4


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
    advice: list = field(default_factory=list)  # core.estimate.advisor.Advice
    # Why a memory: option will not run as written here (core.plan.memory_options.resolve's fallbacks).
    notes: list[str] = field(default_factory=list)
    # Memory-saving defaults at work in this plan: {"key", "label", "bytes" saved}.
    saved_by_defaults: list[dict] = field(default_factory=list)
    # The figure for the dataset's real lengths (core.estimate.lengths.DataFit), when they are known.
    data: Any = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.capacity_bytes is None:
            for k in ("capacity_bytes", "fit", "advice"):
                d.pop(k)
        if self.data is None:
            d.pop("data")
        return d


@dataclass(frozen=True)
class _Sizes:
    """The plan's sizes in elements and bytes per element."""

    T: int  # tokens per micro-batch (batch x the longest row)
    N: int  # labelled tokens per micro-batch: the rows the loss computes logits for
    V: int
    H: int
    L: int
    matrix: int  # values of one embedding/head matrix
    act_b: int  # computation dtype
    frozen_mb: int  # bytes per value of a frozen embedding/head matrix
    train_mb: int  # bytes per value of a trained copy
    tied: bool
    pairs: bool = False  # preference tuning: each example is two rows, through the log-probability path


@dataclass
class _Matrices:
    """What the embeddings modes keep, summed over the trained matrices (values)."""

    full_roles: list[str] = field(default_factory=list)  # roles trained as full copies
    dropped_frozen: int = 0  # full copies whose frozen original is dropped
    adapter: int = 0
    shadow: int = 0
    frozen_rows: int = 0
    head_path: str = PLAIN
    embedding_path: str = PLAIN
    tied: bool = False

    @property
    def full_copies(self) -> int:
        return len(self.full_roles)

    @property
    def head_full(self) -> bool:
        return "head" in self.full_roles or ("embedding" in self.full_roles and self.tied)


def nf4_bytes(numel: int, double_quant: bool) -> float:
    blocks = numel / 64
    if double_quant:
        return numel / 2 + blocks + (blocks / 256) * 4
    return numel / 2 + blocks * 4


def _sizes(plan, shape: ModelShape, eff: Effective, data=None) -> _Sizes:
    m = plan.model
    kbit = m.quantization != "none"
    # Preference tuning (dpo, orpo) puts each example's chosen and rejected replies through the
    # model as two rows of one batch, each as long as the longer of the two at most (padded, or the
    # same tokens laid end to end): twice the rows of sft. DPO's reference costs nothing here: its
    # log-probabilities are computed before the first step (core.training.preference).
    pairs = plan.training.method != "sft"
    rows = plan.training.batch_size * (2 if pairs else 1)
    seq = data.seq_len(plan) if data is not None else plan.data.max_seq_len
    # New tokens either land on spare rows or add a few rows (N x hidden): negligible here.
    return _Sizes(
        T=rows * seq,
        # Without the data every token is labelled but each row's first (the shift drops it). The
        # data's lengths of a preference set are its replies', so a batch of pairs holds at most
        # twice the labelled tokens of as many of its longest replies.
        N=(data.loss_tokens(plan) * (2 if pairs else 1)) if data is not None else rows * (seq - 1),
        V=shape.vocab,
        H=shape.hidden,
        L=shape.layers,
        matrix=shape.vocab * shape.hidden,
        act_b=DTYPE_BYTES[m.dtype],
        frozen_mb=matrix_bytes(eff, m.dtype, kbit, trained=False),
        train_mb=matrix_bytes(eff, m.dtype, kbit, trained=True),
        tied=shape.tied,
        pairs=pairs,
    )


def _matrices(plan, shape: ModelShape) -> _Matrices:
    """Each trained matrix's cost, as its embeddings mode states it (``core.embeddings``)."""
    e = plan.embeddings
    out = _Matrices(tied=shape.tied)
    for a in decide(e, shape.tied):
        rows = e.added_count if a.new_rows_only else len(set(e.token_ids)) + e.added_count
        cost = a.mode.cost(
            MatrixFacts(vocab=shape.vocab, hidden=shape.hidden, rank=plan.adapter.r, rows=rows, tied=shape.tied)
        )
        if cost.full_copy:
            out.full_roles.append(a.role)
            out.dropped_frozen += int(cost.drops_frozen and not plan.memory.frozen_copy)
        out.adapter += cost.adapter
        out.shadow += cost.shadow
        out.frozen_rows += cost.frozen_rows
        if a.role == "embedding":
            out.embedding_path = cost.head_path
        if a.role == "head" or shape.tied:
            out.head_path = cost.head_path
    return out


def _frozen_bytes(plan, shape: ModelShape, s: _Sizes, mats: _Matrices) -> float:
    m = plan.model
    blk = shape.block_linear_params
    if m.quantization == "4bit":
        frozen = nf4_bytes(blk, m.double_quant)
    elif m.quantization == "8bit":
        frozen = blk + s.L * sum(o for _, o in shape.linear_shapes().values()) * 4
    else:
        frozen = blk * s.act_b
    # Non-quantised parameters after loading: k-bit preparation upcasts norms to fp32.
    frozen += shape.norm_params * (4 if m.quantization != "none" else s.act_b)
    # Each matrix as stored frozen; memory.frozen_copy false drops the original of a fully trained one.
    return frozen + s.matrix * s.frozen_mb * ((1 if s.tied else 2) - mats.dropped_frozen)


@dataclass
class _Optimizer:
    trainable_fp32: int
    trainable_params: int
    weights_trainable: float
    states: float
    grads: float
    matrix_grads: float
    paged: bool
    bnb: bool


def _optimizer(plan, shape: ModelShape, s: _Sizes, mats: _Matrices, eff: Effective) -> _Optimizer:
    """Trainable parameters, their gradients and optimizer states."""
    t, a = plan.training, plan.adapter
    targets = _lora_targets(a.target_modules, shape)
    lora = s.L * sum(a.r * (i + o) for name, (i, o) in shape.linear_shapes().items() if name in targets)
    dora = _dora(plan, shape, s)
    trainable_fp32 = lora + mats.adapter + dora.magnitudes  # LoRA factors, token-row deltas, DoRA: fp32
    full_values = mats.full_copies * s.matrix
    eight = t.optimizer in ("adamw_8bit", "paged_adamw_8bit")
    has_full = mats.full_copies > 0
    paged = t.optimizer == "paged_adamw_8bit" or (eff.matrix_states == "paged_8bit" and has_full)

    def adam_bytes(numel: int, param_bytes: int, embedding: bool) -> float:
        if not eight or numel < BNB_MIN_8BIT_SIZE:
            return 2 * numel * (param_bytes if not eight else 4)
        if embedding:  # the Trainer keeps 32-bit states for nn.Embedding weights
            return 2 * numel * 4
        return 2 * numel + 2 * (numel / BNB_STATE_BLOCK) * 4

    def matrix_states(embedding: bool) -> float:
        if eff.matrix_states == "trainer":
            # The embedding copy is an nn.Embedding (32-bit states under bitsandbytes); the head a Linear.
            return adam_bytes(s.matrix, s.train_mb, embedding)
        if eff.matrix_states == "32bit":  # torch AdamW keeps states in the parameter's dtype
            return 2 * s.matrix * (4 if eight else s.train_mb)
        return 2 * s.matrix + 2 * (s.matrix / BNB_STATE_BLOCK) * 4  # bitsandbytes 8-bit blockwise

    states = adam_bytes(trainable_fp32, 4, False) + sum(matrix_states(r == "embedding") for r in mats.full_roles)
    matrix_grads = full_values * s.train_mb
    return _Optimizer(
        trainable_fp32=trainable_fp32,
        trainable_params=trainable_fp32 + full_values,
        # (token rows also keep a copy of the original rows in the base dtype)
        weights_trainable=trainable_fp32 * 4 + full_values * s.train_mb + mats.frozen_rows * s.frozen_mb,
        states=states,
        grads=trainable_fp32 * 4 + matrix_grads + mats.shadow * 4,
        matrix_grads=matrix_grads,
        paged=paged,
        bnb=eight or (eff.matrix_states in ("8bit", "paged_8bit") and has_full),
    )


@dataclass
class _Activations:
    per_layer_saved: float  # one layer's intermediates (the recomputed layer under checkpointing)
    checkpoints: float  # one hidden state per layer
    total: float  # what forward keeps for backward
    forward: float  # what is alive at the loss: under checkpointing no layer's intermediates


def _activations(plan, shape: ModelShape, s: _Sizes) -> _Activations:
    per_layer = s.T * _layer_activation_factor(
        shape, plan.adapter, s.act_b, _lora_targets(plan.adapter.target_modules, shape)
    )
    checkpoints = s.L * s.T * s.H * s.act_b
    gc = plan.training.gradient_checkpointing
    final = s.T * s.H * 4 * 2  # final norm input/output and the hidden state fed to the head
    total = ((checkpoints + per_layer) if gc else s.L * per_layer) + final
    # Measured at Llama-3-8B's layer width (benchmarks/memory_accuracy.py, wide8b): under
    # checkpointing the recomputed layer exists only in backward.
    forward = (checkpoints if gc else s.L * per_layer) + final
    return _Activations(per_layer_saved=per_layer, checkpoints=checkpoints, total=total, forward=forward)


@dataclass
class _LossRegion:
    forward: float  # logits (or a chunk of them) alive at the end of forward
    backward: float  # the loss's backward temporaries
    head: float  # the head's backward
    head_grad: float  # the head's weight gradient appearing in backward (a row-wise head's: dense)
    loss_grads: float  # gradients that the loss itself creates (the chunked loss: the head's)
    merged_head: float  # a row-wise head merged into a full matrix on every forward


def _loss_region(s: _Sizes, mats: _Matrices, eff: Effective) -> _LossRegion:
    T, V, act_b = s.T, s.V, s.act_b
    head_grad = s.matrix * s.train_mb if mats.head_full else 0
    # Trainable token rows: the head's matmul computes the merged matrix's whole gradient, which
    # is then narrowed to the rows; both matrices are alive in the head's backward (measured at
    # Llama-3-8B width, benchmarks/memory_accuracy.py wide8b).
    head_grad += s.matrix * act_b if mats.head_path == ROWS else 0
    # Under 16-bit autocast an fp32 head weight (PEFT's k-bit upcast, fp32 master weights) is cast
    # to a 16-bit copy for the matmul, which the matmul keeps for its backward (measured: bf16,
    # 4-bit rows of benchmarks/lean_memory.py).
    head_store_b = s.train_mb if mats.head_full else s.frozen_mb
    autocast = s.matrix * act_b if head_store_b != act_b else 0
    # Trainable token rows on the head: each forward builds the merged full matrix, which the
    # head's matmul keeps for its backward.
    merged = s.matrix * s.frozen_mb if mats.head_path == ROWS else 0
    if eff.loss == "standard":
        # log-softmax output + nll gradient + log-softmax gradient, all fp32; LoRA on the head adds
        # its own batch x seq x vocab output in forward.
        second = act_b if mats.head_path == ADAPTER else 0
        return _LossRegion(
            forward=T * V * (act_b + 4 + second) + autocast,
            backward=T * V * 12 + autocast,
            head=T * V * (4 + act_b) + autocast,
            head_grad=head_grad,
            loss_grads=0,
            merged_head=merged,
        )
    # The chunked loss computes logits for labelled tokens only, a chunk of them at a time.
    C = min(eff.loss_chunk, s.N)
    # Preference losses weight each token by its pair's factor, so they take the checkpointed
    # chunks below whatever the head (core.training.lean.label_log_probs).
    if mats.head_path == PLAIN and not s.pairs:
        # core.training.lean's chunked linear cross-entropy: the head's gradient is accumulated in
        # place during the loss (so it exists from then on, and no second one appears in backward);
        # per chunk an fp32 logits buffer (+ its 16-bit matmul output, then a 16-bit gradient); the
        # labelled hidden rows and their gradient.
        chunk = C * V * (4 + (head_store_b if head_store_b != 4 else 0))
        rows = 2 * s.N * s.H * act_b
        return _LossRegion(
            forward=chunk + rows, backward=rows, head=rows, head_grad=0, loss_grads=head_grad, merged_head=merged
        )
    # Any other head (LoRA, token rows): checkpointed chunks, each recomputed in backward.
    chunk = C * V * CHECKPOINTED_CHUNK_BYTES
    return _LossRegion(
        forward=chunk + autocast,
        backward=chunk + autocast,
        head=C * V * (4 + act_b) + autocast,
        head_grad=head_grad,
        loss_grads=0,
        merged_head=merged,
    )


def _phases(plan, shape: ModelShape, s: _Sizes, mats: _Matrices, eff: Effective) -> tuple[dict, _Optimizer]:
    """Each phase's live bytes by category."""
    opt = _optimizer(plan, shape, s, mats, eff)
    act = _activations(plan, shape, s)
    loss = _loss_region(s, mats, eff)
    m = plan.model
    dequant: float = (
        (max(i * o for i, o in shape.linear_shapes().values()) * s.act_b) if m.quantization == "4bit" else 0
    )
    dequant += _dora(plan, shape, s).transient  # DoRA's column norms, built in forward and in recompute
    # Fused AdamW updates in place; bitsandbytes needs only per-block scale buffers.
    opt_tmp = 2 * (opt.trainable_params / BNB_STATE_BLOCK) * 4 if opt.bnb else 0
    # The embedding copy's gradient appears only at the very end of backward (untied: it becomes
    # .grad as is; tied: autograd adds it to the head's .grad out of place, so the new gradient
    # and the sum are two more dense matrices for a moment — measured, hidden-512 rows).
    emb_full = "embedding" in mats.full_roles
    emb_pending = s.matrix * s.train_mb if (emb_full and not s.tied) else 0
    emb_sum = 2 * s.matrix * s.train_mb if (emb_full and s.tied) else 0
    # Trainable token rows on the embedding: the lookup's backward builds the merged matrix's whole
    # gradient before it is narrowed to the rows.
    emb_sum += s.matrix * s.frozen_mb if mats.embedding_path == ROWS else 0
    # The fused step updates each fully trained matrix inside backward and drops its gradient: an
    # untied head's right after the loss's backward, the embedding's (or a tied matrix's) at the
    # very end of backward; none is left for the optimizer step.
    head_part = s.matrix * s.train_mb if ("head" in mats.full_roles and not s.tied) else 0
    body_drop = head_part if eff.fused_step else 0
    step_drop = opt.matrix_grads if eff.fused_step else 0
    checkpointed = plan.training.gradient_checkpointing
    static = {
        "weights_frozen": _frozen_bytes(plan, shape, s, mats),
        "weights_trainable": opt.weights_trainable,
        "optimizer_states": 0 if opt.paged else opt.states,
    }
    phases = {
        "forward_loss": dict(
            activations=act.forward,
            logits_loss=loss.forward,
            gradients=loss.loss_grads,
            transient=dequant + loss.merged_head,
        ),
        "loss_backward": dict(
            activations=act.forward, logits_loss=loss.backward, gradients=loss.loss_grads, transient=loss.merged_head
        ),
        "head_backward": dict(
            activations=act.forward,
            logits_loss=loss.head,
            gradients=loss.head_grad + loss.loss_grads,
            transient=loss.merged_head,
        ),
        "body_backward": dict(
            activations=act.per_layer_saved + (act.checkpoints if checkpointed else act.total),
            gradients=opt.grads - emb_pending - body_drop,
            transient=dequant,
        ),
        "embedding_backward": dict(gradients=opt.grads - body_drop, transient=emb_sum, activations=s.T * s.H * s.act_b),
        "optimizer_step": dict(gradients=opt.grads - step_drop, transient=opt_tmp),
    }
    return {name: {**dict.fromkeys(CATEGORIES, 0.0), **static, **parts} for name, parts in phases.items()}, opt


def tensor_peak(plan, shape: ModelShape, device: str = "cuda", data=None) -> Estimate:
    """Peak of live tensor bytes of ``plan`` on ``shape`` (``device`` "cuda" or "cpu"), no overhead or
    fit; for the batches ``data`` forms (a ``core.estimate.lengths.DataTokens``), else the worst case."""
    from .device import overhead_bytes

    # The memory options as they will run on this device (fallbacks included), as the job sees them.
    eff = resolve(plan, device, tied=shape.tied)
    s = _sizes(plan, shape, eff, data)
    mats = _matrices(plan, shape)
    phases, opt = _phases(plan, shape, s, mats, eff)
    totals = {name: sum(parts.values()) for name, parts in phases.items()}
    peak_phase = max(totals, key=lambda name: totals[name])
    peak = int(totals[peak_phase])
    bd = {k: int(v) for k, v in phases[peak_phase].items()}
    bd["transient"] += peak - sum(bd.values())  # rounding only: keep the sum exact
    overhead = overhead_bytes(peak, device)
    return Estimate(
        tensors_peak_bytes=peak,
        overhead_bytes=overhead,
        total_bytes=peak + overhead,
        breakdown=bd,
        phases={k: int(v) for k, v in totals.items()},
        peak_phase=peak_phase,
        paged_optimizer_states_bytes=int(opt.states) if opt.paged else 0,
        device=device,
        trainable_params=int(opt.trainable_params),
        notes=list(eff.notes) + _method_notes(plan),
    )


def _method_notes(plan) -> list[str]:
    method = plan.training.method
    if method == "sft":
        return []
    note = f"training.method {method}: each example is a chosen and a rejected reply, two rows per example"
    if method == "dpo":
        note += (
            "; the reference model's log-probabilities are computed once before the first step and stored "
            "in the run folder, so no reference model is held in memory while training"
        )
    return [note + "."]


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
    # DoRA keeps the base output and the scaled low-rank output of each adapted layer for its
    # magnitude's gradient (see _dora).
    dora = 2 * sum(shape.linear_shapes()[n][1] for n in targets) * act_b if getattr(a, "dora", False) else 0
    return elems * act_b + fp32_norms + lora_inputs + lora_mid + shape.heads * 4 + dora


# -- DoRA (adapter.dora) ----------------------------------------------------------------------


@dataclass(frozen=True)
class _DoraCost:
    magnitudes: int  # trainable values: one per output of every adapted layer (fp32)
    transient: float  # bytes built in the forward of one adapted layer (and again in its recompute)


def _dora(plan, shape: ModelShape, s: _Sizes) -> _DoraCost:
    """What DoRA adds beyond LoRA, as PEFT builds it: a magnitude vector per adapted layer, and on
    every forward the layer's dense low-rank update (through an identity matrix of in x in, fp32)
    added to its weight for the column norms: in^2 x 4 (+ in^2 x 2 for its 16-bit autocast copy) +
    3 x in x out 16/32-bit values, for the largest adapted layer (the embedding or head trained
    through LoRA is one: vocab x hidden). The activation cost (two outputs per adapted layer and
    token) is in ``_layer_activation_factor``. Measured with the live-tensor tracker on a hidden-512
    Llama: 16.7 KB a token and 10 MB at once vs 16 KB and 9 MB modelled (bfloat16)."""
    a = plan.adapter
    if not a.dora:
        return _DoraCost(0, 0.0)
    shapes = shape.linear_shapes()
    targets = _lora_targets(a.target_modules, shape)
    layers = [shapes[n] for n in targets]
    magnitudes = s.L * sum(o for _, o in layers)
    upcast = 2 if s.act_b != 4 else 0
    transient = max((i * i * (4 + upcast) + 3 * i * o * s.act_b for i, o in layers), default=0)
    for assignment in decide(plan.embeddings, shape.tied):
        if assignment.mode.name != "lora" or assignment.new_rows_only:
            continue
        if assignment.role == "head":
            magnitudes += s.V
            # The head's DoRA runs in every chunk of the loss (recomputed in backward): its dense
            # fp32 update, and chunk x vocab outputs kept for the magnitude's gradient.
            tokens = min(plan.memory.loss_chunk_tokens, s.T) if plan.memory.loss != "standard" else s.T
            transient = max(transient, 4 * s.matrix + DORA_HEAD_OUTPUTS * tokens * s.V * s.act_b)
        else:
            magnitudes += s.H
            transient = max(transient, s.matrix * (4 + 3 * s.act_b))
    return _DoraCost(magnitudes, float(transient))
