"""Lean memory for big vocabularies: the ``memory:`` section of a plan, made real.

With a 128k-token vocabulary the embedding and the LM head dominate training memory twice: as
parameters (each matrix is 525 M values on Llama-3-8B, trained in full with gradients and optimizer
states) and as activations (batch x seq x vocab logits, upcast to fp32 by the loss). Each technique
here is one plan option (``core.plan.schema.MemorySpec``), and ``core.estimate`` models each one:

- ``loss: chunked``   the cross-entropy is computed a chunk of tokens at a time, and its gradients
  with it, so the full-vocabulary logits never exist (``ChunkedLinearCrossEntropy``); a head that
  is not a plain matrix (LoRA on the head, trainable token rows) goes through checkpointed chunks
  instead, whose logits are recomputed in backward. ``loss: fused`` uses Liger-Kernel's or Cut
  Cross-Entropy's fused kernel when one is installed and training runs on CUDA, else ``chunked``.
- ``frozen_copy: false`` PEFT ``modules_to_save`` keeps the frozen original beside the trainable
  copy; here the original's parameter is pointed at the copy, so one matrix exists. The adapter
  folder is unchanged (PEFT's own format), so reloading and exporting work as before. The cost:
  ``disable_adapter()`` no longer shows the original matrix during training.
- ``matrix_dtype`` ``peft`` is what PEFT does (k-bit preparation casts every embedding/head matrix,
  frozen or trained, to fp32); ``model`` keeps them in the model dtype (16-bit master weights:
  approximate); ``float32`` keeps only the trained ones in fp32 (master weights).
- ``matrix_states`` optimizer states of the trained matrices: 8-bit (bitsandbytes blockwise) or
  32-bit, whatever the rest of the model uses; ``trainer`` is the Trainer's own rule (32-bit for
  ``nn.Embedding`` weights under an 8-bit optimizer).
- ``fused_step: true`` the optimizer step for the trained matrices runs inside backward, the
  moment each matrix's gradient is complete (a post-accumulate-grad hook), and the gradient is
  dropped at once. Exact only without gradient accumulation or clipping and without fp16's
  gradient scaler; otherwise ``resolve`` turns it off and says why.

``core.plan.memory_options.resolve`` decides what actually runs (a fused loss without CUDA, paged
states on a CPU, ...); the estimate and the job both read it, so they agree.
"""

from __future__ import annotations

import contextlib
import functools
import weakref

from ..data.reading import IGNORE_INDEX
from ..plan.memory_options import Effective

# -- building the model ------------------------------------------------------------------------


def matrix_parameters(model) -> list:
    """The embedding and head weight Parameters of an (unwrapped) transformers model, once each."""
    out: list = []
    for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
        w = getattr(layer, "weight", None) if layer is not None else None
        if w is not None and all(w is not p for p in out):
            out.append(w)
    return out


def prepare_kbit(model, gradient_checkpointing: bool, keep_dtype: list) -> None:
    """PEFT's ``prepare_model_for_kbit_training`` without the fp32 cast of ``keep_dtype`` parameters.

    Same steps otherwise: freeze everything, cast the other 16-bit parameters (norms) to fp32,
    enable gradient checkpointing (non-reentrant, so no input-grad hook is needed).
    """
    import torch

    keep = {id(p) for p in keep_dtype}
    for p in model.parameters():
        p.requires_grad = False
    for p in model.parameters():
        if p.dtype in (torch.float16, torch.bfloat16) and p.__class__.__name__ != "Params4bit" and id(p) not in keep:
            p.data = p.data.to(torch.float32)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def trained_matrix_parameters(peft_model) -> list:
    """The trainable copies that PEFT ``modules_to_save`` made of the embedding/head (once each)."""
    from peft.utils.other import ModulesToSaveWrapper

    out: list = []
    for module in peft_model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            copy = module.modules_to_save[module.active_adapters[0]]
            for p in copy.parameters():
                if all(p is not q for q in out):
                    out.append(p)
    return out


def set_trained_dtype(peft_model, dtype) -> None:
    """Store the trainable matrix copies in ``dtype`` (fp32 master weights or the model dtype)."""
    for p in trained_matrix_parameters(peft_model):
        if p.dtype != dtype:
            p.data = p.data.to(dtype)


def drop_frozen_copies(peft_model) -> int:
    """Point each ``modules_to_save`` original at its trainable copy, so one matrix exists.

    Returns the number of parameters whose frozen duplicate was released. PEFT still finds the
    wrapper, saves the copy under its usual keys and reloads it as usual; only
    ``disable_adapter()`` during this training run sees the trained matrix instead of the original.
    """
    from peft.utils.other import ModulesToSaveWrapper

    dropped = 0
    for module in peft_model.modules():
        if not isinstance(module, ModulesToSaveWrapper):
            continue
        copy = module.modules_to_save[module.active_adapters[0]]
        for name, p in list(module.original_module.named_parameters(recurse=False)):
            q = getattr(copy, name, None)
            if q is not None and q is not p and q.shape == p.shape:
                setattr(module.original_module, name, q)
                dropped += p.numel()
    return dropped


# -- the loss --------------------------------------------------------------------------------


def plain_head_weight(head):
    """The weight matrix ``head`` applies when it is a plain bias-free linear map (possibly PEFT's
    ``modules_to_save`` copy of one), else None (LoRA on the head, token rows, a bias)."""
    import torch
    from peft.utils.other import ModulesToSaveWrapper

    if isinstance(head, ModulesToSaveWrapper):
        if not head.active_adapters:
            return None
        head = head.modules_to_save[head.active_adapters[0]]
    if type(head) is torch.nn.Linear and head.bias is None:
        return head.weight
    return None


def active_weight(module):
    """The weight a (possibly ``modules_to_save``-wrapped) embedding or head applies, or None."""
    from peft.utils.other import ModulesToSaveWrapper

    if isinstance(module, ModulesToSaveWrapper):
        if not module.active_adapters:
            return None
        module = module.modules_to_save[module.active_adapters[0]]
    return getattr(module, "weight", None)


@contextlib.contextmanager
def head_bypassed(head):
    """Within the block the head module returns its input: the model's "logits" are the final
    hidden states, and the loss applies the head itself, a chunk at a time."""
    had = "forward" in head.__dict__
    old = head.__dict__.get("forward")
    head.forward = lambda x, *args, **kwargs: x
    try:
        yield
    finally:
        if had:
            head.forward = old
        else:
            del head.forward


def unsupported_head_reason(config) -> str | None:
    """Why the model's logits are not simply ``head(hidden)`` (soft-capping, scaling), or None."""
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            return f"the model applies {attr}={value} to its logits"
    return None


_FUNCTION: list = []


def _chunked_function():
    """The autograd Function behind the chunked loss (built on first use: torch loads lazily)."""
    if _FUNCTION:
        return _FUNCTION[0]
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        """Sum of token cross-entropies of ``hidden @ weight.T``, ``chunk`` tokens at a time.

        The gradients for the hidden states and the weight are computed in the same pass (the
        loss ends the graph, so its upstream gradient is a scalar) and handed out in backward:
        the full-vocabulary logits never exist, only one chunk's, and nothing is recomputed. The
        weight's gradient accumulates in place in one buffer of the weight's dtype.
        """

        @staticmethod
        def forward(ctx, hidden, weight, labels, scale, chunk, cd):
            want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            w = weight if weight.dtype == cd else weight.to(cd)
            grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if want_h else None
            grad_w = torch.zeros_like(weight) if want_w else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for s in range(0, hidden.shape[0], chunk):
                h = hidden[s : s + chunk]
                h = h if h.dtype == cd else h.to(cd)
                y = labels[s : s + chunk]
                lf = (h @ w.T).float()  # one chunk's logits, fp32 as transformers' loss upcasts them
                # log-sum-exp in place (no second chunk-sized buffer): loss = lse - target logit.
                target = lf.gather(1, y[:, None]).squeeze(1)
                top = lf.amax(dim=-1)
                lf.sub_(top[:, None]).exp_()
                norm = lf.sum(dim=-1)
                total += (norm.log() + top - target).sum()
                if not (want_h or want_w):
                    del lf
                    continue
                # d(sum of losses)/d(logits) = softmax - one_hot, built in place in the fp32 buffer.
                lf.div_(norm[:, None])
                lf.scatter_add_(1, y[:, None], torch.full((y.shape[0], 1), -1.0, device=lf.device))
                lf.mul_(scale)
                g = lf if cd == torch.float32 else lf.to(cd)
                if want_h:
                    grad_h[s : s + chunk] = (g @ w).to(grad_h.dtype)
                if want_w:
                    if grad_w.dtype == g.dtype:
                        grad_w.addmm_(g.T, h)
                    else:  # fp32 master weights under 16-bit compute: accumulate in fp32
                        grad_w.addmm_(lf.T, h.to(grad_w.dtype))
                del lf, g
            del w
            ctx.grads = (grad_h, grad_w)
            return total * scale

        @staticmethod
        def backward(ctx, grad_out):
            gh, gw = ctx.grads
            ctx.grads = None
            if not bool(grad_out == 1):
                gh = gh * grad_out.to(gh.dtype) if gh is not None else None
                gw = gw.mul_(grad_out.to(gw.dtype)) if gw is not None else None
            return gh, gw, None, None, None, None

    _FUNCTION.append(ChunkedLinearCrossEntropy)
    return ChunkedLinearCrossEntropy


def chunked_linear_cross_entropy(hidden, weight, labels, scale: float, chunk: int):
    """Scaled sum of cross-entropies of ``hidden @ weight.T`` (rows of ``hidden`` all labelled)."""
    import torch

    dev = hidden.device.type
    # The chunk's matmul runs in the weight's dtype: a 16-bit weight as autocast would run it, an
    # fp32 one (master weights, or PEFT's k-bit upcast) in fp32 rather than through a 16-bit copy
    # of the whole matrix (which autocast would make).
    cd = weight.dtype
    with torch.autocast(dev, enabled=False):  # dtypes are handled explicitly inside
        return _chunked_function().apply(hidden, weight, labels, scale, chunk, cd)


def _checkpointed_chunks(head, hidden, labels, scale: float, chunk: int):
    """Sum of token cross-entropies for any head module, chunk by chunk; each chunk's logits are
    recomputed in backward (``torch.utils.checkpoint``), so only one chunk's ever live."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    def piece(h, y):
        return F.cross_entropy(head(h).float(), y, reduction="sum")

    total = None
    for s in range(0, hidden.shape[0], chunk):
        part = (
            checkpoint(piece, hidden[s : s + chunk], labels[s : s + chunk], use_reentrant=False)
            if torch.is_grad_enabled()
            else piece(hidden[s : s + chunk], labels[s : s + chunk])
        )
        total = part if total is None else total + part
    if total is None:
        total = hidden.sum() * 0.0
    return total * scale


def label_log_probs(head, hidden, labels, chunk: int = 256):
    """Log-probabilities of the labelled next tokens under ``head(hidden)`` (labels shifted here,
    -100 masked): (a vector over the labelled tokens, their flat positions in ``labels[:, 1:]``).

    Chunk by chunk like ``_checkpointed_chunks``: each chunk's logits are recomputed in backward,
    so only one chunk's ever live, for any head. Preference losses weight each token's
    log-probability by a factor known only after the forward (its pair's sigmoid), which the fused
    cross-entropy's scalar scale cannot express, hence the recomputation here."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    shift = labels[:, 1:].reshape(-1)
    keep = (shift != IGNORE_INDEX).nonzero().squeeze(1)
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, keep)
    y = shift.index_select(0, keep)

    def piece(hc, yc):
        return -F.cross_entropy(head(hc).float(), yc, reduction="none")

    parts = []
    for s in range(0, h.shape[0], chunk):
        if torch.is_grad_enabled():
            parts.append(checkpoint(piece, h[s : s + chunk], y[s : s + chunk], use_reentrant=False))
        else:
            parts.append(piece(h[s : s + chunk], y[s : s + chunk]))
    out = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32) + hidden.sum() * 0.0
    return out, keep


def _fused_library_loss(backend: str, weight, hidden, labels, scale: float):
    if backend == "liger":
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
        return loss_fn(weight, hidden.to(weight.dtype), labels) * scale
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(hidden.to(weight.dtype), weight, labels, reduction="sum") * scale


def causal_lm_loss(
    head, hidden, labels, num_items_in_batch=None, eff: Effective | None = None, kind: str = "chunked", chunk: int = 256
):
    """Next-token cross-entropy of ``head(hidden)`` against ``labels`` (shifted here, -100 masked),
    summed and divided by ``num_items_in_batch`` when given, else by the number of labelled tokens:
    the same value as transformers' ``ForCausalLMLoss``, without full-vocabulary logits."""
    import torch

    if eff is not None:
        kind, chunk = eff.loss, eff.loss_chunk
    shift = labels[:, 1:].reshape(-1)
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    keep = (shift != IGNORE_INDEX).nonzero().squeeze(1)
    h, y = h.index_select(0, keep), shift.index_select(0, keep)
    if num_items_in_batch is not None:
        denom = float(num_items_in_batch.item() if torch.is_tensor(num_items_in_batch) else num_items_in_batch)
    else:
        denom = float(y.numel())
    scale = 1.0 / denom if denom > 0 else 0.0
    if y.numel() == 0:
        return hidden.sum() * 0.0
    weight = plain_head_weight(head)
    if kind == "fused" and weight is not None and eff is not None and eff.fused_backend:
        return _fused_library_loss(eff.fused_backend, weight, h, y, scale)
    if weight is not None:
        return chunked_linear_cross_entropy(h, weight, y, scale, chunk)
    return _checkpointed_chunks(head, h, y, scale, chunk)


# -- optimizer -------------------------------------------------------------------------------


class FusedMatrixStep:
    """Steps the trained matrices inside backward, as soon as each one's gradient is complete.

    Each matrix gets its own optimizer (same algorithm and state precision as it would have had);
    its learning rate, weight decay and betas are read from the main optimizer's group at every
    step, so the schedule applies unchanged. The main optimizer keeps the matrices in its groups
    (the scheduler and checkpoints keep their layout) but never sees a gradient for them.
    """

    def __init__(self, main_optimizer, params: list, bits: dict | None = None, paged: bool = False):
        """``bits``: id(param) -> 8 or 32 for bitsandbytes AdamW (as the main optimizer would have
        used); None for torch's fused AdamW, like the main one."""
        import torch

        self.main = main_optimizer
        self.params = list(params)
        self.optimizers = {}
        self.handles = []
        for p in self.params:
            opt: torch.optim.Optimizer
            if bits is not None:
                import bitsandbytes as bnb

                opt = bnb.optim.AdamW([p], optim_bits=bits[id(p)], is_paged=paged)
            else:
                opt = torch.optim.AdamW([p], fused=True)
            self.optimizers[p] = opt
            # A weak reference: a tensor hook is invisible to Python's garbage collector, so a
            # strong one would keep this object, the optimizer and the whole model alive.
            self.handles.append(p.register_post_accumulate_grad_hook(functools.partial(_fused_hook, weakref.ref(self))))

    def _group_of(self, p) -> dict:
        for group in self.main.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise RuntimeError("a fused-step parameter is not in the main optimizer")

    def _step(self, p) -> None:
        import torch

        main = self._group_of(p)
        opt = self.optimizers[p]
        for g in opt.param_groups:
            for key in ("lr", "weight_decay", "betas", "eps"):
                if key in main:
                    g[key] = main[key]
        with torch.no_grad():
            opt.step()
        p.grad = None

    def state_dict(self) -> list:
        return [self.optimizers[p].state_dict() for p in self.params]

    def load_state_dict(self, states: list) -> None:
        for p, sd in zip(self.params, states):
            self.optimizers[p].load_state_dict(sd)

    def remove(self) -> None:
        """Detach the hooks (the job calls this when training ends)."""
        for h in self.handles:
            h.remove()
        self.handles = []


def _fused_hook(ref, p) -> None:
    owner = ref()
    if owner is not None:
        owner._step(p)
