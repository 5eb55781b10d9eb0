"""The Export dialog: adapter, merged model or GGUF, with a progress bar.

The export runs in a child process, ``headtune export --progress-json`` (like training): a
merge holds a whole model in RAM, which goes back to the system when the child ends, and a
crash or an out-of-memory kill cannot take the window with it. The export itself is atomic
(a hidden temporary folder renamed at the end); Cancel kills the child and removes that folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from .workers import Threads, train_command

FORMATS = [("gguf", "GGUF (llama.cpp, Ollama, LM Studio)"), ("merged", "Merged model (safetensors)"),
           ("adapter", "Adapter only (PEFT)")]


def default_destination(run_dir: str, fmt: str, gguf_type: str) -> str:
    run = Path(run_dir)
    suffix = f"gguf-{gguf_type}" if fmt == "gguf" else fmt
    return str(run.with_name(f"{run.name}-{suffix}"))


def export_args(run_dir: str, fmt: str, out: str, dtype: str | None, gguf_type: str, overwrite: bool) -> list[str]:
    args = ["export", run_dir, "--format", fmt, "--out", out, "--gguf-type", gguf_type, "--progress-json"]
    if dtype:
        args += ["--dtype", dtype]
    if overwrite:
        args.append("--overwrite")
    return args


class ExportWorker(QObject):
    """Runs one ``headtune export`` child and reports progress, the result or the error."""

    progressed = Signal(float, str)
    succeeded = Signal(dict)
    failed = Signal(str)
    finished = Signal()

    def __init__(self, args: list[str], out: str):
        super().__init__()
        self.args = args
        self.out = Path(out).expanduser().resolve()  # as the export resolves it (its temp folder is beside)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Safe from the UI thread."""
        self._cancelled.set()
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()

    @Slot()
    def run(self) -> None:
        try:
            self._supervise()
        except Exception as exc:
            self.failed.emit(f"The export process could not run: {exc}")
        finally:
            self.finished.emit()

    def _supervise(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", TOKENIZERS_PARALLELISM="false")
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
        with self._lock:
            if self._cancelled.is_set():
                self.failed.emit("Export cancelled.")
                return
            self._proc = subprocess.Popen(train_command(self.args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                          env=env, creationflags=flags)
        proc = self._proc
        tail: deque[str] = deque(maxlen=20)
        reader = threading.Thread(target=lambda: [tail.append(s.rstrip()) for s in proc.stderr if s.strip()],
                                  daemon=True)
        reader.start()
        result = None
        for line in proc.stdout:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if "progress" in data:
                self.progressed.emit(float(data["progress"]), str(data.get("message", "")))
            elif "path" in data:
                result = data
        code = proc.wait()
        reader.join(timeout=5)
        if result is not None and code == 0:
            self.succeeded.emit(result)
            return
        # Killed (cancel, or out of memory) before it could clean up: remove its temporary folder.
        for partial in self.out.parent.glob(f".{self.out.name}.partial-*"):
            shutil.rmtree(partial, ignore_errors=True)
        if self._cancelled.is_set():
            self.failed.emit("Export cancelled; nothing was written.")
            return
        message = next((s[len("headtune: "):] for s in reversed(tail) if s.startswith("headtune: ")), None)
        self.failed.emit(message or f"The export process ended unexpectedly (exit code {code}); nothing was "
                                    "written." + (" Its last output:\n" + "\n".join(tail) if tail else ""))


class ExportDialog(QDialog):
    """Choose format, dtype and destination for a run; export with a progress bar."""

    exported = Signal(dict)

    def __init__(self, threads: Threads, run_dir: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("exportDialog")
        self.setWindowTitle("Export model")
        self.resize(640, 300)
        self._threads = threads
        self._worker: ExportWorker | None = None
        self._dest_edited = False
        self.run_dir = run_dir
        self.result: dict | None = None

        self.run_label = QLabel(run_dir)
        self.run_label.setObjectName("exportRunLabel")
        self.run_label.setWordWrap(True)
        self.format_combo = QComboBox()
        self.format_combo.setObjectName("exportFormat")
        self.format_combo.setAccessibleName("Export format")
        for value, label in FORMATS:
            self.format_combo.addItem(label, value)
        self.gguf_combo = QComboBox()
        self.gguf_combo.setObjectName("exportGgufType")
        self.gguf_combo.setAccessibleName("GGUF weight type")
        self.gguf_combo.addItem("q8_0 (8-bit, half the size)", "q8_0")
        self.gguf_combo.addItem("f16 (16-bit, exact)", "f16")
        self.dtype_combo = QComboBox()
        self.dtype_combo.setObjectName("exportDtype")
        self.dtype_combo.setAccessibleName("Merged weights dtype")
        for value in ("default", "bfloat16", "float16", "float32"):
            self.dtype_combo.addItem(value, None if value == "default" else value)
        self.dtype_combo.setToolTip("Weights of the merged model: default is bfloat16 (float16 for GGUF f16).")
        self.dest_edit = QLineEdit()
        self.dest_edit.setObjectName("exportDestination")
        self.dest_edit.setAccessibleName("Export destination folder")
        self.dest_edit.textEdited.connect(self._on_dest_edited)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        dest_row = QHBoxLayout()
        dest_row.addWidget(self.dest_edit, 1)
        dest_row.addWidget(browse)
        self.overwrite_box = QCheckBox("Overwrite the destination if it exists (only once the export is complete)")
        self.overwrite_box.setObjectName("exportOverwrite")
        form = QFormLayout()
        form.addRow("Run", self.run_label)
        form.addRow("Format", self.format_combo)
        form.addRow("GGUF type", self.gguf_combo)
        form.addRow("Merge dtype", self.dtype_combo)
        form.addRow("Destination", dest_row)
        form.addRow("", self.overwrite_box)
        self.progress = QProgressBar()
        self.progress.setObjectName("exportProgress")
        self.progress.setAccessibleName("Export progress")
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status = QLabel("Exports are written to a temporary folder and renamed when complete.")
        self.status.setObjectName("exportStatus")
        self.status.setWordWrap(True)
        self.export_button = QPushButton("Export")
        self.export_button.setObjectName("exportStartButton")
        self.export_button.setDefault(True)
        self.export_button.clicked.connect(self.start_export)
        self.cancel_button = QPushButton("Cancel export")
        self.cancel_button.setObjectName("exportCancelButton")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_export)
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.format_combo.currentIndexChanged.connect(self._on_options_changed)
        self.gguf_combo.currentIndexChanged.connect(self._on_options_changed)
        self._on_options_changed()

    @property
    def running(self) -> bool:
        return self._worker is not None

    def set_run(self, run_dir: str) -> None:
        if self.running:
            return
        self.run_dir = run_dir
        self.run_label.setText(run_dir)
        self._dest_edited = False
        self.progress.setValue(0)
        self._on_options_changed()

    def _on_dest_edited(self, _text: str) -> None:
        self._dest_edited = True

    def _on_options_changed(self, *_):
        fmt = self.format_combo.currentData()
        self.gguf_combo.setEnabled(fmt == "gguf")
        self.dtype_combo.setEnabled(fmt != "adapter")
        if not self._dest_edited:
            self.dest_edit.setText(default_destination(self.run_dir, fmt, self.gguf_combo.currentData()))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export into folder", str(Path(self.run_dir).parent))
        if folder:
            fmt = self.format_combo.currentData()
            self.dest_edit.setText(str(Path(folder) / Path(default_destination(self.run_dir, fmt,
                                                                              self.gguf_combo.currentData())).name))
            self._dest_edited = True

    @Slot()
    def start_export(self) -> None:
        if self.running:
            return
        out = self.dest_edit.text().strip()
        if not out:
            self.status.setText("Choose a destination folder.")
            return
        args = export_args(self.run_dir, self.format_combo.currentData(), out, self.dtype_combo.currentData(),
                           self.gguf_combo.currentData(), self.overwrite_box.isChecked())
        self.result = None
        worker = ExportWorker(args, out)
        worker.progressed.connect(self._on_worker_progressed)
        worker.succeeded.connect(self._on_worker_succeeded)
        worker.failed.connect(self._on_worker_failed)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self.progress.setValue(0)
        self.status.setText("Starting the export…")
        self._set_busy(True)
        self._threads.start(worker)

    @Slot()
    def cancel_export(self) -> None:
        if self._worker is not None:
            self.status.setText("Cancelling…")
            self._worker.cancel()

    def _set_busy(self, busy: bool) -> None:
        self.export_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        for w in (self.format_combo, self.gguf_combo, self.dtype_combo, self.dest_edit, self.overwrite_box):
            w.setEnabled(not busy)
        if not busy:
            self._on_options_changed()

    @Slot(float, str)
    def _on_worker_progressed(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(round(fraction * 100)))
        self.status.setText(message)

    @Slot(dict)
    def _on_worker_succeeded(self, result: dict) -> None:
        self.result = result
        self.progress.setValue(100)
        self.status.setText(f"Exported to {result['path']} in {result['seconds']:.1f} s, peak RAM "
                            f"{result['peak_rss_bytes'] / 2**30:.2f} GiB. " + " ".join(result.get("notes", [])))
        self.exported.emit(result)

    @Slot(str)
    def _on_worker_failed(self, message: str) -> None:
        self.progress.setValue(0)
        self.status.setText(f"Export failed: {message}")

    @Slot()
    def _on_worker_finished(self) -> None:
        self._worker = None
        self._set_busy(False)

    def closeEvent(self, event) -> None:
        if self.running:  # the export goes on; closing the dialog only hides it
            self.hide()
            event.ignore()
            return
        super().closeEvent(event)
