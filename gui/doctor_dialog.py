"""Help → System check: the ``headtune doctor`` report in a dialog, with "Copy diagnostics".

The checks (``headtune doctor --json``) import torch and bitsandbytes and run a tiny quantised
matmul in native kernels, which takes seconds and may crash on a broken install, so they run
in a child process (``controllers.tools.DoctorController``); the dialog is the view: it shows
"Checking…" meanwhile, then the report or what went wrong, and stays responsive. The report
text is exactly what ``headtune doctor`` prints, so a bug report pasted from the window and one
from the terminal read the same.
"""

from __future__ import annotations

from PySide6.QtCore import Signal, Slot
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

_STATUS_COLOURS = {"ok": "#1b7f3b", "info": "#555555", "warning": "#a15c00", "error": "#b00020"}


class DoctorDialog(QDialog):
    """Shows the system check's report; ``check_requested`` asks for a (new) check."""

    check_requested = Signal()
    checked = Signal(object)  # the Report, once a check has finished
    check_failed = Signal(str)

    def __init__(self, output_dir: str = "runs", parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("doctorDialog")
        self.setWindowTitle("System check")
        self.resize(760, 560)
        self.output_dir = output_dir
        self.report = None
        self._running = False

        self.summary = QLabel()
        self.summary.setObjectName("doctorSummary")
        self.summary.setWordWrap(True)
        self.text = QPlainTextEdit()
        self.text.setObjectName("doctorReport")
        self.text.setReadOnly(True)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.copy_button = QPushButton("Copy diagnostics")
        self.copy_button.setObjectName("copyDiagnosticsButton")
        self.copy_button.setToolTip("Put the whole report on the clipboard, to paste into a bug report")
        self.again_button = QPushButton("Check again")
        self.again_button.setObjectName("checkAgainButton")
        close = QPushButton("Close")
        close.clicked.connect(self.close)
        self.copy_button.clicked.connect(self.copy_diagnostics)
        self.again_button.clicked.connect(self.check_requested.emit)

        buttons = QHBoxLayout()
        buttons.addWidget(self.copy_button)
        buttons.addWidget(self.again_button)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.text, 1)
        layout.addLayout(buttons)

    @property
    def running(self) -> bool:
        return self._running

    def show_running(self) -> None:
        self._running = True
        self.copy_button.setEnabled(False)
        self.again_button.setEnabled(False)
        self.summary.setText(
            "Checking this computer: versions, GPU, a tiny 4-bit and 8-bit bitsandbytes matmul, bf16, memory and disk…"
        )
        self.text.setPlainText("")

    def show_report(self, report) -> None:
        self._running = False
        self.report = report
        worst = "error" if any(c.status == "error" for c in report.checks) else "warning" if report.problems else "ok"
        self.summary.setText(f"<b style='color:{_STATUS_COLOURS[worst]}'>{report.summary}</b>")
        self.text.setPlainText(report.to_text())
        self.copy_button.setEnabled(True)
        self.again_button.setEnabled(True)
        self.checked.emit(report)

    def show_failure(self, message: str) -> None:
        self._running = False
        self.report = None
        self.summary.setText(f"<b style='color:{_STATUS_COLOURS['error']}'>The system check could not finish.</b>")
        self.text.setPlainText(message)
        self.copy_button.setEnabled(True)  # the failure itself is worth reporting
        self.again_button.setEnabled(True)
        self.check_failed.emit(message)

    def diagnostics(self) -> str:
        return self.report.to_text() if self.report is not None else self.text.toPlainText()

    @Slot()
    def copy_diagnostics(self) -> None:
        QGuiApplication.clipboard().setText(self.diagnostics())
        self.summary.setText(self.summary.text() + " <i>(copied to the clipboard)</i>")
