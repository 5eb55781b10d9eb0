"""The tools that run as child ``headtune`` processes: export, the system check, token health.

Each is crash-prone or heavy (a merge holds a whole model in RAM; the system check runs native
bitsandbytes kernels that may crash on a broken install; token health reads a model's two
largest matrices), so none runs in the window's process. A ``Supervisor`` runs the child and
the controller shows its typed progress, result or failure in the tool's view.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal, Slot

from headtune.core import events as ev
from headtune.core.errors import PlanError

from .. import protocols
from ..export_dialog import ExportDialog, ExportRequest
from ..protocols import DoctorProtocol, ExportDone, ExportProtocol, HealthProtocol
from ..supervisor import Supervisor, headtune_command


class ExportController(QObject):
    """The Export dialog's child: ``headtune export --progress-json``; Cancel kills it."""

    exported = Signal(object)  # ExportDone

    def __init__(self, threads, host):
        super().__init__(host)
        self._threads = threads
        self._host = host
        self.dialog: ExportDialog | None = None
        self._child: Supervisor | None = None

    @property
    def running(self) -> bool:
        return self._child is not None

    def show(self, run_dir: str) -> ExportDialog:
        if self.dialog is None:
            self.dialog = ExportDialog(run_dir, self._host)
            self.dialog.export_requested.connect(self._on_dialog_export_requested)
            self.dialog.cancel_requested.connect(self._on_dialog_cancel_requested)
        else:
            self.dialog.set_run(run_dir)
        self.dialog.show()
        self.dialog.raise_()
        return self.dialog

    def cancel(self) -> None:
        """Its temporary folder is removed; nothing half-written stays."""
        if self._child is not None:
            self._child.kill()  # an export has no point at which to stop early

    @Slot(object)
    def _on_dialog_export_requested(self, request: ExportRequest) -> None:
        if self.running:
            return
        child = Supervisor(headtune_command(list(request.args)), ExportProtocol(request.out))
        child.progressed.connect(self.dialog.show_progress)
        child.completed.connect(self._on_child_completed)
        child.failed.connect(self._on_child_failed)
        child.finished.connect(self._on_child_finished)
        self._child = child
        self.dialog.show_started()
        self._threads.start(child)

    @Slot()
    def _on_dialog_cancel_requested(self) -> None:
        self.cancel()

    @Slot(object)
    def _on_child_completed(self, result: ExportDone) -> None:
        self.dialog.show_done(result)
        self.exported.emit(result)

    @Slot(object)
    def _on_child_failed(self, e: ev.Failed) -> None:
        self.dialog.show_failed(e.message)

    @Slot()
    def _on_child_finished(self) -> None:
        self._child = None
        self.dialog.show_ended()


class DoctorController(QObject):
    """Help → System check: ``headtune doctor --json`` in a child, its report in a dialog."""

    def __init__(self, threads, host):
        super().__init__(host)
        self._threads = threads
        self._host = host
        self.dialog = None
        self.closed = False
        self.last_command: list[str] | None = None
        self._child: Supervisor | None = None

    def shutdown(self) -> None:
        """The window is closing: a check still going has nothing to save, so it ends now."""
        self.closed = True
        if self._child is not None:
            self._child.kill()

    def show(self, output_dir: str):
        from ..doctor_dialog import DoctorDialog

        if self.dialog is None:
            self.dialog = DoctorDialog(output_dir, self._host)
            self.dialog.check_requested.connect(self._on_dialog_check_requested)
        self.dialog.output_dir = output_dir  # the run folder need not exist yet: its nearest parent's disk is measured
        if not self.dialog.running:
            self.start_check()
        self.dialog.show()
        self.dialog.raise_()
        return self.dialog

    @Slot()
    def _on_dialog_check_requested(self) -> None:
        self.start_check()

    def start_check(self) -> None:
        if self.closed or self.dialog is None or self.dialog.running:
            return
        self.last_command = protocols.doctor_args(self.dialog.output_dir)
        child = Supervisor(self.last_command, DoctorProtocol())
        child.completed.connect(self.dialog.show_report)
        child.failed.connect(self._on_child_failed)
        child.finished.connect(self._on_child_finished)
        self._child = child
        self.dialog.show_running()
        self._threads.start(child)

    @Slot(object)
    def _on_child_failed(self, e: ev.Failed) -> None:
        if not self.closed:
            self.dialog.show_failure(e.message)

    @Slot()
    def _on_child_finished(self) -> None:
        if self.sender() is self._child:
            self._child = None


@dataclass(frozen=True)
class RowsFix:
    """A fix from the Token health tab, as plan keys to set."""

    change: dict


class HealthController(QObject):
    """The Token health tab: ``headtune inspect MODEL --json`` in a child; its fixes edit the plan."""

    def __init__(self, model, panel, threads, host):
        super().__init__(host)
        self._model = model
        self._panel = panel
        self._threads = threads
        self._host = host
        self._child: Supervisor | None = None
        self.closed = False
        panel.check_requested.connect(self._on_panel_check_requested)
        panel.train_rows_requested.connect(self._on_panel_train_rows_requested)
        panel.init_mean_requested.connect(self._on_panel_init_mean_requested)

    def shutdown(self) -> None:
        """The window is closing: a check still going has nothing to save, so it ends now."""
        self.closed = True
        if self._child is not None:
            self._child.kill()

    @Slot()
    def _on_panel_check_requested(self) -> None:
        if self.closed:
            return
        try:
            plan = self._model.plan(check=False)
        except PlanError as exc:
            self._panel.show_error(str(exc))
            return
        name = plan.model.name_or_path.strip()
        if not name:
            self._panel.show_error("Choose a model first (Model tab).")
            return
        spec = plan.data if plan.data.path.strip() else None
        e = plan.embeddings
        child = Supervisor(protocols.inspect_args(name, spec, e.new_tokens, e.vocab_tokens), HealthProtocol())
        child.completed.connect(self._on_child_completed)
        child.failed.connect(self._on_child_failed)
        self._child = child
        self._panel.show_running(name)
        self._threads.start(child)

    @Slot(object)
    def _on_child_completed(self, report) -> None:
        if self.sender() is self._child:  # a newer check replaces an older one
            self._panel.show_report(report)

    @Slot(object)
    def _on_child_failed(self, e: ev.Failed) -> None:
        if self.sender() is self._child and not self.closed:
            self._panel.show_error(e.message)

    @Slot(list)
    def _on_panel_train_rows_requested(self, ids: list) -> None:
        self._apply(
            RowsFix(
                {
                    "embeddings.mode": "tokens",
                    "embeddings.token_ids": sorted(ids),
                    "embeddings.train_embeddings": True,
                    "embeddings.train_lm_head": True,
                }
            )
        )

    @Slot()
    def _on_panel_init_mean_requested(self) -> None:
        self._apply(RowsFix({"embeddings.init_untrained": "mean"}))

    def _apply(self, fix: RowsFix) -> None:
        self._model.update(fix.change)
        self._host.show_status("Applied: " + ", ".join(f"{k} = {v}" for k, v in fix.change.items()), 5000)
