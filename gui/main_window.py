"""The main window: pick a model and data, preview memory, train, watch it live.

Left, the plan in tabs (Model, Data, Training, Token health); right, the Memory panel above the
Run panel (with the Chat tab). The window lays out the views, builds the menus, and connects
them to the ``PlanModel`` and the controllers (``gui/controllers``), which own the behaviour:
the plan file, validation and the estimate, the previews, the run, and the tools. Work never
runs on the UI thread except the memory estimate, a pure function taking well under a
millisecond; heavy or crash-prone work runs in child ``headtune`` processes.
"""

from __future__ import annotations

import os

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Slot
from PySide6.QtWidgets import QLabel, QMainWindow, QMessageBox, QSplitter, QTabWidget, QVBoxLayout, QWidget

from headtune.core.plan import Plan

from .chat_panel import ChatPanel
from .controllers.catalog import CatalogController, hub_id_to_download
from .controllers.chat import ChatController
from .controllers.estimate import EstimateController
from .controllers.plan_file import PlanFileController
from .controllers.preview import PreviewController
from .controllers.run_control import RunController, fresh_run_dir
from .controllers.tools import DoctorController, ExportController, HealthController
from .fields import PlanFields
from .health_panel import TokenHealthPanel
from .memory_panel import MemoryPanel
from .menus import build_menus
from .plan_model import PlanModel
from .plan_panels import DataPanel, ModelPanel, TrainingPanel
from .run_panel import RunPanel
from .workers import TaskRunner, Threads

__all__ = ["MainWindow", "fresh_run_dir"]


class MainWindow(QMainWindow):
    """The views, the menus, and the wiring of the plan model to the controllers."""

    def __init__(
        self,
        plan: Plan | None = None,
        plan_path: str | None = None,
        settings: QSettings | None = None,
        detect: bool = True,
    ):
        super().__init__()
        self.setWindowTitle("Headtune")
        self.setObjectName("mainWindow")
        self.settings = settings or QSettings("Headtune", "Headtune")
        self.threads = Threads(self)
        self.tasks = TaskRunner(self.threads, self)
        self.fields = PlanFields(self)
        self._closed = False
        self._close_when_done = False
        self._error_box: QMessageBox | None = None
        self._detect = detect
        self._build_views()
        build_menus(self)
        self.plan = PlanModel(self.fields, self)  # the defaults, before anything listens
        self._build_controllers()
        self._restore_settings()
        if plan is not None:
            self.set_plan(plan, plan_path)
        else:
            self.file.mark_saved()
            self.estimate.refresh()

    def _build_views(self) -> None:
        self.model_panel = ModelPanel(self.fields)
        self.data_panel = DataPanel(self.fields)
        self.training_panel = TrainingPanel(self.fields)
        self.memory_panel = MemoryPanel()
        self.run_panel = RunPanel()
        self.health_panel = TokenHealthPanel()
        self.chat_panel = ChatPanel()
        self.plan_tabs = QTabWidget()
        self.plan_tabs.setObjectName("planTabs")
        for panel, title in (
            (self.model_panel, "Model"),
            (self.data_panel, "Data"),
            (self.training_panel, "Training"),
            (self.health_panel, "Token health"),
        ):
            self.plan_tabs.addTab(panel, title)
        self.run_panel.tabs.addTab(self.chat_panel, "Chat")
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(QLabel("<b>Memory</b>"))
        rl.addWidget(self.memory_panel)
        rl.addWidget(self.run_panel, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(self.plan_tabs)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setSizes([580, 820])
        self.setCentralWidget(self.splitter)
        self.statusBar().showMessage("Ready")

    def _build_controllers(self) -> None:
        self.file = PlanFileController(self.plan, self)
        self.estimate = EstimateController(self.plan, self.memory_panel, self.training_panel, self.tasks, self)
        self.preview = PreviewController(
            self.plan, self.model_panel, self.data_panel, self.training_panel, self.tasks, self
        )
        self.runs = RunController(
            self.plan,
            self.run_panel,
            self.estimate,
            {"start": self.start_action, "stop": self.stop_action},
            self.threads,
            self,
        )
        self.export = ExportController(self.threads, self)
        self.chat = ChatController(self.chat_panel, self.threads, self)
        self.health = HealthController(self.plan, self.health_panel, self.threads, self)
        self.doctor = DoctorController(self.threads, self)
        self.catalog = CatalogController(
            self.plan, self.model_panel.catalog, self.memory_panel, self.tasks, self.threads, self
        )
        self.catalog.load()
        self.catalog.downloaded.connect(self._on_catalog_downloaded)
        self.file.title_changed.connect(self.setWindowTitle)
        self.preview.model_read.connect(self._on_preview_model_read)
        self.preview.data_read.connect(self.estimate.set_data)
        self.runs.target_changed.connect(self._on_runs_target_changed)
        self.runs.run_launched.connect(self._on_runs_run_launched)
        self.runs.run_ended.connect(self._on_runs_run_ended)
        self.export.exported.connect(self._on_export_exported)
        self.run_panel.export_button.clicked.connect(lambda _checked=False: self.show_export())

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self.plots_built:
            # The plots (pyqtgraph) are built just after the first paint, so the window shows sooner.
            QTimer.singleShot(30, self.build_plots)

    @Slot()
    def build_plots(self) -> None:
        if self.plots_built:
            return
        self.run_panel.build_plots()
        self.data_panel.build_plots()
        if self._detect:
            # Only now: importing torch off the UI thread still competes with it for the GIL.
            self.estimate.detect()

    @property
    def plots_built(self) -> bool:
        return self.run_panel.plots_built and self.data_panel.plots_built

    # -- dialogs and messages (one place, so tests can answer them) ----------------------
    def show_error(self, title: str, text: str) -> None:
        """A non-blocking error dialog with the user-facing message; the window stays usable."""
        if self._error_box is not None:
            self._error_box.close()
            self._error_box.deleteLater()
        box = QMessageBox(QMessageBox.Icon.Critical, title, text, QMessageBox.StandardButton.Ok, self)
        box.setObjectName("errorDialog")
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        self._error_box = box
        box.open()
        self.statusBar().showMessage(f"{title}: {text.splitlines()[0][:160]}")

    def show_status(self, text: str, timeout_ms: int = 0) -> None:
        self.statusBar().showMessage(text, timeout_ms)

    def ask(self, title: str, text: str, buttons, default) -> QMessageBox.StandardButton:
        return QMessageBox.question(self, title, text, buttons, default)

    # -- the public face: what the menus, the app and the tests use ----------------------
    def values(self) -> dict:
        return self.plan.values()

    def set_plan(self, plan: Plan, path: str | os.PathLike | None = None) -> None:
        self.file.set_plan(plan, path)

    @property
    def dirty(self) -> bool:
        return self.file.dirty

    @property
    def last_estimate(self):
        return self.estimate.last_estimate

    @property
    def running(self) -> bool:
        return self.runs.running

    def open_plan(self, path: str | None = None) -> bool:
        return self.file.open_plan(path)

    def save_plan_as(self, path: str | None = None) -> bool:
        return self.file.save_plan_as(path)

    def stop_run(self) -> None:
        self.runs.stop_run()

    def offer_download(self, name: str) -> bool:
        """Before a run: a hub model not on this computer is downloaded first, where its progress
        shows (training never downloads it silently). True when the run must wait."""
        from headtune.core.tools.download import offline

        repo = hub_id_to_download(name)
        if repo is None or offline():  # offline, the run says plainly that the model is not cached
            return False
        answer = self.ask(
            "Download the model first?",
            f"{repo} is not on this computer yet. Download it now in the Model tab, where you can watch "
            "its progress? Start the run once it is downloaded.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Yes,
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.plan_tabs.setCurrentWidget(self.model_panel)
            self.catalog.start_download(repo)
        return True

    def show_system_check(self):
        """Help → System check: the ``headtune doctor`` report, run in a child process."""
        return self.doctor.show(self.plan.value("output.dir") or "runs")

    def show_export(self):
        """The Export dialog for the selected run (or the last one)."""
        target = self.runs.target()
        if not target or self._closed:
            return None
        return self.export.show(target)

    # -- between controllers ---------------------------------------------------------------
    @Slot(object)
    def _on_preview_model_read(self, summary) -> None:
        self.estimate.set_summary(summary)

    @Slot(str)
    def _on_catalog_downloaded(self, repo_id: str) -> None:
        if self.plan.value("model.name_or_path") == repo_id:
            self.preview.load_model_info()  # its tokenizer now loads from the cache

    @Slot(object)
    def _on_runs_target_changed(self, target) -> None:
        self.chat.set_run(target.exportable)

    @Slot(object)
    def _on_runs_run_launched(self, _launch) -> None:
        self.chat.release_model()  # its memory (GPU memory too) goes to the training run

    @Slot()
    def _on_runs_run_ended(self) -> None:
        if self._close_when_done:
            self.close()

    @Slot(object)
    def _on_export_exported(self, result) -> None:
        self.statusBar().showMessage(f"Exported {result.format} to {result.path}")
        self.run_panel.log(f"Exported {result.format} to {result.path} in {result.seconds:.1f} s")

    # -- settings and closing ------------------------------------------------------------
    def _restore_settings(self) -> None:
        geometry = self.settings.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1400, 900)
        split = self.settings.value("window/splitter")
        if isinstance(split, QByteArray):
            self.splitter.restoreState(split)

    def _save_settings(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/splitter", self.splitter.saveState())
        self.settings.sync()

    def closeEvent(self, event) -> None:
        if self.running and not self._close_when_done:
            answer = self.ask(
                "A run is going",
                "Training is running. Stop it (a checkpoint and the adapter are saved) and close when it has stopped?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                QMessageBox.StandardButton.Yes,
            )
            if answer == QMessageBox.StandardButton.Yes:
                self._close_when_done = True
                self.stop_run()
                self.statusBar().showMessage("Stopping the run; the window closes when it is saved.")
            event.ignore()
            return
        if self.running or not self.file.confirm_discard():  # a close while the stop is being saved waits
            event.ignore()
            return
        self._save_settings()
        self.hide()  # background lookups may need a moment to finish; do not look frozen meanwhile
        self.shutdown()
        event.accept()

    def shutdown(self) -> None:
        """Start nothing new and wait for the background threads (so none outlives the window)."""
        self._closed = True
        self.tasks.closed = True
        self.doctor.shutdown()  # a system check or token health check still going ends now
        self.catalog.shutdown()  # a download pauses; its partial file is kept for next time
        self.health.shutdown()
        self.preview.stop()
        self.chat.shutdown()  # the answer ends after the current token; the model is freed
        self.export.cancel()  # its temporary folder is removed; nothing half-written stays
        if not self.threads.wait_all():
            self.threads.wait_all(None)  # a model still loading cannot be interrupted: wait (window hidden)
