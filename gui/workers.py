"""Work off the UI thread: worker objects moved to QThreads (the brief's pattern).

``TaskWorker`` runs one function (reading a model's config, loading a tokenizer, previewing a
dataset) and reports its result or its user-facing error. ``TrainingWorker`` runs a
``TrainingJob`` and re-emits its typed events as Qt signals. ``Threads`` owns the threads: it
wires ``started -> run``, ``finished -> quit`` and ``deleteLater``, keeps Python references
alive until the thread has ended, and can wait for all of them (so no QThread outlives the
window). Stopping a run is the job's flag, set directly from the UI thread; never a queued slot
on the busy thread.
"""

from __future__ import annotations

import traceback

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from headtune.core import events as ev
from headtune.core.errors import HeadtuneError


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


class TrainingWorker(QObject):
    """Runs one training job in its thread and re-emits each event as a signal."""

    run_started = Signal(object)       # ev.Started
    logged = Signal(object)            # ev.Log
    step_logged = Signal(object)       # ev.Step
    evaluated = Signal(object)         # ev.Eval
    memory_sampled = Signal(object)    # ev.Memory
    checkpoint_saved = Signal(object)  # ev.Checkpoint
    run_finished = Signal(object)      # ev.Finished
    run_stopped = Signal(object)       # ev.Stopped
    failed = Signal(object)            # ev.Failed
    finished = Signal()                # always last: the thread may quit

    def __init__(self, plan, resume: bool = False):
        super().__init__()
        from headtune.core.job import TrainingJob  # torch is imported only when the job runs
        self.job = TrainingJob(plan, sinks=[self._on_job_event], resume=resume)
        self._signals = {ev.Started: self.run_started, ev.Log: self.logged, ev.Step: self.step_logged,
                         ev.Eval: self.evaluated, ev.Memory: self.memory_sampled,
                         ev.Checkpoint: self.checkpoint_saved, ev.Finished: self.run_finished,
                         ev.Stopped: self.run_stopped, ev.Failed: self.failed}
        self._failed_sent = False

    def request_stop(self) -> None:
        """Safe from the UI thread: the job checks the flag between steps, saves and stops."""
        self.job.request_stop()

    def _on_job_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.Failed):
            self._failed_sent = True
        self._signals[type(event)].emit(event)

    @Slot()
    def run(self) -> None:
        try:
            from headtune.core.cli import quiet_libraries
            quiet_libraries()  # here, not at startup: it imports transformers
            self.job.run()
        except Exception as exc:
            # The job emits Failed for everything it catches; this covers what happens around it.
            if not self._failed_sent:
                traceback.print_exc()
                self.failed.emit(ev.Failed(message=user_message(exc), error_type=type(exc).__name__))
        finally:
            self.finished.emit()


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

    def wait_all(self, timeout_ms: int = 60_000) -> bool:
        """Block until every thread has ended (the window's last act); True when all did."""
        ok = True
        for thread in list(self._live):
            ok = thread.wait(timeout_ms) and ok
        return ok
