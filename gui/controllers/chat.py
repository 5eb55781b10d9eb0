"""Chat with a run, in a child process that keeps the model loaded between prompts.

The child is ``headtune chat RUN --json-lines``: one model (the run's adapter on its base, the
adapter switched off for the base answer), so trying a run costs one model's memory, and that
memory (GPU memory too) goes back to the system as soon as the child ends: when another run is
chosen, when training starts, or when the window closes. A child that crashes ends the answer
with a message; the next prompt starts a new one.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Slot

from headtune.core import events as ev

from .. import protocols
from ..chat_panel import IDLE_TEXT, ChatPanel, ChatRequest
from ..protocols import ChatAnswered, ChatLoaded, ChatPiece, ChatProtocol
from ..supervisor import Supervisor


class ChatController(QObject):
    """Owns the chat child; the Chat tab is its view."""

    def __init__(self, panel: ChatPanel, threads, parent: QObject | None = None):
        super().__init__(parent)
        self._panel = panel
        self._threads = threads
        self._child: Supervisor | None = None
        self._child_run: str | None = None
        self.run_dir: str | None = None
        self.model_loaded = False
        self.running = False  # an answer is being written
        self._closed = False
        panel.send_requested.connect(self._on_panel_send_requested)
        panel.stop_requested.connect(self._on_panel_stop_requested)

    @property
    def child_alive(self) -> bool:
        return self._child is not None

    @property
    def child_pid(self) -> int | None:
        """The chat child's process id, once it has started."""
        return self._child.pid if self._child is not None else None

    def set_run(self, run_dir: str | None) -> None:
        """The run to chat with (a folder with a saved adapter), or None."""
        if run_dir == self.run_dir:
            return
        self.run_dir = run_dir
        if self._child_run != run_dir:
            self.release_model()
        self._panel.show_run(run_dir)

    def release_model(self) -> None:
        """End the chat child, which frees its model (a run is starting, or another run is chosen)."""
        if self._child is None or self.running:
            return
        self._child.request_stop()  # stdin closes: the child ends
        self.model_loaded = False
        self._child_run = None

    def shutdown(self) -> None:
        """The window is closing: the answer ends, and so does the child (killed if it lingers)."""
        self._closed = True
        if self._child is not None:
            self._child.send({"stop": True})
            self._child.end(grace_s=3.0)

    @Slot(object)
    def _on_panel_send_requested(self, request: ChatRequest) -> None:
        if not self.run_dir or self.running or self._closed:
            return
        if self._child is not None and self._child_run != self.run_dir:
            self.release_model()  # never two models at once
        if self._child is None or self._child.stop_requested:
            self._start_child()
        self._child.send(
            {"messages": [{"role": "user", "content": request.prompt}], "max_new_tokens": request.max_new_tokens}
        )
        self.running = True
        self._panel.clear_answers()
        self._panel.show_busy(True, "Generating…" if self.model_loaded else "Loading the model and the adapter…")

    def _start_child(self) -> None:
        child = Supervisor(protocols.chat_args(self.run_dir), ChatProtocol(self.run_dir))
        child.progressed.connect(self._on_child_progressed)
        child.failed.connect(self._on_child_failed)
        child.finished.connect(self._on_child_finished)
        self._child, self._child_run = child, self.run_dir
        self._threads.start(child)

    @Slot()
    def _on_panel_stop_requested(self) -> None:
        if self._child is not None and self.running:
            self._child.send({"stop": True})

    @Slot(object)
    def _on_child_progressed(self, e) -> None:
        if self.sender() is not self._child:
            return  # a child being released
        if isinstance(e, ChatLoaded):
            self.model_loaded = True
            self._panel.show_busy(True, "Generating…")
        elif isinstance(e, ChatPiece):
            self._panel.append(e.tuned, e.text)
        elif isinstance(e, ChatAnswered):
            self.running = False
            self._panel.show_busy(False, f"Done. {IDLE_TEXT}")

    @Slot(object)
    def _on_child_failed(self, e: ev.Failed) -> None:
        if self.sender() is not self._child:
            return
        self.running = False
        self._panel.show_busy(False, f"Failed: {e.message}")

    @Slot()
    def _on_child_finished(self) -> None:
        if self.sender() is not self._child:
            return
        self._child, self._child_run, self.model_loaded = None, None, False
        if self.running:  # it ended mid-answer without a word (it always reports otherwise)
            self.running = False
            self._panel.show_busy(False, "Failed: the chat process ended.")
