"""The Chat tab: one prompt, answered by the base model and by the fine-tuned one, side by side.

The run's model loads once (on the first prompt) in a worker thread and is kept for the next
prompts; the two answers are generated token by token, alternately, so both stream in at once.
The adapter is switched off for the base answer (``headtune.core.chat.ChatPair``), so trying a
run costs one model's memory. Stop ends both answers after the current token.
"""

from __future__ import annotations

import gc
import sys
import threading
import traceback

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import (QGridLayout, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QSpinBox,
                               QVBoxLayout, QWidget)

from .workers import Threads, transformers_ready, user_message


class ChatWorker(QObject):
    """Loads the run's ChatPair if needed, then streams both answers to one prompt."""

    loaded = Signal(object)        # the ChatPair (kept by the panel for the next prompt)
    piece = Signal(bool, str)      # (tuned, text)
    failed = Signal(str)
    finished = Signal()

    def __init__(self, run_dir: str, pair, messages: list[dict], max_new_tokens: int):
        super().__init__()
        self.run_dir = run_dir
        self.pair = pair
        self.messages = messages
        self.max_new_tokens = max_new_tokens
        self._stop = threading.Event()

    def request_stop(self) -> None:
        self._stop.set()

    @Slot()
    def run(self) -> None:
        try:
            if self.pair is None:
                transformers_ready()
                from headtune.core.tools.chat import ChatPair
                self.pair = ChatPair(self.run_dir)
                self.loaded.emit(self.pair)
            streams = {tuned: self.pair.stream(self.messages, tuned=tuned, max_new_tokens=self.max_new_tokens)
                       for tuned in (False, True)}
            while streams and not self._stop.is_set():
                for tuned in list(streams):
                    try:
                        self.piece.emit(tuned, next(streams[tuned]))
                    except StopIteration:
                        del streams[tuned]
                    if self._stop.is_set():
                        break
        except Exception as exc:
            traceback.print_exc()
            self.failed.emit(user_message(exc))
        finally:
            self.finished.emit()


class ChatPanel(QWidget):
    """Prompt box, Send/Stop, and the two answers."""

    def __init__(self, threads: Threads, parent: QWidget | None = None):
        super().__init__(parent)
        self._threads = threads
        self.run_dir: str | None = None
        self._pair = None
        self._pair_for: str | None = None
        self._worker: ChatWorker | None = None
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
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("chatStopButton")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.max_tokens = QSpinBox()
        self.max_tokens.setObjectName("chatMaxTokens")
        self.max_tokens.setRange(1, 4096)
        self.max_tokens.setValue(128)
        self.max_tokens.setPrefix("max tokens ")
        self.base_output = self._output("chatBaseOutput", "Base model answer")
        self.tuned_output = self._output("chatTunedOutput", "Fine-tuned model answer")
        self.status = QLabel("Greedy decoding: the same prompt gives the same answers.")
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

    @property
    def running(self) -> bool:
        return self._worker is not None

    def set_run(self, run_dir: str | None) -> None:
        """The run to chat with (a folder with a saved adapter), or None."""
        if run_dir == self.run_dir:
            return
        self.run_dir = run_dir
        if self._pair_for != run_dir:
            self.release_model()
        self.run_label.setText(f"Run: {run_dir}" if run_dir else
                               "No run with a saved adapter: train one, or pick one in the Runs tab.")
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.send_button.setEnabled(bool(self.run_dir) and not self.running)
        self.stop_button.setEnabled(self.running)

    @Slot()
    def send(self) -> None:
        text = self.prompt.toPlainText().strip()
        if not text or not self.run_dir or self.running:
            return
        if self._pair_for != self.run_dir:
            self.release_model()  # never two models at once
        pair = self._pair
        worker = ChatWorker(self.run_dir, pair, [{"role": "user", "content": text}], self.max_tokens.value())
        worker.loaded.connect(self._on_worker_loaded)
        worker.piece.connect(self._on_worker_piece)
        worker.failed.connect(self._on_worker_failed)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        self.base_output.clear()
        self.tuned_output.clear()
        self.status.setText("Loading the model and the adapter…" if pair is None else "Generating…")
        self._update_buttons()
        self._threads.start(worker)

    @Slot()
    def stop(self) -> None:
        if self._worker is not None:
            self._worker.request_stop()

    @Slot(object)
    def _on_worker_loaded(self, pair) -> None:
        self._pair, self._pair_for = pair, self._worker.run_dir
        self.status.setText("Generating…")

    @Slot(bool, str)
    def _on_worker_piece(self, tuned: bool, text: str) -> None:
        box = self.tuned_output if tuned else self.base_output
        box.moveCursor(box.textCursor().MoveOperation.End)
        box.insertPlainText(text)

    @Slot(str)
    def _on_worker_failed(self, message: str) -> None:
        self.status.setText(f"Failed: {message}")

    @Slot()
    def _on_worker_finished(self) -> None:
        if not self.status.text().startswith("Failed"):
            self.status.setText("Done. Greedy decoding: the same prompt gives the same answers.")
        self._worker = None
        self._update_buttons()

    def release_model(self) -> None:
        """Drop the loaded model (a training run is starting, or another run is chosen)."""
        if self._pair is None or self.running:
            return
        self._pair, self._pair_for = None, None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
