"""transformers ``Trainer`` glue: the embedding/head learning-rate group and the job's callback.

The callback turns the Trainer's hooks into Headtune events (step, eval, memory, checkpoint)
and turns a stop request into "save a checkpoint, then end" at the next step boundary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from .. import events as ev


class HeadtuneTrainer(Trainer):
    """A Trainer whose embedding/head parameters form their own optimizer group(s)."""

    def __init__(
        self, *args, embedding_param_names: Iterable[str] = (), embedding_lr: float | None = None, lean=None, **kwargs
    ):
        self.embedding_param_names = set(embedding_param_names)
        self.embedding_lr = embedding_lr
        self.lean = lean  # core.plan.memory_options.Effective: the memory options as they run (None: stock behaviour)
        self.fused_step = None
        super().__init__(*args, **kwargs)

    # -- the loss: chunked / fused, never the full-vocabulary logits --------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.lean is None or self.lean.loss == "standard" or "labels" not in inputs:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        from . import lean

        inputs = dict(inputs)
        labels = inputs.pop("labels")
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        # The model runs as usual (its autocast, checkpointing, PEFT wrappers) up to the head;
        # the head is applied by the loss, one chunk at a time.
        with lean.head_bypassed(head):
            outputs = model(**inputs)
        hidden = outputs.logits
        outputs.logits = None
        with self.accelerator.autocast():
            loss = lean.causal_lm_loss(head, hidden, labels, num_items_in_batch, self.lean)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in opt_model.named_parameters():
            if p.requires_grad:
                groups.setdefault((name in self.embedding_param_names, name in decay), []).append(p)
        param_groups = []
        # A fixed order (body, then embeddings) keeps optimizer state loadable on resume.
        for is_emb in (False, True):
            for is_decay in (True, False):
                params = groups.get((is_emb, is_decay))
                if not params:
                    continue
                group = {"params": params, "weight_decay": self.args.weight_decay if is_decay else 0.0}
                if is_emb and self.embedding_lr is not None:
                    group["lr"] = self.embedding_lr
                param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        release_bnb_overrides()  # stale entries of an earlier run in this process (ids get reused)
        states = self.lean.matrix_states if self.lean is not None else "trainer"
        from .lean import trained_matrix_parameters

        matrices = [p for p in trained_matrix_parameters(opt_model) if p.requires_grad]
        is_bnb = "bitsandbytes" in str(optimizer_cls)
        if matrices and states in ("8bit", "paged_8bit") and not is_bnb:
            # 8-bit states for the matrices under a 32-bit optimizer: one bitsandbytes AdamW with
            # 32-bit states for everything else and an 8-bit override for the matrices.
            import bitsandbytes

            optimizer_cls, is_bnb = bitsandbytes.optim.AdamW, True
            optimizer_kwargs = {
                "lr": self.args.learning_rate,
                "betas": (self.args.adam_beta1, self.args.adam_beta2),
                "eps": self.args.adam_epsilon,
                "optim_bits": 32,
                "is_paged": states == "paged_8bit",
            }
        elif is_bnb and states == "paged_8bit":
            optimizer_kwargs["is_paged"] = True
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        bits = None  # id(matrix) -> state bits, when bitsandbytes steps them
        if is_bnb:
            import bitsandbytes

            manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
            default_bits = optimizer_kwargs.get("optim_bits", 32)
            embedding_weights = {id(m.weight) for m in opt_model.modules() if isinstance(m, nn.Embedding)}
            if states == "trainer":
                if default_bits == 8:
                    # Same as the stock Trainer: 32-bit states for nn.Embedding weights under 8-bit Adam.
                    for module in opt_model.modules():
                        if isinstance(module, nn.Embedding):
                            manager.register_module_override(module, "weight", {"optim_bits": 32})
                bits = {id(p): 32 if id(p) in embedding_weights else default_bits for p in matrices}
            elif matrices:
                manager.override_config(matrices, key_value_dict={"optim_bits": 32 if states == "32bit" else 8})
                bits = {id(p): 32 if states == "32bit" else 8 for p in matrices}
        if self.lean is not None and self.lean.fused_step and matrices:
            from .lean import FusedMatrixStep

            self.fused_step = FusedMatrixStep(
                self.optimizer, matrices, bits, paged=bool(optimizer_kwargs.get("is_paged")) if is_bnb else False
            )
        return self.optimizer

    # The fused step's per-matrix optimizer states travel with the checkpoint, beside the
    # Trainer's own optimizer.pt.
    FUSED_STATES = "matrix_optimizer.pt"

    def _save_optimizer_and_scheduler(self, output_dir):
        super()._save_optimizer_and_scheduler(output_dir)
        if self.fused_step is not None and self.args.should_save:
            torch.save(self.fused_step.state_dict(), f"{output_dir}/{self.FUSED_STATES}")

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        import os

        if checkpoint and self.fused_step is not None and os.path.isfile(f"{checkpoint}/{self.FUSED_STATES}"):
            self.fused_step.load_state_dict(torch.load(f"{checkpoint}/{self.FUSED_STATES}", weights_only=False))


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x.item() if isinstance(x, torch.Tensor) else x)
    return x if math.isfinite(x) else None


class JobCallback(TrainerCallback):
    """Translates Trainer hooks into events on ``job`` and applies its stop flag."""

    MEMORY_EVERY_S = 0.5

    def __init__(self, job):
        self.job = job
        self._t0 = time.perf_counter()
        self._tokens0 = 0
        self._tps = 0.0
        self._last_memory = 0.0

    def _reset_clock(self, state) -> None:
        self._t0 = time.perf_counter()
        self._tokens0 = state.num_input_tokens_seen

    def on_train_begin(self, args, state, control, **kw):
        self._reset_clock(state)
        self.job.emit(ev.Log(message=f"Training {state.max_steps} steps from step {state.global_step}"))

    def _apply_stop(self, control) -> None:
        if self.job.stop_requested and not control.should_training_stop:
            control.should_training_stop = True
            control.should_save = True

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        dt = now - self._t0
        self._tps = (state.num_input_tokens_seen - self._tokens0) / dt if dt > 0 else 0.0
        self._reset_clock(state)
        self.job.step = state.global_step
        if now - self._last_memory >= self.MEMORY_EVERY_S or state.global_step == 1:
            self._last_memory = now
            self.job.emit(memory_sample(state.global_step))
        self._apply_stop(control)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "loss" in logs and self._diverged(logs, state, control):
            return
        if "loss" in logs:
            self.job.emit(
                ev.Step(
                    step=state.global_step,
                    total_steps=state.max_steps,
                    loss=float(logs["loss"]),
                    learning_rate=float(logs.get("learning_rate", 0.0)),
                    grad_norm=_finite(logs.get("grad_norm")),
                    tokens_per_s=round(self._tps, 1),
                    epoch=float(logs.get("epoch") or 0.0),
                )
            )
        self._apply_stop(control)

    def _diverged(self, logs: dict, state, control) -> bool:
        """A loss or gradient that is not a finite number ends the run at once, saving nothing of
        this step: the weights after it are not finite either."""
        bad = [name for name in ("loss", "grad_norm") if logs.get(name) is not None and _finite(logs[name]) is None]
        if not bad:
            return False
        self.job.diverged = (
            state.global_step,
            " and ".join("the loss" if b == "loss" else "the gradient" for b in bad),
        )
        control.should_training_stop = True
        control.should_save = False
        control.should_evaluate = False
        return True

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if metrics and "eval_loss" in metrics:
            self.job.emit(ev.Eval(step=state.global_step, eval_loss=float(metrics["eval_loss"])))
        self._reset_clock(state)

    def on_save(self, args, state, control, **kw):
        path = f"{args.output_dir}/checkpoint-{state.global_step}"
        self.job.emit(ev.Checkpoint(step=state.global_step, path=path))
        self._reset_clock(state)


def release_bnb_overrides() -> None:
    """Empty bitsandbytes' process-wide override registry.

    The stock Trainer registers every ``nn.Embedding`` there and never removes it, which keeps
    whole models alive after their run and lets later runs match stale parameter ids: a leak in a
    long-lived process such as the window (found by the memory benchmark).
    """
    import sys

    bnb = sys.modules.get("bitsandbytes")
    if bnb is not None:
        bnb.optim.GlobalOptimManager.get_instance().initialize()


def memory_sample(step: int) -> ev.Memory:
    import psutil
    import torch

    rss = psutil.Process().memory_info().rss
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return ev.Memory(
            step=step,
            rss_bytes=rss,
            cuda_allocated_bytes=torch.cuda.memory_allocated(),
            cuda_reserved_bytes=torch.cuda.memory_reserved(),
            cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(),
        )
    return ev.Memory(step=step, rss_bytes=rss)
