"""The Token health panel: untrained-looking rows of the model, who uses them, the template check,
and one-click fixes (train exactly those rows in tokens mode, or reset them to the mean row).

The check itself is ``headtune inspect MODEL --json``, run in a child process by
``controllers.tools.HealthController``; this panel only shows it.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from .plan_panels import set_error

COLUMNS = ("id", "token", "matrix", "why it looks untrained", "template uses", "data uses (trained)")


class TokenHealthPanel(QWidget):
    check_requested = Signal()
    train_rows_requested = Signal(list)
    init_mean_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        intro = QLabel(
            "Base models ship embedding rows that were never trained (special and reserved tokens). "
            "If your template or data uses them, LoRA alone cannot fix them: train those rows, or "
            "start them from the average row."
        )
        intro.setWordWrap(True)
        lay.addWidget(intro)
        row = QHBoxLayout()
        self.check_button = QPushButton("Check tokens")
        self.check_button.setObjectName("checkTokensButton")
        self.check_button.setAccessibleName("Check the model's tokens")
        self.check_button.setToolTip(
            "Read the model's embedding (and head) rows and look for untrained ones; "
            "count their use by the chat template and the dataset."
        )
        self.check_button.clicked.connect(self.check_requested.emit)
        row.addWidget(self.check_button)
        self.summary = QLabel("Not checked yet.")
        self.summary.setObjectName("tokenHealthSummary")
        self.summary.setWordWrap(True)
        row.addWidget(self.summary, 1)
        lay.addLayout(row)
        self.error = QLabel()
        self.error.setObjectName("tokenHealthError")
        self.error.setWordWrap(True)
        self.error.hide()
        lay.addWidget(self.error)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("tokenHealthTable")
        self.table.setAccessibleName("Untrained-looking tokens")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        lay.addWidget(self.table, 1)
        self.template = QLabel()
        self.template.setObjectName("templateCheckLabel")
        self.template.setWordWrap(True)
        self.template.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.template)
        self.verdict = QLabel()
        self.verdict.setObjectName("tokenHealthVerdict")
        self.verdict.setWordWrap(True)
        lay.addWidget(self.verdict)
        fixes = QHBoxLayout()
        self.train_button = QPushButton("Train these rows (tokens mode)")
        self.train_button.setObjectName("applyTokensModeButton")
        self.train_button.setAccessibleName("Train the flagged rows in tokens mode")
        self.train_button.clicked.connect(lambda: self.train_rows_requested.emit(list(self._ids)))
        self.init_button = QPushButton("Start them from the mean row")
        self.init_button.setObjectName("applyInitMeanButton")
        self.init_button.setAccessibleName("Initialise untrained rows to the mean")
        self.init_button.clicked.connect(self.init_mean_requested.emit)
        for b in (self.train_button, self.init_button):
            b.setEnabled(False)
            fixes.addWidget(b)
        fixes.addStretch(1)
        lay.addLayout(fixes)
        self._ids: list[int] = []

    def show_running(self, what: str) -> None:
        set_error(self.error, None)
        self.summary.setText(f"Checking {what}…")
        self.check_button.setEnabled(False)

    def show_error(self, text: str) -> None:
        self.check_button.setEnabled(True)
        self.summary.setText("The check could not run.")
        set_error(self.error, text)

    def show_report(self, r) -> None:
        self.check_button.setEnabled(True)
        set_error(self.error, None)
        used = r.used_ids
        added = ""
        if r.new_tokens:
            used_new = sum(1 for t in r.new_tokens if t.data_uses)
            added = (
                f" The plan adds {len(r.new_tokens)} tokens ({used_new} used by the data); their rows are "
                "started when training begins."
            )
        self.summary.setText(
            f"{len(r.flagged)} of {r.vocab:,} rows look untrained; {len(used)} of them are used by "
            f"the template or the data ({'tied' if r.tied else 'untied'} embeddings and head).{added}"
        )
        self.table.setRowCount(len(r.flagged))
        for i, row in enumerate(r.flagged):
            cells = (
                str(row.id),
                repr(row.token),
                row.matrix,
                "; ".join(row.reasons),
                str(r.template_counts.get(row.id, 0)),
                f"{r.data_counts.get(row.id, 0)} ({r.data_trained_counts.get(row.id, 0)})",
            )
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.table.setItem(i, c, item)
        self.table.resizeColumnsToContents()
        if r.template is not None:
            t = r.template
            share = t.trained_tokens / max(1, t.trained_tokens + t.masked_tokens)
            problems = "".join(f"<li>{html.escape(p)}</li>" for p in t.problems) or "<li>no problems found</li>"
            self.template.setText(
                f"<b>Template check</b> on {t.rows_checked} rows: end token "
                f"<code>{html.escape(str(t.end_token))}</code>, {share:.0%} of tokens trained."
                f"<ul>{problems}</ul>"
            )
        else:
            self.template.setText("Choose a dataset to check the template and the labels too.")
        self.verdict.setText(f"<b>{r.verdict.capitalize()}.</b> {html.escape(r.recommendation)}")
        self._ids = used or [row.id for row in r.flagged]
        self.train_button.setEnabled(bool(r.flagged))
        self.init_button.setEnabled(bool(r.flagged))
