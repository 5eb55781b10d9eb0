"""The Chat tab: one prompt, answered by the base model and by the fine-tuned one, side by side.

A view: Send and Stop become ``send_requested`` / ``stop_requested``, and
``controllers.chat.ChatController`` runs the model in a child ``headtune chat RUN --json-lines``
(loaded on the first prompt and kept for the next ones) and streams both answers back here,
token by token, alternately, so both fill in at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

IDLE_TEXT = "Greedy decoding: the same prompt gives the same answers."


@dataclass(frozen=True)
class ChatRequest:
    prompt: str
    max_new_tokens: int


class ChatPanel(QWidget):
    """Prompt box, Send/Stop, and the two answers."""

    send_requested = Signal(object)  # ChatRequest
    stop_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._has_run = False
        self._busy = False
        self.run_label = QLabel("No run yet: train one, or pick one in the Runs tab.")
        self.run_label.setObjectName("chatRunLabel")
        self.run_label.setWordWrap(True)
        self.prompt = QPlainTextEdit()
        self.prompt.setObjectName("chatPrompt")
        self.prompt.setAccessibleName("Chat prompt")
        self.prompt.setPlaceholderText("A prompt for both models…")
        self.prompt.setMaximumHeight(80)
        self.send_button = QPushButton("Send")
        self.send_button.setObjectName("chatSendButton")
        self.send_button.setAccessibleName("Send the prompt to both models")
        self.send_button.clicked.connect(self._on_send_button_clicked)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("chatStopButton")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_requested.emit)
        self.max_tokens = QSpinBox()
        self.max_tokens.setObjectName("chatMaxTokens")
        self.max_tokens.setRange(1, 4096)
        self.max_tokens.setValue(128)
        self.max_tokens.setPrefix("max tokens ")
        self.base_output = self._output("chatBaseOutput", "Base model answer")
        self.tuned_output = self._output("chatTunedOutput", "Fine-tuned model answer")
        self.status = QLabel(IDLE_TEXT)
        self.status.setObjectName("chatStatus")
        row = QHBoxLayout()
        row.addWidget(self.send_button)
        row.addWidget(self.stop_button)
        row.addWidget(self.max_tokens)
        row.addWidget(self.status, 1)
        answers = QGridLayout()
        answers.addWidget(QLabel("<b>Base model</b>"), 0, 0)
        answers.addWidget(QLabel("<b>Fine-tuned</b>"), 0, 1)
        answers.addWidget(self.base_output, 1, 0)
        answers.addWidget(self.tuned_output, 1, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.run_label)
        layout.addWidget(self.prompt)
        layout.addLayout(row)
        layout.addLayout(answers, 1)
        self._update_buttons()

    @staticmethod
    def _output(name: str, accessible: str) -> QPlainTextEdit:
        w = QPlainTextEdit()
        w.setObjectName(name)
        w.setAccessibleName(accessible)
        w.setReadOnly(True)
        return w

    def show_run(self, run_dir: str | None) -> None:
        """The run chatted with (a folder with a saved adapter), or None."""
        self._has_run = bool(run_dir)
        self.run_label.setText(
            f"Run: {run_dir}" if run_dir else "No run with a saved adapter: train one, or pick one in the Runs tab."
        )
        self._update_buttons()

    def show_busy(self, busy: bool, status: str) -> None:
        self._busy = busy
        self.status.setText(status)
        self._update_buttons()

    def clear_answers(self) -> None:
        self.base_output.clear()
        self.tuned_output.clear()

    def append(self, tuned: bool, text: str) -> None:
        box = self.tuned_output if tuned else self.base_output
        box.moveCursor(box.textCursor().MoveOperation.End)
        box.insertPlainText(text)

    def _update_buttons(self) -> None:
        self.send_button.setEnabled(self._has_run and not self._busy)
        self.stop_button.setEnabled(self._busy)

    @Slot()
    def _on_send_button_clicked(self) -> None:
        text = self.prompt.toPlainText().strip()
        if text:
            self.send_requested.emit(ChatRequest(text, self.max_tokens.value()))
