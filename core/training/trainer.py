"""transformers ``Trainer`` glue: the embedding/head learning-rate group, crash-safe checkpoints
and the job's callback.

Checkpoints are written whole or not at all: the Trainer writes each one into
``checkpoints/.partial/``, where it is sealed with a manifest and renamed into place (see
``core.runfolder``), after a check that it will fit on disk. Everything a resume loads is read
with ``torch.load(weights_only=True)``: a checkpoint from elsewhere cannot run code.

The callback turns the Trainer's hooks into Headtune events (step, eval, memory, checkpoint)
and turns a stop request into "save a checkpoint, then end" at the next step boundary.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from .. import events as ev
from .. import runfolder
from ..data.reading import IGNORE_INDEX
from ..errors import BadInputError, RunError
from . import distributed
from .adapters import aliased_parameters, fold_aliased_gradients, restore_aliases

GiB = 1024**3


class HeadtuneTrainer(Trainer):
    """A Trainer whose embedding/head parameters form their own optimizer group(s)."""

    def __init__(
        self,
        *args,
        embedding_param_names: Iterable[str] = (),
        embedding_lr: float | None = None,
        lean=None,
        loraplus_ratio: float = 1.0,
        sharded: bool = False,
        fsdp: bool = False,
        preference=None,
        **kwargs,
    ):
        self.embedding_param_names = set(embedding_param_names)
        self.embedding_lr = embedding_lr
        self.loraplus_ratio = loraplus_ratio  # LoRA+: the B matrices' learning rate over the A matrices'
        self.lean = lean  # core.plan.memory_options.Effective: the memory options as they run (None: stock behaviour)
        self.fused_step = None
        self.checkpoint_bytes = 0  # the job's estimate of one checkpoint, until one is written
        # core.training.preference.Preference for dpo / orpo (None: next-token loss). Its loss is a
        # mean over each micro-batch's pairs, which the Trainer divides by the accumulation steps.
        self.preference = preference
        if preference is not None:
            self.loss_is_scaled_for_ga = False
        self._pref_sums: dict[str, float] = {}  # reward figures since the last logged step
        self._staging: str | None = None
        model = kwargs.get("model", args[0] if args else None)
        self.aliased = aliased_parameters(model)  # LoRA on a tied head: the embedding's factors
        super().__init__(*args, **kwargs)
        self.sharded = sharded  # the model is FSDP-sharded (core.training.sharding) before training
        self.fsdp = fsdp  # the plan asks for FSDP (its checkpoints' optimizer state is keyed by name)
        if sharded:
            # The Trainer's path for a model that holds its own shards and reduces its own gradients:
            # Accelerate adds autocast but no DDP wrapper, gradient clipping spans the shards.
            self.is_distributed_loading_by_transformers = True

    # -- sharded models (FSDP): accumulation, whole-tensor saves, the optimizer state --------
    @contextlib.contextmanager
    def _defer_fsdp_gradient_reduction(self):
        """Micro-batches before the last one of an accumulation keep their gradients unreduced."""
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def save_model(self, output_dir=None, _internal_call=False):
        if not self.sharded:
            return super().save_model(output_dir, _internal_call)
        from . import sharding

        # Every process gathers, together; the Trainer's save then writes on the main process only
        # (the adapter from the whole tensors, the tokenizer, the training arguments).
        self._save(output_dir, state_dict=sharding.gathered_state_dict(self.model))
        return None

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Moving the model to its device (the Trainer's, Accelerate's) copies each parameter on its
        # own, parting an alias from the memory it shares.
        restore_aliases(self.model, self.aliased)
        loss = super().training_step(model, inputs, num_items_in_batch)
        fold_aliased_gradients(self.model, self.aliased)
        return loss

    # -- the loss: chunked / fused, never the full-vocabulary logits --------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.preference is not None:
            return self._preference_loss(model, inputs, return_outputs)
        if "position_ids" in inputs:
            # A padding-free batch (core.data.examples.FlatCollator): its attention_mask only counted
            # tokens; without it the model keeps the rows apart by their positions.
            inputs = {k: v for k, v in inputs.items() if k != "attention_mask"}
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

    def _preference_loss(self, model, inputs, return_outputs=False):
        from . import preference

        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        # Under autocast as a whole: the head, applied outside the model's forward, meets the hidden
        # states in the compute dtype (as the next-token loss does).
        with self.accelerator.autocast():
            sums, counts = preference.sequence_log_probs(model, head, inputs, self.lean)
            result = preference.pair_loss(self.preference, sums, counts, inputs)
        if model.training:
            self._note_rewards(result)
        return (result.loss, result) if return_outputs else result.loss

    def _note_rewards(self, result) -> None:
        sums = self._pref_sums
        for name, values in (
            ("reward_chosen", result.chosen),
            ("reward_rejected", result.rejected),
            ("reward_margin", result.margin),
            ("reward_accuracy", (result.margin > 0).float()),
        ):
            sums[name] = sums.get(name, 0.0) + float(values.sum())
        sums["pairs"] = sums.get("pairs", 0.0) + float(result.margin.numel())

    REWARD_SUMS = ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy", "pairs")

    def log(self, logs, *args, **kwargs):
        """The step's reward figures (means over the pairs since the last log, on every process:
        the training loss's log is reached by all of them) join the loss."""
        if "loss" in logs and self.preference is not None:
            sums = distributed.sum_over_ranks([self._pref_sums.get(k, 0.0) for k in self.REWARD_SUMS])
            self._pref_sums = {}
            pairs = sums[-1]
            if pairs:
                logs = {**logs, **{k: v / pairs for k, v in zip(self.REWARD_SUMS[:-1], sums[:-1])}}
        return super().log(logs, *args, **kwargs)

    def _preference_evaluation(self, rows: list, metric_key_prefix: str) -> dict:
        """Validation of preference pairs: the mean loss and reward accuracy over every pair."""
        mine = [rows[i] for i in range(self.args.process_index, len(rows), self.args.world_size)]
        model = self.model
        assert model is not None
        was_training = model.training
        model.eval()
        loss, correct, margin = 0.0, 0.0, 0.0
        size = self.args.eval_batch_size
        try:
            with torch.no_grad():
                for s in range(0, len(mine), size):
                    inputs = self._prepare_inputs(self.data_collator(mine[s : s + size]))
                    with self.compute_loss_context_manager(), self.accelerator.autocast():
                        _loss, result = self._preference_loss(model, inputs, return_outputs=True)
                    n = result.margin.numel()
                    loss += float(result.loss) * n
                    correct += float((result.margin > 0).float().sum())
                    margin += float(result.margin.sum())
        finally:
            model.train(was_training)
        loss, correct, margin, count = distributed.sum_over_ranks([loss, correct, margin, float(len(mine))])
        nan = float("nan")
        return {
            f"{metric_key_prefix}_loss": loss / count if count else nan,
            f"{metric_key_prefix}_reward_accuracy": correct / count if count else nan,
            f"{metric_key_prefix}_reward_margin": margin / count if count else nan,
        }

    # -- evaluation: one token-weighted loss over the whole validation set ---------------------
    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """The validation loss summed over labelled tokens on this process's share of the
        validation rows (every world-size-th row), the sums added up across processes, divided by
        the tokens: the same quantity whatever the number of processes or the batch size. (The
        stock loop averages per-batch means weighted by rows, over shares padded to equal size.)"""
        from transformers.trainer_utils import EvalLoopOutput

        rows = self.eval_dataset if self.eval_dataset is not None else dataloader.dataset
        if self.preference is not None and isinstance(rows, list) and rows:
            metrics = self._preference_evaluation(rows, metric_key_prefix)
            return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(rows))
        if not isinstance(rows, list) or not rows or "labels" not in rows[0]:  # not next-token rows
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        mine = [rows[i] for i in range(self.args.process_index, len(rows), self.args.world_size)]
        model = self.model
        was_training = model.training
        model.eval()
        total, tokens = 0.0, 0
        size = self.args.eval_batch_size
        try:
            with torch.no_grad():
                for s in range(0, len(mine), size):
                    inputs = self._prepare_inputs(self.data_collator(mine[s : s + size]))
                    n = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
                    if n == 0:
                        continue
                    with self.compute_loss_context_manager(), self.accelerator.autocast():
                        loss = self.compute_loss(model, inputs)  # the mean over this batch's tokens
                    total += float(loss.detach().float()) * n
                    tokens += n
        finally:
            model.train(was_training)
        total, count = distributed.sum_over_ranks([total, float(tokens)])
        metrics = {f"{metric_key_prefix}_loss": total / count if count else float("nan")}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(rows))

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool, bool], list] = {}
        for name, p in opt_model.named_parameters():
            if p.requires_grad:
                is_emb = name in self.embedding_param_names
                faster = self.loraplus_ratio != 1.0 and not is_emb and is_loraplus_b(name)
                groups.setdefault((is_emb, faster, name in decay), []).append(p)
        param_groups = []
        # A fixed order (body, LoRA+'s B matrices, then embeddings) keeps optimizer state loadable on resume.
        for is_emb, faster in ((False, False), (False, True), (True, False)):
            for is_decay in (True, False):
                params = groups.get((is_emb, faster, is_decay))
                if not params:
                    continue
                group = {"params": params, "weight_decay": self.args.weight_decay if is_decay else 0.0}
                if is_emb and self.embedding_lr is not None:
                    group["lr"] = self.embedding_lr
                if faster:
                    group["lr"] = self.args.learning_rate * self.loraplus_ratio
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

    # -- checkpoints: written whole or not at all ----------------------------------------------
    def _get_output_dir(self, trial):
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        root = Path(self.args.output_dir)
        name = f"{runfolder.CHECKPOINT_PREFIX}{self.state.global_step}"
        staging = root / runfolder.STAGING
        if self.args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)  # left by an earlier attempt
            staging.mkdir(parents=True, exist_ok=True)
            check_free_disk(root, self._next_checkpoint_bytes(root), name)
        # The Trainer writes (and rotates) inside the staging folder; nothing reads a checkpoint there.
        # Under a distributed launcher every process writes its random state into the same folder,
        # so all of them finish before the main process seals it and renames it.
        self._barrier()
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self._barrier()
        if self.args.should_save:
            runfolder.seal(staging / name, step=self.state.global_step)
            runfolder.place(staging / name, root / name, staging / f"replaced-{name}")
            self._rotate(root)
            with contextlib.suppress(OSError):
                staging.rmdir()  # only when empty

    def _barrier(self) -> None:
        if self.args.world_size > 1:
            self.accelerator.wait_for_everyone()

    def _next_checkpoint_bytes(self, root: Path) -> int:
        written = [runfolder.folder_bytes(p) for p in runfolder.RunFolder(root.parent).checkpoints()]
        return max(written[-1] if written else 0, self.checkpoint_bytes)

    def _rotate(self, root: Path) -> None:
        """Keep the newest ``save_total_limit`` checkpoints; an old one is renamed into the staging
        folder before it is deleted, so a kill mid-delete never leaves a half checkpoint in place."""
        limit = self.args.save_total_limit
        if not limit or limit <= 0:
            return
        for old in runfolder.RunFolder(root.parent).checkpoints()[:-limit]:
            doomed = root / runfolder.STAGING / f"deleting-{old.name}"
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    # The fused step's per-matrix optimizer states travel with the checkpoint, beside the
    # Trainer's own optimizer.pt.
    FUSED_STATES = "matrix_optimizer.pt"

    # Under training.sharding: fsdp, optimizer.pt holds the state gathered whole and keyed by
    # parameter name (a one-process run's is keyed by position), so a resume on any number of
    # processes scatters it back into its own shards.
    def _save_optimizer_and_scheduler(self, output_dir):
        if self.fsdp:
            from . import sharding

            state = sharding.gathered_optimizer_state(self.model, self.optimizer)  # every process, together
            if self.args.should_save:
                torch.save(state, f"{output_dir}/optimizer.pt")
                torch.save(self.lr_scheduler.state_dict(), f"{output_dir}/scheduler.pt")
            return
        super()._save_optimizer_and_scheduler(output_dir)
        if self.fused_step is not None and self.args.should_save:
            torch.save(self.fused_step.state_dict(), f"{output_dir}/{self.FUSED_STATES}")

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint and self.fsdp:
            from . import sharding

            with refuse_unsafe(checkpoint):
                sharding.load_optimizer_state(self.model, self.optimizer, safe_load(f"{checkpoint}/optimizer.pt"))
                self.lr_scheduler.load_state_dict(safe_load(f"{checkpoint}/scheduler.pt"))
            return
        with refuse_unsafe(checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint and self.fused_step is not None and os.path.isfile(f"{checkpoint}/{self.FUSED_STATES}"):
                self.fused_step.load_state_dict(safe_load(f"{checkpoint}/{self.FUSED_STATES}"))

    def _load_rng_state(self, checkpoint):
        with refuse_unsafe(checkpoint):
            super()._load_rng_state(checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.sharded:  # the job loaded the checkpoint's weights before sharding the model
            return
        with refuse_unsafe(resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)


def is_loraplus_b(name: str) -> bool:
    """Whether LoRA+ gives a parameter the higher learning rate: the B matrices and, as PEFT's
    ``create_loraplus_optimizer`` does, DoRA's magnitude vectors."""
    return "lora_B" in name or "lora_embedding_B" in name or "lora_magnitude_vector" in name


# The files of a checkpoint that torch.load reads (training_args.bin is written by the Trainer
# for reference and never read back).
TORCH_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "matrix_optimizer.pt")


def safe_load(path: str | os.PathLike, mmap: bool = False):
    """``torch.load`` that accepts tensors and plain containers only (never code); numpy's RNG
    state, which the Trainer saves, is allowed by name."""
    from transformers.trainer import safe_globals

    with safe_globals():
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


@contextlib.contextmanager
def refuse_unsafe(checkpoint):
    """Turn a checkpoint file that holds more than tensors into a clear refusal."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        raise BadInputError(unsafe_message(checkpoint, exc)) from None


def unsafe_message(where, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"Refused to load {where}: it holds Python objects other than tensors and plain values, "
        f"which could run code on this computer ({first}). Resume only run folders you trust, or "
        "delete that checkpoint to resume from an earlier one."
    )


def check_loadable(checkpoint: str | os.PathLike) -> None:
    """Read every file a resume will ``torch.load`` from ``checkpoint`` with the safe loader, before
    any model loads; a file that is not plain tensors is refused (``BadInputError``)."""
    folder = Path(checkpoint)
    for path in sorted(folder.iterdir()):
        if path.name in TORCH_FILES or (path.name.startswith("rng_state") and path.suffix == ".pth"):
            try:
                try:
                    safe_load(path, mmap=True)
                except RuntimeError:  # written in the legacy (non-zip) format, which cannot be mapped
                    safe_load(path)
            except pickle.UnpicklingError as exc:
                raise BadInputError(unsafe_message(path, exc)) from None


def check_free_disk(folder: Path, need: int, what: str) -> None:
    """Refuse to start a write that cannot fit (``RunError``): a full disk mid-write would leave
    it cut short."""
    need = int(need * 1.1) + 16 * 1024**2
    free = shutil.disk_usage(folder).free
    if free < need:
        raise RunError(
            f"Not enough free disk space to save the {what} in {folder}: it needs about {need / GiB:.2f} GiB "
            f"and {free / GiB:.2f} GiB is free. The last complete checkpoint is kept; free some space and "
            "resume the run."
        )


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x.item() if isinstance(x, torch.Tensor) else x)
    return x if math.isfinite(x) else None


REWARD_KEYS = ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy")


class JobCallback(TrainerCallback):
    """Translates Trainer hooks into events on ``job`` and applies its stop flag."""

    MEMORY_EVERY_S = 0.5

    def __init__(self, job):
        self.job = job
        self._t0 = time.perf_counter()
        self._tokens0 = 0
        self._tps = 0.0
        self._last_memory = 0.0
        self._agreed_stop = False  # under a launcher: a stop every process has heard of

    def _reset_clock(self, state) -> None:
        self._t0 = time.perf_counter()
        self._tokens0 = state.num_input_tokens_seen

    def on_train_begin(self, args, state, control, **kw):
        self._reset_clock(state)
        self.job.emit(ev.Log(message=f"Training {state.max_steps} steps from step {state.global_step}"))

    def _apply_stop(self, control) -> None:
        # Under a launcher a stop request may reach one process only, and between two step ends:
        # only the stop agreed at a step end applies, so all processes stop after the same step.
        wanted = self._agreed_stop if distributed.active() else self.job.stop_requested
        if wanted and not control.should_training_stop:
            control.should_training_stop = True
            control.should_save = True

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        dt = now - self._t0
        self._tps = (state.num_input_tokens_seen - self._tokens0) / dt if dt > 0 else 0.0
        self._reset_clock(state)
        self.job.step = state.global_step
        if distributed.active() and distributed.any_rank(self.job.stop_requested):
            self._agreed_stop = True
            self.job.request_stop()
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
                    **{k: _finite(logs.get(k)) for k in REWARD_KEYS},
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
            self.job.emit(
                ev.Eval(
                    step=state.global_step,
                    eval_loss=float(metrics["eval_loss"]),
                    eval_reward_accuracy=_finite(metrics.get("eval_reward_accuracy")),
                    eval_reward_margin=_finite(metrics.get("eval_reward_margin")),
                )
            )
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
