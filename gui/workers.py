"""Work off the UI thread: worker objects moved to QThreads (worker objects on QThreads, cancellation by flag).

``TaskWorker`` runs one function (reading a model's config, loading a tokenizer, previewing a
dataset) and reports its result or its user-facing error. ``TrainingWorker`` runs a training
job (in a child process, see its docstring) and re-emits its typed events as Qt signals. ``Threads`` owns the threads: it
wires ``started -> run``, ``finished -> quit`` and ``deleteLater``, keeps Python references
alive until the thread has ended, and can wait for all of them (so no QThread outlives the
window). Stopping a run is the job's flag, set directly from the UI thread; never a queued slot
on the busy thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import traceback
from collections import deque
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from headtune.core import events as ev
from headtune.core.errors import HeadtuneError


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


def train_command(args: list[str]) -> list[str]:
    """The ``headtune`` command line for this installation (a frozen app is its own interpreter)."""
    if getattr(sys, "frozen", False):
        # The bundle has two programs and only `headtune` takes sub-commands; `headtune-gui` (the
        # window without a console on Windows) would read `train` as a plan file.
        exe = Path(sys.executable)
        cli = exe.with_name("headtune" + exe.suffix)
        return [str(cli if cli.is_file() else exe), *args]
    return [sys.executable, "-m", "headtune.core.cli", *args]


def _lower_priority(pid: int) -> None:
    """Run training a notch below the window, so the window stays responsive while training uses
    every core; with nothing else running, training speed is unchanged (measured in
    benchmarks/window.py). Done before the child starts its worker threads, which inherit it."""
    try:
        import psutil
        child = psutil.Process(pid)
        if sys.platform == "win32":
            child.nice(psutil.BELOW_NORMAL_PRIORITY_CLASS)
        else:
            child.nice(min(19, os.nice(0) + 5))
    except Exception:
        pass  # a priority is a nicety, never a reason to fail a run


class TrainingWorker(QObject):
    """Runs one training job and re-emits each of its events as a signal.

    The worker lives on its own QThread (the window never blocks on it), and the job itself runs
    in a child process, ``headtune train --events-json``, whose event lines the worker reads.
    Measured reasons (benchmarks/window.py): training in a thread of the window's process ran
    15-25% slower than ``headtune train`` on the CPU and its imports stalled the UI for most of
    a second, as both threads fight over the GIL. A child process also keeps the window alive
    if training crashes or is killed for memory, and returns all its memory when it ends.
    Stopping writes ``stop`` to the child's stdin; the child stops after the current step with a
    checkpoint, and also stops if the window goes away (stdin closes).
    """

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
        self.plan = plan
        self.resume = resume
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._signals = {ev.Started: self.run_started, ev.Log: self.logged, ev.Step: self.step_logged,
                         ev.Eval: self.evaluated, ev.Memory: self.memory_sampled,
                         ev.Checkpoint: self.checkpoint_saved, ev.Finished: self.run_finished,
                         ev.Stopped: self.run_stopped, ev.Failed: self.failed}

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Safe from the UI thread: the run stops after the current step and saves."""
        self._stop.set()
        self._send_stop()

    def _send_stop(self) -> None:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None or proc.stdin is None:
                return
            try:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
            except (OSError, ValueError):
                pass  # it is ending anyway

    def _command(self, plan_file: str | None) -> list[str]:
        if self.resume:
            return train_command(["train", "--events-json", "--resume", self.plan.output.dir])
        return train_command(["train", "--events-json", plan_file])

    @Slot()
    def run(self) -> None:
        plan_file = None
        try:
            if not self.resume:
                fd, plan_file = tempfile.mkstemp(prefix="headtune-plan-", suffix=".yaml")
                os.close(fd)
                self.plan.save(plan_file)
            self._supervise(self._command(plan_file))
        except Exception as exc:
            traceback.print_exc()
            self.failed.emit(ev.Failed(message=f"The training process could not run: {user_message(exc)}",
                                       error_type=type(exc).__name__))
        finally:
            if plan_file:
                Path(plan_file).unlink(missing_ok=True)
            self.finished.emit()

    def _supervise(self, cmd: list[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", TOKENIZERS_PARALLELISM="false")
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
        with self._lock:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                          bufsize=1, env=env, creationflags=flags)
        proc = self._proc
        _lower_priority(proc.pid)
        if self._stop.is_set():
            self._send_stop()
        tail: deque[str] = deque(maxlen=30)
        reader = threading.Thread(target=self._read_stderr, args=(proc, tail), daemon=True)
        reader.start()
        ended = False
        for line in proc.stdout:
            try:
                event = ev.event_from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError):
                if line.strip():  # a library printing to stdout: keep it in the log
                    self.logged.emit(ev.Log(message=line.rstrip()))
                continue
            ended = ended or isinstance(event, (ev.Finished, ev.Stopped, ev.Failed))
            self._signals[type(event)].emit(event)
        code = proc.wait()
        reader.join(timeout=5)
        if not ended:
            last = "\n".join(tail)
            self.failed.emit(ev.Failed(
                message=f"The training process ended unexpectedly (exit code {code})."
                        + (f" Its last output:\n{last}" if last else "")
                        + "\nThe last checkpoint, if any, is kept; Resume continues from it.",
                error_type="ProcessError"))

    @staticmethod
    def _read_stderr(proc, tail: deque) -> None:
        for line in proc.stderr:
            if line.strip():
                tail.append(line.rstrip())


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
