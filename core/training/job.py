"""The training job: runs one plan, emits typed events, honours a stop request between steps.

Plain Python and no Qt, so the same object runs under ``headtune train``, inside the window's
worker thread, or under ``accelerate launch`` / ``torchrun`` (the loop is transformers'
``Trainer``, which handles devices, accumulation, schedules, checkpoints and resume).

Order matters for "bad input writes nothing": the plan, the model source, the tokenizer, the
dataset and the model are all checked and loaded *before* the run folder is created, so a run
refused for any of those leaves no trace on disk.

Never losing a run: the job holds the run folder's lock (``core.runfolder.RunLock``) from its
first write to its end, so a second run or an export is refused rather than interleaved. A resume
takes the newest checkpoint that was written whole (partial ones are reported and removed),
refuses one whose training state is missing or whose files are not plain tensors, does nothing
for a run that already finished its step budget, and rewrites a final adapter whose save was cut
short. The adapter is written like a checkpoint: sealed in ``adapter.tmp/``, then swapped in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

from .. import events as ev
from .. import runfolder
from ..data.examples import PreparedData, check_round_trip, collator_for, prepare
from ..embeddings import setup as setup_mod
from ..embeddings.setup import embedding_parameter_names
from ..embeddings.untrained import init_untrained_mean
from ..errors import HeadtuneError, InternalError, OutOfMemoryError, PlanError, RunError, RunFolderBusyError
from ..model import sources
from ..plan import Plan, load_plan
from ..plan.loading import read_plan_file
from ..plan.memory_options import resolve as resolve_memory_options
from ..runfolder import RunFolder, check_writable, checkpoint_step
from . import adapters, distributed, lean, padding_free, preference, sharding
from .trainer import check_free_disk, check_loadable, memory_sample, release_bnb_overrides

# "adamw" is PyTorch's fused AdamW (the Trainer's default): fastest, no step-wide temporaries.
OPTIMIZERS = {"adamw": "adamw_torch_fused", "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}
# Keys that may differ when a run is resumed: only the step budget.
RESUMABLE_KEYS = {"training.max_steps", "training.epochs"}
# What a plan without a memory: section (written before it existed) ran: the stock recipe.
LEGACY_MEMORY = (
    "memory.loss=standard",
    "memory.frozen_copy=true",
    "memory.matrix_dtype=peft",
    "memory.matrix_states=trainer",
    "memory.fused_step=false",
)
GiB = 1024**3


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_plan(run_dir: str | os.PathLike, overrides: Iterable[str] = ()) -> Plan:
    """The plan of an existing run, with step-budget overrides only."""
    run_dir = Path(run_dir)
    plan_file = RunFolder(run_dir).plan_file
    if not plan_file.is_file():
        raise PlanError(
            f"{run_dir} is not a Headtune run folder (it has no {plan_file.name}), so it cannot be resumed."
        )
    # A run started before the memory: section existed ran the stock recipe; resume it that way
    # (its optimizer states were made for it).
    written = read_plan_file(plan_file)
    legacy = [] if "memory" in written else list(LEGACY_MEMORY)
    saved = load_plan(plan_file, legacy)
    plan = load_plan(plan_file, legacy + list(overrides))
    changed = sorted(
        k
        for k, v in _flatten(plan.to_dict()).items()
        if _flatten(saved.to_dict()).get(k) != v and k not in RESUMABLE_KEYS
    )
    if changed:
        raise PlanError(
            f"A resumed run must use the plan it started with; only the step budget "
            f"({', '.join(sorted(RESUMABLE_KEYS))}) may change. Changed: {', '.join(changed)}.",
            changed[0],
        )
    plan.output.dir = str(run_dir.resolve())
    return plan


def oom_message(device: str, step: int | None, plan: Plan, checkpoint: str | None = None) -> str:
    """What to change after running out of memory, and how to go on: a resumed run must keep its
    plan, so a changed plan starts again in a fresh folder (or resumes unchanged from ``checkpoint``)."""
    where = "GPU" if device.startswith("cuda") else "computer"
    at = f" at step {step}" if step else " while starting"
    tips = []
    t, d = plan.training, plan.data
    if not t.gradient_checkpointing:
        tips.append("turn on training.gradient_checkpointing")
    if t.batch_size > 1:
        tips.append(
            f"lower training.batch_size (now {t.batch_size}) and raise training.grad_accum to keep the effective batch"
        )
    tips.append(f"shorten data.max_seq_len (now {d.max_seq_len})")
    if plan.model.quantization == "none":
        tips.append("load the model in 4bit (model.quantization: 4bit)")
    if t.optimizer == "adamw":
        tips.append("use the 8-bit optimizer (training.optimizer: adamw_8bit)")
    if plan.embeddings_trained and plan.embeddings.mode == "full":
        tips.append("train only selected token rows (embeddings.mode: tokens)")
    return (
        f"The {where} ran out of memory{at}. Try one or more of: "
        + "; ".join(tips)
        + ". `headtune estimate` shows where the memory goes. "
        + (
            f"The last checkpoint, {checkpoint}, is kept; since a resumed run keeps its plan, start the changed "
            f"plan in a new folder (--set output.dir={plan.output.dir}-2)."
            if checkpoint
            else f"Nothing was saved: start the changed plan in a new folder (--set output.dir={plan.output.dir}-2), "
            f"or delete {plan.output.dir} first."
        )
    )


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or "out of memory" in text.lower() or "can't allocate memory" in text
    )


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


class TrainingJob:
    """Runs a plan. ``run()`` returns the final ``Finished`` or ``Stopped`` event, or raises a
    ``HeadtuneError`` after emitting ``Failed``. ``request_stop()`` is safe from any thread."""

    data: PreparedData  # the tokenised data, once the run has read it

    def __init__(
        self,
        plan: Plan,
        sinks: Iterable[ev.Sink] = (),
        resume: bool = False,
        around_training=None,
        resume_fresh_state: bool = False,
    ):
        """``around_training``: a context-manager factory wrapped around the training loop alone
        (the memory harness measures the loop's peak with it). ``resume_fresh_state``: resume from
        a checkpoint that lacks its optimizer, scheduler or random state, starting those fresh."""
        self.plan = plan
        self.sinks = list(sinks)
        self.resume = resume
        self.resume_fresh_state = resume_fresh_state
        self.already_finished = False  # set by a resume of a run that had nothing left to do
        self._stop = threading.Event()
        self._file_sink: ev.JsonlSink | None = None
        # Events before the run folder opens (loading, the memory options' notes) wait here and go
        # into events.jsonl first when it opens; a run refused before then writes nothing.
        self._pending: list[ev.Event] | None = []
        self.step = 0
        self.device = "cpu"
        self.run_dir = Path(plan.output.dir)
        self.folder = RunFolder(self.run_dir)
        self._lock = self.folder.lock("training")
        self._checkpoint_bytes = 0
        self.model = None
        self.trainer = None
        self.lean = None  # core.plan.memory_options.Effective once the run starts
        self.batching = plan.data.batching  # as it runs: padding_free falls back to padded on a model that mixes rows
        self.around_training = around_training
        self.diverged: tuple[int, str] | None = None  # (step, what) once a loss or gradient is not finite

    # -- control ---------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def emit(self, event: ev.Event) -> None:
        if not self.is_main_process:  # under a launcher the main process alone reports
            return
        if self._file_sink is not None:
            self._file_sink(event)
        elif self._pending is not None:
            self._pending.append(event)
        for sink in self.sinks:
            sink(event)

    def log(self, message: str) -> None:
        self.emit(ev.Log(message=message))

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> ev.Event:
        try:
            return self._run()
        except HeadtuneError as exc:
            self.emit(ev.Failed(message=str(exc), step=self.step or None, error_type=type(exc).__name__))
            exc.reported = True  # the Failed event is out; callers need not report it again
            raise
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if _is_oom(exc):
                last = self.folder.latest_checkpoint() if self.folder.checkpoints_dir.is_dir() else None
                err: HeadtuneError = OutOfMemoryError(oom_message(self.device, self.step, self.plan, last))
            elif distributed.lost_peer(exc):
                last = self.folder.latest_checkpoint() if self.folder.checkpoints_dir.is_dir() else None
                err = RunError(
                    f"Another process of this {distributed.world_size()}-process run stopped answering at step "
                    f"{self.step} (it was killed, ran out of memory, or its machine became unreachable), so this one "
                    "stopped too. "
                    + (
                        f"The last checkpoint, {last}, is kept: resume with `headtune train --resume {self.run_dir}`."
                        if last
                        else "No checkpoint had been saved yet (training.save_every)."
                    )
                )
            else:
                err = InternalError(
                    f"Training failed at step {self.step}: {exc.__class__.__name__}: {exc}. This is "
                    f"an unexpected error, not a problem with the plan{self._save_traceback(exc)}; "
                    "please report it."
                )
            self.emit(ev.Failed(message=str(err), step=self.step or None, error_type=type(err).__name__))
            err.reported = True
            raise err from exc
        finally:
            if self._file_sink is not None:
                self._file_sink.close()
                self._file_sink = None
            self._lock.release()
            release_bnb_overrides()

    def _save_traceback(self, exc: BaseException) -> str:
        """Write the traceback of an unexpected error into the run folder (when it exists); the
        clause the message adds about it."""
        if not (self.is_main_process and self.run_dir.is_dir()):
            return ""
        import traceback

        try:
            self.folder.error_log.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
        except OSError:
            return ""
        return f" (the traceback is in {self.folder.error_log})"

    @property
    def is_main_process(self) -> bool:
        return int(os.environ.get("RANK", "0")) == 0

    def _check_output_dir(self) -> str | None:
        run_dir = self.run_dir
        check_writable(run_dir)
        if self.resume:
            return self._resume_point()
        if self.is_main_process and run_dir.exists() and not run_dir.is_dir():
            raise PlanError(f"output.dir: {run_dir} is a file; the run needs a folder.", "output.dir")
        if self.is_main_process and run_dir.is_dir():
            holder = self.folder.lock_holder()
            if holder is not None:
                raise RunFolderBusyError(runfolder.busy_message(self.folder, holder, "training"))
            if not self.folder.is_empty_for_a_new_run():
                raise self._not_empty()
        return None

    def _not_empty(self) -> PlanError:
        return PlanError(
            f"output.dir: {self.run_dir} already exists and is not empty. Choose a new folder, or "
            f"continue that run with `headtune train --resume {self.run_dir}`.",
            "output.dir",
        )

    def _resume_point(self) -> str | None:
        """Lock the run, then pick the checkpoint to resume from (None: nothing left to do)."""
        run_dir = self.run_dir
        if not self.is_main_process:  # the main process picks, cleans and checks; the others hear
            return None
        self._lock.acquire()
        self.folder.recover(self.log)
        done = self._finished_step()
        if done is not None:
            self.already_finished = True
            self.step = done
            return None
        ckpt = self.folder.resume_checkpoint(self.log, allow_fresh_state=self.resume_fresh_state)
        if ckpt is None:
            raise PlanError(
                f"{run_dir} has no checkpoint to resume from (checkpoints/ is empty). Start a new run instead.",
                "output.dir",
            )
        step = checkpoint_step(ckpt) or 0
        if 0 < self.plan.training.max_steps < step:
            raise PlanError(
                f"training.max_steps={self.plan.training.max_steps} is below the step the run already "
                f"reached ({step}); give a larger budget to train further.",
                "training.max_steps",
            )
        check_loadable(ckpt)
        return ckpt

    def _finished_step(self) -> int | None:
        """The step a finished run ended at, when the resumed plan's budget adds nothing to it."""
        t = self.plan.training
        info = self.folder.adapter_info()
        if info is not None and "finished" in info:
            if not info["finished"]:
                return None
            step, budget = int(info.get("step") or 0), info.get("budget") or {}
        else:
            # An adapter written before adapters recorded this: the run's events say it finished.
            summary = ev.summarize_run(self.run_dir) if self.folder.has_adapter() else None
            if summary is None or summary.state != "finished":
                return None
            saved = read_plan_file(self.folder.plan_file)
            step, budget = summary.step, saved.get("training") or {}
        if t.max_steps > 0:
            return step if t.max_steps <= step else None
        same_epochs = int(budget.get("max_steps") or 0) <= 0 and t.epochs <= float(budget.get("epochs") or 0)
        return step if same_epochs else None

    def _run(self) -> ev.Event:
        # Under a launcher the processes meet first, so that a plan refused on one of them is
        # refused on all (same message, same exit code) rather than leaving the others waiting.
        distributed.join()
        loaded = None
        try:
            distributed.check_launcher()
            ckpt = self._check_output_dir()
            if not self.already_finished:
                self._pick_device()
                loaded = self._load()
                self._check_disk(loaded[0])
        except Exception as exc:
            distributed.agree(exc)
            raise
        distributed.agree(None)
        # The main process alone picks (and cleans) the checkpoint to resume from.
        ckpt, self.already_finished, self.step = distributed.from_main((ckpt, self.already_finished, self.step))
        if self.already_finished:
            t = self.plan.training
            self.log(
                f"The run in {self.run_dir} already finished {self.step} steps; nothing to do (its adapter "
                f"is unchanged). To train further, raise the step budget, e.g. --set "
                f"training.max_steps={max(t.max_steps, self.step) * 2}."
            )
            done = ev.Finished(step=self.step, adapter_path=str(self.folder.adapter_dir))
            self.emit(done)
            return done
        assert loaded is not None
        model, tokenizer, setup, reset_rows = loaded
        trainable, total = adapters.count_parameters(model)
        if sharding.wanted(self.plan):
            if ckpt is not None:  # the checkpoint's weights go in whole, before the model is split
                sharding.load_adapter_weights(model, ckpt)
            units = sharding.shard(model, self.device)
            self.log(
                f"training.sharding: fsdp: {units} decoder layers and the rest (embedding, head) sharded over "
                f"{distributed.world_size()} processes"
            )
        elif self.plan.training.sharding == "fsdp":
            self.log("training.sharding: fsdp on one process shards nothing; the run is an ordinary one.")
        if distributed.any_rank(self.stop_requested):
            self.request_stop()
            stopped = ev.Stopped(step=0, adapter_path="")
            self.emit(stopped)
            return stopped
        try:
            self._open_run_folder(reset_rows)
        except Exception as exc:
            distributed.agree(exc)
            raise
        distributed.agree(None)
        trainer = self.trainer = self._trainer(model, tokenizer, setup, evaluate_first=ckpt is None)
        self.emit(
            ev.Started(
                total_steps=trainer.args.max_steps if trainer.args.max_steps > 0 else self._steps_for_epochs(),
                trainable_params=trainable,
                total_params=total,
                train_examples=len(self.data.train),
                val_examples=len(self.data.val),
                device=self.device,
                resumed_from_step=checkpoint_step(ckpt) or 0,
                message=f"{trainable:,} trainable parameters of {total:,}",
            )
        )
        return self._train(trainer, model, tokenizer, ckpt)

    def _pick_device(self) -> None:
        import torch

        plan = self.plan
        if plan.output.tensorboard:
            from .tensorboard import require

            require()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        if plan.training.optimizer == "paged_adamw_8bit" and self.device == "cpu":
            raise PlanError(
                "training.optimizer: paged_adamw_8bit pages optimizer states between GPU and CPU "
                "memory and needs a CUDA GPU. On the CPU use adamw or adamw_8bit.",
                "training.optimizer",
            )
        if plan.model.dtype == "float16" and self.device == "cpu":
            raise PlanError(
                "model.dtype: float16 training needs a GPU; on the CPU use bfloat16 or float32.", "model.dtype"
            )

    def _load(self):
        """Tokenizer, data and model, checked and loaded before the run folder exists; returns
        (PEFT model, tokenizer, embeddings setup, rows reset by init_untrained)."""
        plan = self.plan
        self.log(f"Resolving model {plan.model.name_or_path}")
        source = sources.resolve_source(plan.model.name_or_path)
        tokenizer = sources.load_tokenizer(source, plan.model.trust_remote_code)
        new_rows = setup_mod.add_new_tokens(tokenizer, plan.embeddings.new_tokens, plan.embeddings.vocab_tokens)

        self.log(f"Reading and tokenising {plan.data.path}")
        self.data = prepare(plan.data, tokenizer, plan.training.seed, plan.training.method)
        if plan.embeddings.vocab_tokens:
            check_round_trip(tokenizer, self.data.examples, Path(plan.data.path).name)
        st = self.data.stats
        share = st.trained_tokens / max(1, st.trained_tokens + st.masked_tokens)
        self.log(
            f"{st.rows} rows ({st.format}): {st.train_examples} train, {st.val_examples} validation, "
            f"{st.truncated} truncated to {plan.data.max_seq_len} tokens, {st.skipped_no_labels} skipped "
            f"(nothing to train left); {share:.0%} of tokens trained, the rest masked"
        )

        # Seed before the adapter is initialised, so a plan's seed reproduces the whole run.
        from transformers import set_seed

        set_seed(plan.training.seed)
        self.log(f"Loading model on {self.device} ({plan.model.quantization}, {plan.model.dtype})")
        model = sources.load_model(source, plan.model, self.device)
        setup_mod.init_new_rows(model, len(tokenizer), new_rows, plan.embeddings.new_token_init)
        reset_rows: list[int] = []
        if plan.embeddings.init_untrained == "mean":
            reset_rows = init_untrained_mean(model)
            self.log(
                f"init_untrained: {len(reset_rows)} untrained-looking rows set to the mean of the others"
                + (
                    f" ({', '.join(map(str, reset_rows[:20]))}{' …' if len(reset_rows) > 20 else ''})"
                    if reset_rows
                    else ""
                )
            )
        setup = setup_mod.resolve_embeddings(model, plan.embeddings, new_rows.ids)
        model.config.use_cache = False
        if self.batching == "padding_free" and not padding_free.honours_row_positions(model):
            self.batching = "padded"
            self.log(
                "data.batching: this model's attention lets the rows of a padding-free batch see each "
                "other, so each batch is padded instead (same loss, more memory)."
            )
        if self.batching == "grouped" and plan.training.method != "sft":
            self.batching = "padded"
            self.log(
                "data.batching: preference pairs are batched in random order, each batch padded (grouped sorts rows)."
            )
        self.lean = resolve_memory_options(plan, self.device, tied=setup.tied)
        why_not = lean.unsupported_head_reason(model.config) if self.lean.loss != "standard" else None
        if why_not:
            self.lean = dataclasses.replace(
                self.lean,
                loss="standard",
                notes=self.lean.notes + (f"memory.loss: {why_not}, so the model's own loss runs (full logits).",),
            )
        for note in self.lean.notes:
            self.log(note)
        self.model = adapters.build_peft_model(model, plan, setup, self.lean)
        return self.model, tokenizer, setup, reset_rows

    def _open_run_folder(self, reset_rows: list[int]) -> None:
        """Only now, with every input accepted, does the run folder appear. Under a distributed
        launcher only the main process writes the plan, the events and the adapter."""
        if not self.is_main_process:
            return
        plan = self.plan
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        if not self.resume and not self.folder.is_empty_for_a_new_run():
            raise self._not_empty()  # another run started writing here while this one loaded
        if not self.resume:
            plan.save(self.folder.plan_file)
            if plan.embeddings.init_untrained != "none":
                self.folder.init_untrained_file.write_text(
                    json.dumps({"method": plan.embeddings.init_untrained, "rows": reset_rows}), encoding="utf-8"
                )
        self._file_sink = ev.JsonlSink(self.folder.events_file)
        for event in self._pending or ():
            self._file_sink(event)
        self._pending = None
        if plan.output.tensorboard:
            from .tensorboard import TensorBoardSink

            self.sinks.append(TensorBoardSink(self.folder.tensorboard_dir))

    def _train(self, trainer, model, tokenizer, ckpt: str | None) -> ev.Event:
        do_eval = bool(self.data.val) and self.plan.training.eval_every > 0
        result = None
        if ckpt is not None and self._checkpoint_is_last_step(ckpt, trainer):
            # The checkpoint is the run's last step, so only the adapter's save was left (it was
            # cut short). Training on would take a step past the budget; load the weights instead.
            from transformers.trainer_callback import TrainerState

            self.log(f"{Path(ckpt).name} is the run's last step; writing the adapter from it.")
            trainer._load_from_checkpoint(ckpt)
            trainer.state = TrainerState.load_from_json(str(Path(ckpt) / runfolder.TRAINER_STATE))
        else:
            if self.plan.training.method == "dpo" and not self._reference(trainer, model):
                early = ev.Stopped(step=0, adapter_path="")  # during the reference pass: nothing trained
                self.emit(early)
                return early
            with self.around_training() if self.around_training else contextlib.nullcontext():
                result = trainer.train(resume_from_checkpoint=ckpt)
        if trainer.fused_step is not None:
            trainer.fused_step.remove()
        self.step = trainer.state.global_step
        if self.diverged is not None:
            raise RunError(self._divergence_message())
        adapter_dir = self.folder.adapter_dir
        stopped = self.stop_requested and self.step < trainer.state.max_steps
        # A sharded model is saved from whole tensors, gathered by every process together.
        whole = sharding.gathered_state_dict(model) if sharding.is_sharded(model) else None
        if self.is_main_process:
            self._save_adapter(model, tokenizer, finished=not stopped, state_dict=whole)
        if stopped:
            last = self.folder.latest_checkpoint()
            event: ev.Event = ev.Stopped(step=self.step, adapter_path=str(adapter_dir), checkpoint_path=last)
        else:
            eval_loss = None
            if do_eval:
                last_eval = [h for h in trainer.state.log_history if "eval_loss" in h]
                if not last_eval or last_eval[-1].get("step") != self.step:
                    trainer.evaluate()
                    last_eval = [h for h in trainer.state.log_history if "eval_loss" in h]
                eval_loss = last_eval[-1]["eval_loss"] if last_eval else None
            event = ev.Finished(
                step=self.step,
                adapter_path=str(adapter_dir),
                train_loss=getattr(result, "training_loss", None),
                eval_loss=eval_loss,
            )
        self.emit(memory_sample(self.step))
        self.emit(event)
        return event

    def _reference(self, trainer, model) -> bool:
        """DPO's reference log-probabilities of every pair, under the model as it starts (before the
        Trainer loads a checkpoint): read back from the run folder when a resumed run stored them
        for the same pairs, else computed in one no-grad pass and stored. False when a stop was
        requested during the pass (one process only: under a launcher the processes stop together
        at a step's end)."""
        train, val = self.data.train, self.data.val
        path = self.folder.reference_file
        if self.resume and preference.load_reference(path, train, val):
            self.log(f"Reference log-probabilities of {len(train) + len(val)} pairs read from {path.name}")
            return True
        stop = None if distributed.active() else (lambda: self.stop_requested)
        self.log(f"Computing the reference log-probabilities of {len(train) + len(val)} pairs (the starting model)")
        head = model.get_output_embeddings()
        device = trainer.args.device
        for rows in (train, val):
            with trainer.compute_loss_context_manager(), trainer.accelerator.autocast():
                values = preference.compute_reference(
                    model, head, rows, trainer.data_collator, trainer.args.eval_batch_size, device, self.lean, stop
                )
            if values is None:
                self.log("Stopped while computing the reference log-probabilities; nothing was trained.")
                return False
            preference.attach(rows, values)
        if self.is_main_process:
            preference.save_reference(path, train, val)
        return True

    def _divergence_message(self) -> str:
        step, what = self.diverged or (self.step, "the loss")
        t = self.plan.training
        last = self.folder.latest_checkpoint()
        kept = (
            f"The last checkpoint before it, {last}, is kept"
            if last
            else "No checkpoint was saved before it (training.save_every)"
        )
        clip = (
            "keep gradient clipping on"
            if t.max_grad_norm > 0
            else "turn gradient clipping on (training.max_grad_norm: 1.0)"
        )
        return (
            f"Training diverged at step {step}: {what} became infinite or not a number, so the run stopped "
            f"and saved nothing of that step (no adapter). Start again with a lower training.learning_rate "
            f"(now {t.learning_rate:g}; try {t.learning_rate / 4:g}) and {clip}. {kept}."
        )

    def _checkpoint_is_last_step(self, ckpt: str, trainer) -> bool:
        """Whether the checkpoint ends the plan's step budget (so there is nothing left to train)."""
        state = json.loads((Path(ckpt) / runfolder.TRAINER_STATE).read_text(encoding="utf-8"))
        step = int(state.get("global_step") or 0)
        if trainer.args.max_steps > 0:
            return step >= trainer.args.max_steps
        # An epoch budget: the Trainer's own step count, as the checkpoint recorded it.
        return (
            bool(state.get("max_steps"))
            and step >= int(state["max_steps"])
            and self.plan.training.epochs <= float(state.get("num_train_epochs") or 0)
        )

    def _steps_for_epochs(self) -> int:
        """The Trainer's count: each process reads every world-size-th batch (the last share
        completed by wrapping around), and an epoch ends on a partial accumulation."""
        t = self.plan.training
        batches = math.ceil(math.ceil(len(self.data.train) / t.batch_size) / distributed.world_size())
        per_epoch = max(1, math.ceil(batches / t.grad_accum))
        return max(1, math.ceil(per_epoch * t.epochs))

    def _check_disk(self, model) -> None:
        """Refuse to start when the checkpoints that the plan will keep cannot fit on disk."""
        t = self.plan.training
        numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
        weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        state_bytes = 2 * numel * (1 if "8bit" in t.optimizer else 4)
        checkpoint = weights + state_bytes + 16 * 1024**2
        keep = (t.save_total_limit + 1) if t.save_every > 0 else 1  # one extra while rotating; one on stop
        need = checkpoint * keep + weights + 64 * 1024**2
        self._checkpoint_bytes = checkpoint
        free = _free_bytes(self.run_dir)
        if free < need:
            raise RunError(
                f"Not enough free disk space for this run in {self.run_dir}: it needs about "
                f"{need / GiB:.2f} GiB for checkpoints and the adapter, and {free / GiB:.2f} GiB is free. "
                "Free some space, lower training.save_total_limit, or choose another output.dir."
            )

    def _trainer(self, model, tokenizer, setup, evaluate_first: bool = True):
        """``evaluate_first``: evaluate once at the start of training (a new run; a resumed run
        was evaluated before). Inside ``train()``, so that the model is wrapped for data
        parallelism first: evaluating before it made Accelerate treat the model as prepared."""
        from transformers import TrainingArguments
        from transformers.trainer_callback import PrinterCallback

        from .trainer import HeadtuneTrainer, JobCallback

        plan, t = self.plan, self.plan.training
        has_val = bool(self.data.val) and t.eval_every > 0
        args = TrainingArguments(
            output_dir=str(self.folder.checkpoints_dir),
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=t.batch_size,
            train_sampling_strategy="group_by_length" if self.batching == "grouped" else "random",
            gradient_accumulation_steps=t.grad_accum,
            learning_rate=t.learning_rate,
            lr_scheduler_type=t.lr_scheduler,
            warmup_steps=t.warmup_ratio,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            num_train_epochs=t.epochs,
            max_steps=t.max_steps if t.max_steps > 0 else -1,
            logging_steps=1,
            eval_strategy="steps" if has_val else "no",
            eval_on_start=has_val and evaluate_first,
            eval_steps=t.eval_every if has_val else None,
            save_strategy="steps" if t.save_every > 0 else "no",
            save_steps=t.save_every if t.save_every > 0 else 500,
            save_total_limit=t.save_total_limit,
            seed=t.seed,
            data_seed=t.seed,
            bf16=plan.model.dtype == "bfloat16",
            fp16=plan.model.dtype == "float16",
            activation_checkpointing=t.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False},
            optim=OPTIMIZERS[t.optimizer],
            report_to=[],
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            include_num_input_tokens_seen="non_padding",
            use_cpu=self.device == "cpu",
            label_names=["labels"],
            # Evaluation needs the loss only; gathering batch x seq x vocab logits would undo the lean loss.
            prediction_loss_only=True,
            # A loss that is not finite is reported (the run stops), not averaged away into the log.
            logging_nan_inf_filter=False,
            # Data parallel: every trained parameter gets a gradient at every step, also when the
            # lean loss applies the head outside the model's forward (which DDP's search for unused
            # parameters would take for unused, then see used: an error), so there is nothing to
            # search for.
            ddp_find_unused_parameters=False,
        )
        trainer = HeadtuneTrainer(
            model=model,
            args=args,
            train_dataset=self.data.train,
            eval_dataset=self.data.val if has_val else None,
            data_collator=collator_for(self.batching, tokenizer.pad_token_id, pairs=plan.training.method != "sft"),
            processing_class=tokenizer,
            callbacks=[JobCallback(self)],
            embedding_param_names=embedding_parameter_names(model, setup),
            embedding_lr=plan.embeddings.learning_rate,
            loraplus_ratio=plan.adapter.loraplus_ratio,
            lean=self.lean,
            sharded=sharding.is_sharded(model),
            fsdp=plan.training.sharding == "fsdp",
            preference=preference.Preference.of(t),
        )
        # Progress goes out as events; the Trainer's own console printer would duplicate it.
        trainer.remove_callback(PrinterCallback)
        trainer.checkpoint_bytes = self._checkpoint_bytes
        return trainer

    def _save_adapter(self, model, tokenizer, finished: bool, state_dict: dict | None = None) -> Path:
        """Write ``adapter/`` whole or not at all: into ``adapter.tmp/``, sealed with a manifest that
        records the step and whether the run finished, then swapped in (``runfolder.place``)."""
        final = self.folder.adapter_dir
        tmp = final.with_name(runfolder.ADAPTER_TMP)
        if tmp.exists():
            shutil.rmtree(tmp)
        weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        previous = runfolder.folder_bytes(final) if final.is_dir() else 0
        check_free_disk(self.run_dir, max(weights, previous), "adapter")
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        t = self.plan.training
        runfolder.seal(tmp, step=self.step, finished=finished, budget={"max_steps": t.max_steps, "epochs": t.epochs})
        runfolder.place(tmp, final, final.with_name(runfolder.ADAPTER_OLD))
        self.log(f"Adapter saved to {final}")
        return final
