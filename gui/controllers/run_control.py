"""Start, stop and resume a training run, and show it live.

The run itself is a child ``headtune train --events-json`` under a ``Supervisor``: training in a
thread of the window's process ran at 0.47-0.80 of ``headtune train``'s speed on the CPU and its
imports stalled the UI for 750-875 ms, as both threads fight over the GIL (docs/window-benchmark.md). A child also keeps the window alive if training crashes or is
killed for memory, and returns all its memory when it ends. Stop writes ``stop`` to its stdin;
it stops after the current step with a checkpoint, and also if the window goes away.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from headtune.core import events as ev
from headtune.core.errors import HeadtuneError, PlanError
from headtune.core.plan import Plan, resolve_paths

from .. import protocols
from ..plan_model import PlanModel
from ..protocols import TrainingProtocol
from ..supervisor import Supervisor


def fresh_run_dir(path: str) -> str:
    """``path`` if it is new or empty, else the first free ``path-2``, ``path-3``, ..."""
    p = Path(path)
    if not (p.exists() and (not p.is_dir() or any(p.iterdir()))):
        return path
    n = 2
    while Path(f"{path}-{n}").exists():
        n += 1
    return f"{path}-{n}"


@dataclass(frozen=True)
class RunTarget:
    """The run the tools act on: its folder when it has a saved adapter not being rewritten."""

    exportable: str | None


@dataclass(frozen=True)
class RunLaunched:
    run_dir: str
    resume: bool


class RunController(QObject):
    """Owns the training child and the Run panel's buttons."""

    run_launched = Signal(object)  # RunLaunched, before the child starts
    run_ended = Signal()  # the child has exited and its thread is done
    target_changed = Signal(object)  # RunTarget

    def __init__(self, model: PlanModel, run_panel, estimate, actions: dict, threads, host):
        super().__init__(host)
        self._model = model
        self._panel = run_panel
        self._estimate = estimate
        self._actions = actions  # "start" and "stop" menu actions
        self._threads = threads
        self._host = host
        self._supervisor: Supervisor | None = None
        self._running_dir: str | None = None
        self.last_run_dir: str | None = None
        self._progress = {
            ev.Started: self._show_started,
            ev.Log: self._show_log,
            ev.Step: run_panel.add_event,
            ev.Memory: run_panel.add_event,
            ev.Eval: self._show_eval,
            ev.Checkpoint: self._show_checkpoint,
        }
        estimate.plan_checked.connect(self._on_estimate_plan_checked)
        run_panel.start_button.clicked.connect(self._on_start_button_clicked)
        run_panel.stop_button.clicked.connect(self._on_stop_button_clicked)
        run_panel.resume_button.clicked.connect(self._on_resume_button_clicked)
        run_panel.open_run_requested.connect(self._on_run_panel_open_run_requested)
        run_panel.runs_list.currentItemChanged.connect(self._on_runs_list_current_item_changed)

    @property
    def running(self) -> bool:
        return self._supervisor is not None

    @property
    def stop_requested(self) -> bool:
        return self._supervisor is not None and self._supervisor.stop_requested

    def target(self) -> str | None:
        """The selected run, or the last one started here."""
        return self._panel.selected_run() or self.last_run_dir

    # -- buttons ---------------------------------------------------------------------------
    @Slot(object)
    def _on_estimate_plan_checked(self, _check) -> None:
        out = self._model.value("output.dir")
        self._panel.set_runs_folder(Path(out).expanduser().resolve().parent if out else Path.cwd())
        self.update_buttons()

    @Slot()
    def _on_runs_list_current_item_changed(self, *_args) -> None:
        self.update_buttons()

    def update_buttons(self) -> None:
        from headtune.core.runfolder import RunFolder

        problem = self._estimate.last_check.problem
        rp, running = self._panel, self.running
        rp.start_button.setEnabled(not running and problem is None)
        rp.start_button.setToolTip(
            "Start a new run with this plan." if problem is None else f"Fix the plan first: {problem}"
        )
        rp.stop_button.setEnabled(running and not self.stop_requested)
        target = self.target()
        rp.resume_button.setEnabled(not running and bool(target) and RunFolder(target).has_checkpoint())
        exportable = target if target and RunFolder(target).has_adapter() else None
        if running and exportable and Path(exportable) == Path(self._running_dir):
            exportable = None  # its adapter is rewritten when the run ends
        rp.export_button.setEnabled(bool(exportable))
        self._actions["start"].setEnabled(rp.start_button.isEnabled())
        self._actions["stop"].setEnabled(rp.stop_button.isEnabled())
        self.target_changed.emit(RunTarget(exportable))

    # -- start, stop, resume ---------------------------------------------------------------
    @Slot()
    def _on_start_button_clicked(self) -> None:
        self.start_run()

    @Slot()
    def _on_stop_button_clicked(self) -> None:
        self.stop_run()

    @Slot()
    def _on_resume_button_clicked(self) -> None:
        self.resume_run()

    def start_run(self) -> None:
        if self.running:
            return
        try:
            plan = self._model.plan(check=True)
        except PlanError as exc:
            self._host.show_error("The plan cannot run", str(exc))
            return
        if self._host.offer_download(plan.model.name_or_path):
            return  # an uncached hub model is downloaded first, in view
        fresh = fresh_run_dir(plan.output.dir)
        if fresh != plan.output.dir:
            self._model.set("output.dir", fresh)
            plan.output.dir = fresh
            self._panel.log(f"The output folder was in use; this run goes to {fresh}")
        resolve_paths(plan, Path.cwd())  # the child process gets absolute paths
        self._launch(plan, resume=False)

    def resume_run(self) -> None:
        from headtune.core.training.job import resume_plan

        target = self.target()
        if self.running or not target:
            return
        try:
            plan = resume_plan(target)
        except HeadtuneError as exc:
            self._host.show_error("Cannot resume this run", str(exc))
            return
        self._launch(plan, resume=True)

    def _launch(self, plan: Plan, resume: bool) -> None:
        self.run_launched.emit(RunLaunched(plan.output.dir, resume))
        self.last_run_dir = self._running_dir = plan.output.dir
        self._panel.reset(("Resuming " if resume else "Starting ") + Path(plan.output.dir).name + "…")
        self._panel.set_estimate(self._estimate.run_estimate_bytes(plan))
        self._panel.log(f"{'Resuming' if resume else 'Starting'} run in {plan.output.dir}")
        plan_file = None
        if not resume:
            fd, plan_file = tempfile.mkstemp(prefix="headtune-plan-", suffix=".yaml")
            os.close(fd)
            plan.save(plan_file)
        command = protocols.train_args(plan_file, plan.output.dir if resume else None)
        supervisor = Supervisor(command, TrainingProtocol(), temp_files=(plan_file,) if plan_file else ())
        supervisor.progressed.connect(self._on_supervisor_progressed)
        supervisor.completed.connect(self._on_supervisor_completed)
        supervisor.failed.connect(self._on_supervisor_failed)
        supervisor.finished.connect(self._on_supervisor_finished)
        self._supervisor = supervisor
        self._panel.state_label.setText("Loading…")
        self._panel.tabs.setCurrentWidget(self._panel.loss_tab)
        self._threads.start(supervisor)
        self.update_buttons()

    def stop_run(self) -> None:
        if self._supervisor is None:
            return
        self._supervisor.request_stop()
        self._panel.state_label.setText("Stopping after this step (saving a checkpoint)…")
        self._panel.log("Stop requested: the run saves a checkpoint and the adapter, then ends.")
        self.update_buttons()

    # -- the run's events ------------------------------------------------------------------
    @Slot(object)
    def _on_supervisor_progressed(self, e: ev.Event) -> None:
        show = self._progress.get(type(e))
        if show is not None:
            show(e)

    def _show_started(self, e: ev.Started) -> None:
        self._panel.add_event(e)
        self._panel.state_label.setText(f"Running on {e.device}")
        self._panel.log(
            f"Started: {e.message}; {e.train_examples} training and {e.val_examples} validation "
            f"examples; {e.total_steps} steps"
        )
        self._panel.refresh_runs()

    def _show_log(self, e: ev.Log) -> None:
        self._panel.log(e.message)

    def _show_eval(self, e: ev.Eval) -> None:
        self._panel.add_event(e)
        self._panel.log(f"Step {e.step}: eval loss {e.eval_loss:.4f}")

    def _show_checkpoint(self, e: ev.Checkpoint) -> None:
        self._panel.log(f"Checkpoint saved: {e.path}")

    @Slot(object)
    def _on_supervisor_completed(self, e: ev.Finished | ev.Stopped) -> None:
        if isinstance(e, ev.Finished):
            loss = f", eval loss {e.eval_loss:.4f}" if e.eval_loss is not None else ""
            self._panel.state_label.setText(f"Finished at step {e.step}{loss}")
            self._panel.log(f"Finished at step {e.step}{loss}. Adapter: {e.adapter_path}")
            self._host.show_status(f"Training finished; the adapter is in {e.adapter_path}")
            return
        where = f"; checkpoint {e.checkpoint_path}" if e.checkpoint_path else ""
        self._panel.state_label.setText(f"Stopped at step {e.step}")
        self._panel.log(f"Stopped at step {e.step}{where}. Resume continues from there.")
        self._host.show_status(f"Stopped at step {e.step}; Resume continues the run.")

    @Slot(object)
    def _on_supervisor_failed(self, e: ev.Failed) -> None:
        self._panel.state_label.setText("Failed")
        self._panel.show_failed()
        self._panel.log(f"Failed: {e.message}")
        self._host.show_error("Unexpected error" if e.error_type == "InternalError" else "Training failed", e.message)

    @Slot()
    def _on_supervisor_finished(self) -> None:
        self._supervisor = None
        self._running_dir = None
        self._panel.refresh_runs()
        self.update_buttons()
        self.run_ended.emit()

    @Slot(str)
    def _on_run_panel_open_run_requested(self, path: str) -> None:
        if self.running:
            self._host.show_status("A run is going; its plots stay on screen until it ends.", 5000)
            return
        n = self._panel.load_run(path)
        self._panel.tabs.setCurrentWidget(self._panel.loss_tab)
        self._host.show_status(f"Showing {Path(path).name} ({n} events)", 5000)
