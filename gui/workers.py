"""Work off the UI thread: worker objects moved to QThreads.

``TaskWorker`` runs one function (reading a model's config, loading a tokenizer, previewing a
dataset) and reports its result or its user-facing error; child processes (training, export,
chat, token health, the system check) are run by ``supervisor.Supervisor``, also a worker
object on its own thread. ``Threads`` owns the threads: it
wires ``started -> run``, ``finished -> quit`` and ``deleteLater``, keeps Python references
alive until the thread has ended, and can wait for all of them (so no QThread outlives the
window). Cancelling is a flag set directly from the UI thread; never a queued slot on the busy
thread.
"""

from __future__ import annotations

import threading
import traceback

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from headtune.core.errors import HeadtuneError

from .supervisor import headtune_command

_IMPORT_LOCK = threading.Lock()


def transformers_ready() -> None:
    """Resolve transformers' lazily imported names once, under a lock. Its lazy module is not
    thread-safe: two worker threads asking for ``AutoConfig`` at once can see a half-initialised
    module and fail with "cannot import name 'AutoConfig' from 'transformers'"."""
    with _IMPORT_LOCK:
        import transformers

        for name in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"):
            getattr(transformers, name)


def user_message(exc: BaseException) -> str:
    """The text a person sees for ``exc``: our own message, or a short line for a bug."""
    if isinstance(exc, HeadtuneError):
        return str(exc)
    return f"Unexpected error: {exc.__class__.__name__}: {exc}"


class TaskWorker(QObject):
    """Runs ``fn()`` once; ``succeeded(tag, result)`` or ``failed(tag, message)``, then ``finished``."""

    succeeded = Signal(object, object)
    failed = Signal(object, str)
    finished = Signal()

    def __init__(self, fn, tag=None):
        super().__init__()
        self._fn = fn
        self.tag = tag

    @Slot()
    def run(self) -> None:
        try:
            result = self._fn()
        except Exception as exc:  # every failure becomes a message; the window stays usable
            if not isinstance(exc, HeadtuneError):
                traceback.print_exc()
            self.failed.emit(self.tag, user_message(exc))
        else:
            self.succeeded.emit(self.tag, result)
        finally:
            self.finished.emit()


# The command line of a child ``headtune`` (kept under this name for the packaging checks).
train_command = headtune_command


class Threads(QObject):
    """Starts workers on their own QThreads and keeps them referenced until they end."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._live: dict[QThread, QObject] = {}

    def start(self, worker: QObject) -> QThread:
        thread = QThread(self)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        # Direct: quit() is thread-safe, and a queued call would never run while the UI thread
        # waits for this thread in wait_all().
        worker.finished.connect(thread.quit, Qt.ConnectionType.DirectConnection)
        thread.finished.connect(self._on_thread_finished)
        self._live[thread] = worker
        thread.start()
        return thread

    @Slot()
    def _on_thread_finished(self) -> None:
        thread = self.sender()
        worker = self._live.pop(thread, None)
        if worker is not None:
            worker.deleteLater()
        if thread is not None:
            thread.deleteLater()

    def running(self) -> list[QThread]:
        return [t for t in self._live if t.isRunning()]

    def wait_all(self, timeout_ms: int | None = 60_000) -> bool:
        """Block until every thread has ended (the window's last act), at most ``timeout_ms`` each
        (None: no limit); True when all did."""
        ok = True
        for thread in list(self._live):
            ok = (thread.wait() if timeout_ms is None else thread.wait(timeout_ms)) and ok
        return ok


class TaskRunner(QObject):
    """Runs one-off functions on ``TaskWorker`` threads, by kind; only the latest result of each
    kind is delivered (a stale one, from before the user typed something else, is dropped)."""

    def __init__(self, threads: Threads, parent: QObject | None = None):
        super().__init__(parent)
        self._threads = threads
        self._tag = 0
        self._latest: dict[str, tuple] = {}
        self._handlers: dict[tuple, tuple] = {}
        self.closed = False

    def run(self, kind: str, fn, on_done, on_error=None, needs_transformers: bool = True) -> None:
        if self.closed:
            return  # no new threads once the window has closed
        self._tag += 1
        tag = (kind, self._tag)
        self._latest[kind] = tag
        if needs_transformers:
            fn = _after_transformers_ready(fn)
        worker = TaskWorker(fn, tag)
        worker.succeeded.connect(self._on_worker_succeeded)
        worker.failed.connect(self._on_worker_failed)
        self._handlers[tag] = (on_done, on_error)
        self._threads.start(worker)

    def forget(self, kind: str) -> None:
        """Drop the result of the ``kind`` task still running, if any."""
        self._latest.pop(kind, None)

    @Slot(object, object)
    def _on_worker_succeeded(self, tag, result) -> None:
        on_done, _ = self._handlers.pop(tag, (None, None))
        if on_done is not None and self._latest.get(tag[0]) == tag:
            on_done(result)

    @Slot(object, str)
    def _on_worker_failed(self, tag, message: str) -> None:
        _, on_error = self._handlers.pop(tag, (None, None))
        if on_error is not None and self._latest.get(tag[0]) == tag:
            on_error(message)


def _after_transformers_ready(fn):
    def run():
        transformers_ready()
        return fn()

    return run
