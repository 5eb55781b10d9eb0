"""The main window: pick a model and data, preview memory, train, watch it live.

Left, the plan in three tabs (Model, Data, Training); right, the Memory panel above the Run
panel. Everything slow runs off the UI thread: reading a model's configuration, loading its
tokenizer, previewing the dataset, detecting the GPU (``TaskWorker``), and training
(``TrainingWorker``). Results come back as signals; stale ones (the user has since typed
something else) are dropped by tag. The memory estimate is a pure function that takes well
under a millisecond, so it is recomputed on the UI thread on every change.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QFileDialog, QLabel, QMainWindow, QMessageBox, QSplitter, QTabWidget,
                               QVBoxLayout, QWidget)

from headtune.core import events as ev
from headtune.core.errors import HeadtuneError, PlanError
from headtune.core.plan import Plan, load_plan, plan_from_dict, resolve_paths

from .chat_panel import ChatPanel
from .export_dialog import ExportDialog
from .fields import PlanFields
from .health_panel import TokenHealthPanel
from .memory_panel import MemoryPanel
from .plan_panels import DataPanel, ModelPanel, TrainingPanel, set_error
from .run_panel import RunPanel
from .workers import TaskWorker, Threads, TrainingWorker, transformers_ready

RECENT_MAX = 10
MODEL_KEYS = ("model.name_or_path", "model.trust_remote_code")
DATA_KEYS = ("data.path", "data.format", "data.chat_template")
PLAN_FILTER = "Headtune plans (*.yaml *.yml);;All files (*)"


def detect_hardware():
    """(gpu (total bytes, name) or None, RAM bytes); also warms bitsandbytes' import check."""
    from headtune.core.estimate import detect_capacity
    from headtune.core.plan import bitsandbytes_problem
    gpu_bytes, gpu_name = detect_capacity("cuda")
    ram_bytes, _ = detect_capacity("cpu")
    bitsandbytes_problem()
    return ((gpu_bytes, gpu_name) if gpu_bytes else None), ram_bytes


def load_tokenizer_for(name_or_path: str, trust_remote_code: bool):
    from headtune.core.model.sources import load_tokenizer, resolve_source
    return load_tokenizer(resolve_source(name_or_path), trust_remote_code)


def _after_transformers_ready(fn):
    def run():
        transformers_ready()
        return fn()
    return run


def fresh_run_dir(path: str) -> str:
    """``path`` if it is new or empty, else the first free ``path-2``, ``path-3``, ..."""
    p = Path(path)
    if not (p.exists() and (not p.is_dir() or any(p.iterdir()))):
        return path
    n = 2
    while Path(f"{path}-{n}").exists():
        n += 1
    return f"{path}-{n}"


class MainWindow(QMainWindow):
    def __init__(self, plan: Plan | None = None, plan_path: str | None = None,
                 settings: QSettings | None = None, detect: bool = True):
        super().__init__()
        self.setWindowTitle("Headtune")
        self.setObjectName("mainWindow")
        self.settings = settings or QSettings("Headtune", "Headtune")
        self.threads = Threads(self)
        self.fields = PlanFields(self)
        self._base: dict = Plan().to_dict()
        self._saved: dict = {}
        self._plan_path: Path | None = None
        self._summary = None
        self._tokenizer = None
        self._tokenizer_for: tuple | None = None
        self._latest: dict[str, object] = {}
        self._handlers: dict[tuple, tuple] = {}
        self._plan_problem: str | None = None
        self._tag = 0
        self._worker: TrainingWorker | None = None
        self._last_run_dir: str | None = None
        self._close_when_done = False
        self._closed = False
        self._error_box: QMessageBox | None = None
        self._doctor_dialog = None
        self.last_estimate = None

        self.model_panel = ModelPanel(self.fields)
        self.data_panel = DataPanel(self.fields)
        self.training_panel = TrainingPanel(self.fields)
        self.memory_panel = MemoryPanel()
        self.run_panel = RunPanel()
        self.plan_tabs = QTabWidget()
        self.plan_tabs.setObjectName("planTabs")
        self.plan_tabs.addTab(self.model_panel, "Model")
        self.plan_tabs.addTab(self.data_panel, "Data")
        self.plan_tabs.addTab(self.training_panel, "Training")
        self.health_panel = TokenHealthPanel()
        self.plan_tabs.addTab(self.health_panel, "Token health")
        self.chat_panel = ChatPanel(self.threads)
        self.run_panel.tabs.addTab(self.chat_panel, "Chat")
        self._export_dialog: ExportDialog | None = None
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        memory_title = QLabel("<b>Memory</b>")
        rl.addWidget(memory_title)
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
        self._build_menus()

        self._model_timer = QTimer(self, singleShot=True, interval=300)
        self._model_timer.timeout.connect(self._load_model_info)
        self._data_timer = QTimer(self, singleShot=True, interval=300)
        self._data_timer.timeout.connect(self._load_data_preview)

        self.fields.changed.connect(self._on_fields_changed)
        self.memory_panel.advice_applied.connect(self._on_memory_panel_advice_applied)
        self.memory_panel.target_changed.connect(self._on_memory_panel_target_changed)
        self.model_panel.path_row.browse_requested.connect(self._on_model_browse_requested)
        self.model_panel.path_row.recent_chosen.connect(lambda v: self._set_value("model.name_or_path", v))
        self.data_panel.path_row.browse_requested.connect(self._on_data_browse_requested)
        self.data_panel.path_row.recent_chosen.connect(lambda v: self._set_value("data.path", v))
        self.training_panel.token_search_changed.connect(self._on_token_search_changed)
        self.training_panel.output_browse_requested.connect(self._on_output_browse_requested)
        self.health_panel.check_requested.connect(self._on_health_panel_check_requested)
        self.health_panel.train_rows_requested.connect(self._on_health_panel_train_rows_requested)
        self.health_panel.init_mean_requested.connect(self._on_health_panel_init_mean_requested)
        self.run_panel.start_button.clicked.connect(self.start_run)
        self.run_panel.stop_button.clicked.connect(self.stop_run)
        self.run_panel.resume_button.clicked.connect(self.resume_run)
        self.run_panel.open_run_requested.connect(self._on_run_panel_open_run_requested)
        self.run_panel.export_button.clicked.connect(lambda _checked=False: self.show_export())
        self.run_panel.runs_list.currentItemChanged.connect(lambda *_: self._update_buttons())

        import psutil
        self.memory_panel.set_targets(None, int(psutil.virtual_memory().total),
                                      preferred=self.settings.value("memory/target", None, str))
        self._restore_settings()
        if plan is not None:
            self.set_plan(plan, plan_path)
        else:
            self.fields.set_values(self._base)
            self._mark_saved()
            self._refresh_plan_state()
        self._detect = detect

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
            self._run_task("hardware", detect_hardware, self._on_hardware_detected)

    @property
    def plots_built(self) -> bool:
        return self.run_panel.plots_built and self.data_panel.plots_built

    # -- menus ---------------------------------------------------------------------------
    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        for text, shortcut, slot in (("&New plan", QKeySequence.StandardKey.New, self.new_plan),
                                     ("&Open plan…", QKeySequence.StandardKey.Open, self.open_plan),
                                     ("&Save plan", QKeySequence.StandardKey.Save, self.save_plan),
                                     ("Save plan &as…", QKeySequence.StandardKey.SaveAs, self.save_plan_as)):
            action = QAction(text, self)
            action.setShortcut(shortcut)
            action.triggered.connect(lambda _checked=False, slot=slot: slot())  # not the checked flag as a path
            file_menu.addAction(action)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)
        run_menu = self.menuBar().addMenu("&Run")
        self.start_action = QAction("&Start", self)
        self.start_action.setShortcut("Ctrl+Return")
        self.start_action.triggered.connect(self.start_run)
        self.stop_action = QAction("S&top", self)
        self.stop_action.triggered.connect(self.stop_run)
        run_menu.addAction(self.start_action)
        run_menu.addAction(self.stop_action)
        help_menu = self.menuBar().addMenu("&Help")
        self.system_check_action = QAction("&System check…", self)
        self.system_check_action.setObjectName("systemCheckAction")
        self.system_check_action.triggered.connect(lambda _checked=False: self.show_system_check())
        help_menu.addAction(self.system_check_action)
        about = QAction("&About Headtune", self)
        about.triggered.connect(self._about)
        help_menu.addAction(about)

    def show_system_check(self):
        """Help → System check: the ``headtune doctor`` report, run off the UI thread."""
        from .doctor_dialog import DoctorDialog
        output = self.values()["output"]["dir"] or "runs"
        if self._doctor_dialog is None:
            self._doctor_dialog = DoctorDialog(self.threads, output, self)
        dialog = self._doctor_dialog
        dialog.output_dir = output  # the run folder need not exist yet: its nearest parent's disk is measured
        if not self._closed and not dialog.running:
            dialog.start_check()
        dialog.show()
        dialog.raise_()
        return dialog

    def show_export(self) -> ExportDialog | None:
        """The Export dialog for the selected run (or the last one)."""
        target = self.run_panel.selected_run() or self._last_run_dir
        if not target or self._closed:
            return None
        if self._export_dialog is None:
            self._export_dialog = ExportDialog(self.threads, target, self)
            self._export_dialog.exported.connect(self._on_export_dialog_exported)
        else:
            self._export_dialog.set_run(target)
        self._export_dialog.show()
        self._export_dialog.raise_()
        return self._export_dialog

    @Slot(dict)
    def _on_export_dialog_exported(self, result: dict) -> None:
        self.statusBar().showMessage(f"Exported {result['format']} to {result['path']}")
        self.run_panel.log(f"Exported {result['format']} to {result['path']} in {result['seconds']:.1f} s")

    def _about(self) -> None:
        from headtune.core import __version__
        QMessageBox.about(self, "About Headtune",
                          f"<b>Headtune {__version__}</b><p>Fine-tune open LLMs with LoRA/QLoRA, including the "
                          "token embeddings and the LM head, on your own computer.</p><p>Apache-2.0.</p>")

    # -- dialogs (one place, so tests can answer them) ----------------------------------
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

    def ask(self, title: str, text: str, buttons, default) -> QMessageBox.StandardButton:
        return QMessageBox.question(self, title, text, buttons, default)

    # -- the plan ------------------------------------------------------------------------
    def values(self) -> dict:
        return self.fields.values(self._base)

    def set_plan(self, plan: Plan, path: str | os.PathLike | None = None) -> None:
        self._base = plan.to_dict()
        self.fields.set_values(self._base)
        self._plan_path = Path(path) if path else None
        self._mark_saved()
        self._summary = None
        self._model_timer.start()  # debounced: the window paints first, then the model is read
        self.data_panel.update_max_len(self._base["data"]["max_seq_len"])
        self._refresh_plan_state()
        self._update_title()

    def _set_value(self, key: str, value) -> None:
        """Set one key as if the user had typed it (fires the usual refreshes)."""
        f = self.fields.fields[key]
        f.set(value)
        self._on_fields_changed(key)

    def _mark_saved(self) -> None:
        self._saved = copy.deepcopy(self.values())
        self._update_title()

    @property
    def dirty(self) -> bool:
        return self.values() != self._saved

    def _update_title(self) -> None:
        name = self._plan_path.name if self._plan_path else "untitled plan"
        self.setWindowTitle(f"{name}{' *' if self._saved and self.dirty else ''} — Headtune")

    def _on_fields_changed(self, key: str) -> None:
        if key in MODEL_KEYS:
            self._model_timer.start()
        if key in DATA_KEYS:
            self._data_timer.start()
        if key == "data.max_seq_len":
            self.data_panel.update_max_len(self.fields.fields[key].get())
        if key in ("embeddings.train_embeddings", "embeddings.train_lm_head") and self._summary is not None \
                and self._summary.tied:
            # One matrix on a tied model: the two boxes move together.
            other = "embeddings.train_lm_head" if key.endswith("embeddings") else "embeddings.train_embeddings"
            self.fields.fields[other].set(self.fields.fields[key].get())
        if key in ("embeddings.token_ids", "embeddings.new_tokens"):
            self._show_token_rows()
        self._update_title()
        self._refresh_plan_state()  # well under a millisecond: no need to defer

    def _plan(self, check: bool) -> Plan:
        return plan_from_dict(self.values(), check=check)

    @Slot()
    def _refresh_plan_state(self) -> None:
        """Validate the plan (inline message, Start enabled or not) and re-estimate memory."""
        try:
            self._plan(check=True)
            set_error(self.training_panel.plan_error, None)
            self._plan_problem = None
        except PlanError as exc:
            self._plan_problem = str(exc)
            set_error(self.training_panel.plan_error, f"Plan: {exc}")
        out = self.values()["output"]["dir"]
        self.run_panel.set_runs_folder(Path(out).expanduser().resolve().parent if out else Path.cwd())
        self._update_estimate()
        self._update_buttons()

    def _update_estimate(self) -> None:
        from headtune.core.estimate import estimate
        if self._summary is None:
            self.last_estimate = None
            self.memory_panel.show_message("Estimated peak memory: waiting for the model's configuration…"
                                           if self.values()["model"]["name_or_path"] else
                                           "Estimated peak memory: choose a model first.")
            return
        try:
            plan = self._plan(check=False)
            device, capacity, _ = self.memory_panel.target()
            est = estimate(plan, self._summary.shape, device, capacity or None)
        except HeadtuneError as exc:
            self.last_estimate = None
            self.memory_panel.show_message(f"No estimate: {exc}")
            return
        self.last_estimate = est
        self.memory_panel.show_estimate(est)

    # -- background loading --------------------------------------------------------------
    def _run_task(self, kind: str, fn, on_done, on_error=None) -> None:
        if self._closed:
            return  # no new threads once the window has closed
        self._tag += 1
        tag = (kind, self._tag)
        self._latest[kind] = tag
        if kind != "hardware":  # every other task uses transformers
            fn = _after_transformers_ready(fn)
        worker = TaskWorker(fn, tag)
        worker.succeeded.connect(self._on_task_succeeded)
        worker.failed.connect(self._on_task_failed)
        self._handlers[tag] = (on_done, on_error)
        self.threads.start(worker)

    @Slot(object, object)
    def _on_task_succeeded(self, tag, result) -> None:
        on_done, _ = self._handlers.pop(tag, (None, None))
        if on_done is not None and self._latest.get(tag[0]) == tag:
            on_done(result)

    @Slot(object, str)
    def _on_task_failed(self, tag, message: str) -> None:
        _, on_error = self._handlers.pop(tag, (None, None))
        if self._latest.get(tag[0]) == tag:
            (on_error or (lambda m: self.statusBar().showMessage(m)))(message)

    def _on_hardware_detected(self, result) -> None:
        gpu, ram = result
        self.memory_panel.set_targets(gpu, ram, preferred=self.settings.value("memory/target", None, str))
        self._update_estimate()

    @Slot()
    def _load_model_info(self) -> None:
        from headtune.core.tools.preview import model_summary
        v = self.values()["model"]
        name, trust = v["name_or_path"].strip(), v["trust_remote_code"]
        self._summary = None
        self._tokenizer = None
        self._tokenizer_for = None
        self.training_panel.show_tied(None)
        if not name:
            self.model_panel.show_error("Choose a model: a hub id, a model folder or a .gguf file.", hint=True)
            self._latest.pop("model", None)
            self._update_estimate()
            return
        set_error(self.model_panel.error, None)
        self.statusBar().showMessage(f"Reading the configuration of {name}…")
        self._run_task("model", lambda: model_summary(name), self._on_model_summary, self._on_model_error)
        self.data_panel.show_loading("Loading the model's tokenizer for the preview…")
        self._run_task("tokenizer", lambda: load_tokenizer_for(name, trust), self._on_tokenizer_loaded,
                       self._on_tokenizer_error)
        self._update_estimate()

    def _on_model_summary(self, summary) -> None:
        self._summary = summary
        self.model_panel.show_summary(summary)
        self.training_panel.show_tied(summary.tied)
        if summary.tied:
            e = self.values()["embeddings"]
            if e["train_embeddings"] != e["train_lm_head"]:
                on = e["train_embeddings"] or e["train_lm_head"]
                self.fields.fields["embeddings.train_embeddings"].set(on)
                self.fields.fields["embeddings.train_lm_head"].set(on)
        self._remember("recent/models", summary.name, self.model_panel.path_row)
        self.statusBar().showMessage(f"{summary.architecture}, {summary.params / 1e6:,.0f} M parameters", 5000)
        self._refresh_plan_state()

    def _on_model_error(self, message: str) -> None:
        self.model_panel.show_error(message)
        self.statusBar().showMessage("The model cannot be used; see the Model tab.", 5000)
        self._update_estimate()

    def _on_tokenizer_loaded(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._show_token_rows()
        self._on_token_search_changed(self.training_panel.token_search.text())
        self._load_data_preview()

    def _on_tokenizer_error(self, message: str) -> None:
        self.data_panel.show_loading(f"No preview: the model's tokenizer could not be loaded ({message})")

    @Slot()
    def _load_data_preview(self) -> None:
        from headtune.core.tools.preview import preview_data
        d = self.values()["data"]
        if not d["path"].strip():
            self._latest.pop("data", None)
            self.data_panel.show_error("Choose a dataset: a data file or a hub dataset id.", hint=True)
            return
        if self._tokenizer is None:
            self.data_panel.show_loading("Waiting for the model's tokenizer…")
            return
        try:
            spec = self._plan(check=False).data
        except PlanError as exc:
            self.data_panel.show_error(str(exc))
            return
        # A copy: a Rust tokenizer used from two threads at once can fail ("Already borrowed"),
        # and the UI thread keeps using this one for token search.
        tokenizer = copy.deepcopy(self._tokenizer)
        self.data_panel.show_loading(f"Reading {Path(spec.path).name}…")
        self._run_task("data", lambda: preview_data(spec, tokenizer), self._on_data_preview,
                       self.data_panel.show_error)

    def _on_data_preview(self, preview) -> None:
        self.data_panel.show_preview(preview)
        self.data_panel.update_max_len(self.values()["data"]["max_seq_len"])
        self._remember("recent/datasets", self.values()["data"]["path"], self.data_panel.path_row)

    # -- tokens --------------------------------------------------------------------------
    def _on_token_search_changed(self, text: str) -> None:
        from headtune.core.tools.preview import search_vocab
        if self._tokenizer is None:
            self.training_panel.show_token_results([])
            return
        self.training_panel.show_token_results(search_vocab(self._tokenizer, text))

    def _show_token_rows(self) -> None:
        e = self.values()["embeddings"]
        ids = [i for i in e["token_ids"] if isinstance(i, int)]
        if not ids and not e["new_tokens"]:
            self.training_panel.show_token_rows("")
            return
        parts = []
        if self._tokenizer is not None:
            size = len(self._tokenizer)
            for i in ids:
                parts.append(f"{i} = {self._tokenizer.convert_ids_to_tokens(i)!r}" if 0 <= i < size
                             else f"{i} = (outside the vocabulary)")
        else:
            parts += [str(i) for i in ids]
        parts += [f"new {t!r}" for t in e["new_tokens"]]
        self.training_panel.show_token_rows("Rows trained in tokens mode: " + ", ".join(parts))

    # -- token health --------------------------------------------------------------------
    def _on_health_panel_check_requested(self) -> None:
        from headtune.core.tools.health import inspect_model
        try:
            plan = self._plan(check=False)
        except PlanError as exc:
            self.health_panel.show_error(str(exc))
            return
        name = plan.model.name_or_path.strip()
        if not name:
            self.health_panel.show_error("Choose a model first (Model tab).")
            return
        spec = plan.data if plan.data.path.strip() else None
        self.health_panel.show_running(name)
        self._run_task("health", lambda: inspect_model(name, spec), self.health_panel.show_report,
                       self.health_panel.show_error)

    def _on_health_panel_train_rows_requested(self, ids: list) -> None:
        change = {"embeddings.mode": "tokens", "embeddings.token_ids": sorted(ids),
                  "embeddings.train_embeddings": True, "embeddings.train_lm_head": True}
        self._on_memory_panel_advice_applied(change)

    def _on_health_panel_init_mean_requested(self) -> None:
        self._on_memory_panel_advice_applied({"embeddings.init_untrained": "mean"})

    # -- memory panel --------------------------------------------------------------------
    def _on_memory_panel_advice_applied(self, change: dict) -> None:
        for key, value in change.items():
            self.fields.fields[key].set(value)
            self._on_fields_changed(key)
        self.statusBar().showMessage("Applied: " + ", ".join(f"{k} = {v}" for k, v in change.items()), 5000)

    def _on_memory_panel_target_changed(self) -> None:
        self.settings.setValue("memory/target", self.memory_panel.target_key())
        self._update_estimate()

    # -- files ---------------------------------------------------------------------------
    def _start_dir(self, key: str) -> str:
        return self.settings.value(f"dirs/{key}", str(Path.cwd()), str)

    def _on_model_browse_requested(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model (a .gguf file, or config.json in a model "
                                              "folder)", self._start_dir("model"),
                                              "Models (config.json *.gguf);;All files (*)")
        if path:
            self.settings.setValue("dirs/model", str(Path(path).parent))
            self._set_value("model.name_or_path", str(Path(path).parent) if path.endswith("config.json") else path)

    def _on_data_browse_requested(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose the training data", self._start_dir("data"),
                                              "Data (*.jsonl *.json *.csv *.parquet *.txt);;All files (*)")
        if path:
            self.settings.setValue("dirs/data", str(Path(path).parent))
            self._set_value("data.path", path)

    def _on_output_browse_requested(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for the run", self._start_dir("output"))
        if path:
            self.settings.setValue("dirs/output", path)
            self._set_value("output.dir", path)

    def _remember(self, key: str, value: str, row) -> None:
        items = [x for x in (self.settings.value(key, [], list) or []) if x != value]
        items = [value] + items[: RECENT_MAX - 1]
        self.settings.setValue(key, items)
        row.set_recent(items)

    def _confirm_discard(self) -> bool:
        """True when there are no unsaved changes, or the user saved or discarded them."""
        if not self.dirty:
            return True
        answer = self.ask("Unsaved plan", "The plan has changes that are not saved. Save them first?",
                          QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard |
                          QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Save)
        if answer == QMessageBox.StandardButton.Save:
            return self.save_plan()
        return answer == QMessageBox.StandardButton.Discard

    def new_plan(self) -> None:
        if self._confirm_discard():
            self.set_plan(Plan())

    def open_plan(self, path: str | None = None) -> bool:
        if not path:
            if not self._confirm_discard():
                return False
            path, _ = QFileDialog.getOpenFileName(self, "Open a plan", self._start_dir("plan"), PLAN_FILTER)
            if not path:
                return False
        try:
            plan = load_plan(path, check=False)
        except HeadtuneError as exc:
            self.show_error("Cannot open the plan", str(exc))
            return False
        self.settings.setValue("dirs/plan", str(Path(path).parent))
        self.set_plan(plan, path)
        return True

    def save_plan(self) -> bool:
        if self._plan_path is None:
            return self.save_plan_as()
        return self._write_plan(self._plan_path)

    def save_plan_as(self, path: str | None = None) -> bool:
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Save the plan", self._start_dir("plan"), PLAN_FILTER)
            if not path:
                return False
            if not path.endswith((".yaml", ".yml")):
                path += ".yaml"
        return self._write_plan(Path(path))

    def _write_plan(self, path: Path) -> bool:
        try:
            self._plan(check=False).save(path)
        except (HeadtuneError, OSError) as exc:
            self.show_error("Cannot save the plan", f"{path}: {exc}")
            return False
        self._plan_path = path
        self.settings.setValue("dirs/plan", str(path.parent))
        self._mark_saved()
        self.statusBar().showMessage(f"Plan saved to {path}", 5000)
        return True

    # -- running -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def _update_buttons(self) -> None:
        from headtune.core.runfolder import RunFolder
        running = self.running
        valid = self._plan_problem is None
        rp = self.run_panel
        rp.start_button.setEnabled(not running and valid)
        rp.start_button.setToolTip("Start a new run with this plan." if valid else
                                   f"Fix the plan first: {self._plan_problem}")
        rp.stop_button.setEnabled(running and not self._worker.stop_requested)
        target = rp.selected_run() or self._last_run_dir
        rp.resume_button.setEnabled(not running and bool(target) and RunFolder(target).has_checkpoint())
        exportable = target if target and (Path(target) / "adapter" / "adapter_config.json").is_file() else None
        if running and exportable and Path(exportable) == Path(self._worker.plan.output.dir):
            exportable = None  # its adapter is rewritten when the run ends
        rp.export_button.setEnabled(bool(exportable))
        self.chat_panel.set_run(exportable)
        self.start_action.setEnabled(rp.start_button.isEnabled())
        self.stop_action.setEnabled(rp.stop_button.isEnabled())

    def start_run(self) -> None:
        if self.running:
            return
        try:
            plan = self._plan(check=True)
        except PlanError as exc:
            self.show_error("The plan cannot run", str(exc))
            return
        fresh = fresh_run_dir(plan.output.dir)
        if fresh != plan.output.dir:
            self.fields.fields["output.dir"].set(fresh)
            plan.output.dir = fresh
            self.run_panel.log(f"The output folder was in use; this run goes to {fresh}")
        resolve_paths(plan, Path.cwd())  # the child process gets absolute paths
        self._launch(plan, resume=False)

    def resume_run(self) -> None:
        from headtune.core.training.job import resume_plan
        target = self.run_panel.selected_run() or self._last_run_dir
        if self.running or not target:
            return
        try:
            plan = resume_plan(target)
        except HeadtuneError as exc:
            self.show_error("Cannot resume this run", str(exc))
            return
        self._launch(plan, resume=True)

    def _launch(self, plan: Plan, resume: bool) -> None:
        from headtune.core.estimate import estimate
        self.chat_panel.release_model()  # its memory (GPU memory too) goes to the training run
        self._last_run_dir = plan.output.dir
        self.run_panel.reset(("Resuming " if resume else "Starting ") + Path(plan.output.dir).name + "…")
        gpu = self.memory_panel.target_combo.findText("This GPU:", Qt.MatchFlag.MatchStartsWith) >= 0
        self.run_panel.set_estimate(estimate(plan, self._summary.shape, "cuda" if gpu else "cpu").total_bytes
                                    if self._summary is not None else None)
        self.run_panel.log(f"{'Resuming' if resume else 'Starting'} run in {plan.output.dir}")
        worker = TrainingWorker(plan, resume=resume)
        worker.run_started.connect(self._on_worker_run_started)
        worker.logged.connect(self._on_worker_logged)
        worker.step_logged.connect(self._on_worker_event)
        worker.memory_sampled.connect(self._on_worker_event)
        worker.evaluated.connect(self._on_worker_evaluated)
        worker.checkpoint_saved.connect(self._on_worker_checkpoint_saved)
        worker.run_finished.connect(self._on_worker_run_finished)
        worker.run_stopped.connect(self._on_worker_run_stopped)
        worker.failed.connect(self._on_worker_failed)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self.run_panel.state_label.setText("Loading…")
        self.run_panel.tabs.setCurrentWidget(self.run_panel.loss_tab)
        self.threads.start(worker)
        self._update_buttons()

    def stop_run(self) -> None:
        if self._worker is None:
            return
        self._worker.request_stop()
        self.run_panel.state_label.setText("Stopping after this step (saving a checkpoint)…")
        self.run_panel.log("Stop requested: the run saves a checkpoint and the adapter, then ends.")
        self._update_buttons()

    @Slot(object)
    def _on_worker_run_started(self, e: ev.Started) -> None:
        self.run_panel.add_event(e)
        self.run_panel.state_label.setText(f"Running on {e.device}")
        self.run_panel.log(f"Started: {e.message}; {e.train_examples} training and {e.val_examples} validation "
                           f"examples; {e.total_steps} steps")
        self.run_panel.refresh_runs()

    @Slot(object)
    def _on_worker_logged(self, e: ev.Log) -> None:
        self.run_panel.log(e.message)

    @Slot(object)
    def _on_worker_event(self, e) -> None:
        self.run_panel.add_event(e)

    @Slot(object)
    def _on_worker_evaluated(self, e: ev.Eval) -> None:
        self.run_panel.add_event(e)
        self.run_panel.log(f"Step {e.step}: eval loss {e.eval_loss:.4f}")

    @Slot(object)
    def _on_worker_checkpoint_saved(self, e: ev.Checkpoint) -> None:
        self.run_panel.log(f"Checkpoint saved: {e.path}")

    @Slot(object)
    def _on_worker_run_finished(self, e: ev.Finished) -> None:
        loss = f", eval loss {e.eval_loss:.4f}" if e.eval_loss is not None else ""
        self.run_panel.state_label.setText(f"Finished at step {e.step}{loss}")
        self.run_panel.log(f"Finished at step {e.step}{loss}. Adapter: {e.adapter_path}")
        self.statusBar().showMessage(f"Training finished; the adapter is in {e.adapter_path}")

    @Slot(object)
    def _on_worker_run_stopped(self, e: ev.Stopped) -> None:
        where = f"; checkpoint {e.checkpoint_path}" if e.checkpoint_path else ""
        self.run_panel.state_label.setText(f"Stopped at step {e.step}")
        self.run_panel.log(f"Stopped at step {e.step}{where}. Resume continues from there.")
        self.statusBar().showMessage(f"Stopped at step {e.step}; Resume continues the run.")

    @Slot(object)
    def _on_worker_failed(self, e: ev.Failed) -> None:
        self.run_panel.state_label.setText("Failed")
        self.run_panel.show_failed()
        self.run_panel.log(f"Failed: {e.message}")
        self.show_error("Training failed", e.message)

    @Slot()
    def _on_worker_finished(self) -> None:
        self._worker = None
        self.run_panel.refresh_runs()
        self._update_buttons()
        if self._close_when_done:
            self.close()

    def _on_run_panel_open_run_requested(self, path: str) -> None:
        if self.running:
            self.statusBar().showMessage("A run is going; its plots stay on screen until it ends.", 5000)
            return
        n = self.run_panel.load_run(path)
        self.run_panel.tabs.setCurrentWidget(self.run_panel.loss_tab)
        self.statusBar().showMessage(f"Showing {Path(path).name} ({n} events)", 5000)

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
        self.model_panel.path_row.set_recent(self.settings.value("recent/models", [], list) or [])
        self.data_panel.path_row.set_recent(self.settings.value("recent/datasets", [], list) or [])

    def _save_settings(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/splitter", self.splitter.saveState())
        self.settings.sync()

    def closeEvent(self, event) -> None:
        if self.running and not self._close_when_done:
            answer = self.ask("A run is going", "Training is running. Stop it (a checkpoint and the adapter are "
                              "saved) and close when it has stopped?",
                              QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                              QMessageBox.StandardButton.Yes)
            if answer == QMessageBox.StandardButton.Yes:
                self._close_when_done = True
                self.stop_run()
                self.statusBar().showMessage("Stopping the run; the window closes when it is saved.")
            event.ignore()
            return
        if self.running:  # close requested again while the stop is being saved
            event.ignore()
            return
        if not self._confirm_discard():
            event.ignore()
            return
        self._save_settings()
        self.hide()  # background lookups may need a moment to finish; do not look frozen meanwhile
        self.shutdown()
        event.accept()

    def shutdown(self) -> None:
        """Start nothing new and wait for the background threads (so none outlives the window)."""
        self._closed = True
        for timer in (self._model_timer, self._data_timer):
            timer.stop()
        self.chat_panel.stop()  # the answers end after the current token
        if self._export_dialog is not None:
            self._export_dialog.cancel_export()  # its temporary folder is removed; nothing half-written stays
        if not self.threads.wait_all():
            self.threads.wait_all(None)  # a model still loading cannot be interrupted: wait (window hidden)
