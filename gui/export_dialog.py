"""The Export dialog: adapter, merged model or GGUF, with a progress bar.

The export runs in a child process, ``headtune export --progress-json`` (like training): a
merge holds a whole model in RAM, which goes back to the system when the child ends, and a
crash or an out-of-memory kill cannot take the window with it. The export itself is atomic
(a hidden temporary folder renamed at the end); Cancel kills the child and removes that folder.
The dialog is a view: it asks for an export (``export_requested``) or a cancel, and
``controllers.tools.ExportController`` runs the child and reports back through ``show_*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .protocols import ExportDone, ExportProgressed

# The formats core offers (its registry), the most asked-for first.
FIRST = "gguf"


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


@dataclass(frozen=True)
class ExportRequest:
    """One export as the dialog's options describe it."""

    args: tuple[str, ...]  # the ``headtune`` arguments
    out: str


class ExportDialog(QDialog):
    """Choose format, dtype and destination for a run; export with a progress bar."""

    export_requested = Signal(object)  # ExportRequest
    cancel_requested = Signal()

    def __init__(self, run_dir: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("exportDialog")
        self.setWindowTitle("Export model")
        self.resize(640, 300)
        self._running = False
        self._dest_edited = False
        self.run_dir = run_dir
        self.result: dict | None = None

        self.run_label = QLabel(run_dir)
        self.run_label.setObjectName("exportRunLabel")
        self.run_label.setWordWrap(True)
        self.format_combo = QComboBox()
        self.format_combo.setObjectName("exportFormat")
        self.format_combo.setAccessibleName("Export format")
        from headtune.core.tools.export import FORMATS

        for fmt in sorted(FORMATS.values(), key=lambda f: f.name != FIRST):
            self.format_combo.addItem(fmt.label, fmt.name)
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
        return self._running

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
            self.dest_edit.setText(
                str(Path(folder) / Path(default_destination(self.run_dir, fmt, self.gguf_combo.currentData())).name)
            )
            self._dest_edited = True

    @Slot()
    def start_export(self) -> None:
        if self.running:
            return
        out = self.dest_edit.text().strip()
        if not out:
            self.status.setText("Choose a destination folder.")
            return
        args = export_args(
            self.run_dir,
            self.format_combo.currentData(),
            out,
            self.dtype_combo.currentData(),
            self.gguf_combo.currentData(),
            self.overwrite_box.isChecked(),
        )
        self.export_requested.emit(ExportRequest(tuple(args), out))

    @Slot()
    def cancel_export(self) -> None:
        if self.running:
            self.status.setText("Cancelling…")
            self.cancel_requested.emit()

    def _set_busy(self, busy: bool) -> None:
        self._running = busy
        self.export_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        for w in (self.format_combo, self.gguf_combo, self.dtype_combo, self.dest_edit, self.overwrite_box):
            w.setEnabled(not busy)
        if not busy:
            self._on_options_changed()

    # -- what the controller reports -------------------------------------------------------
    def show_started(self) -> None:
        self.result = None
        self.progress.setValue(0)
        self.status.setText("Starting the export…")
        self._set_busy(True)

    def show_progress(self, e: ExportProgressed) -> None:
        self.progress.setValue(int(round(e.fraction * 100)))
        self.status.setText(e.message)

    def show_done(self, result: ExportDone) -> None:
        self.result = result
        self.progress.setValue(100)
        self.status.setText(
            f"Exported to {result.path} in {result.seconds:.1f} s, peak RAM "
            f"{result.peak_rss_bytes / 2**30:.2f} GiB. " + " ".join(result.notes)
        )

    def show_failed(self, message: str) -> None:
        self.progress.setValue(0)
        self.status.setText(f"Export failed: {message}")

    def show_ended(self) -> None:
        self._set_busy(False)

    def closeEvent(self, event) -> None:
        if self.running:  # the export goes on; closing the dialog only hides it
            self.hide()
            event.ignore()
            return
        super().closeEvent(event)
