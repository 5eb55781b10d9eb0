"""One supervisor for every ``headtune`` child process the window starts.

Heavy or crash-prone work (training, export, chat, token health, the system check) runs as a
child ``headtune`` sub-command that speaks JSON on stdout. ``Supervisor`` is the worker object
(moved to a QThread by ``Threads``) that starts one child, reads its stdout, lets a
``ChildProtocol`` turn each JSON object into a typed event, and re-emits it as ``progressed``,
``completed`` (a result) or ``failed`` (an ``events.Failed``). A child that dies without saying
why (a native crash, an out-of-memory kill) still ends in one ``failed`` event with its exit
status and the tail of its stderr, so the window can say what happened and stay up.

Stopping is the child's own business: a line on its stdin (``stop_line``) or stdin closing;
``kill`` is the last resort (an export has no point at which to stop early).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections import deque
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from headtune.core import events as ev

PROGRESS, RESULT, FAILURE = "progress", "result", "failure"


def headtune_command(args: list[str]) -> list[str]:
    """The ``headtune`` command line for this installation (a frozen app is its own interpreter)."""
    if getattr(sys, "frozen", False):
        # The bundle has two programs and only `headtune` takes sub-commands; `headtune-gui` (the
        # window without a console on Windows) would read `train` as a plan file.
        exe = Path(sys.executable)
        cli = exe.with_name("headtune" + exe.suffix)
        return [str(cli if cli.is_file() else exe), *args]
    return [sys.executable, "-m", "headtune.core.cli", *args]


def exit_description(code: int) -> str:
    """``exit code 1``, or the signal that killed the child, in words a person can act on."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {
            "SIGKILL": "killed, often by the system when memory runs out",
            "SIGSEGV": "a crash in native code (a GPU or quantisation library)",
            "SIGABRT": "aborted by native code",
            "SIGBUS": "a crash in native code",
        }.get(name, "")
        return f"{name}{': ' + why if why else ''}"
    return f"exit code {code}"


def json_objects(text: str):
    """Every JSON object in ``text``, one per line or pretty-printed over several, skipping any
    other output a library printed around them."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i >= 0:
        try:
            obj, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            yield obj
        i = text.find("{", end)


class ChildProtocol:
    """How one sub-command speaks. Subclasses turn its JSON objects into typed events."""

    what = "child"  # in messages: "The {what} process ended unexpectedly"
    stop_line: str | None = None  # written to stdin to stop; None: stdin is closed instead
    document = False  # True: the whole stdout is one (pretty-printed) JSON document
    keep_stdin = False  # True: stdin stays open for requests (send) until stop
    lower_priority = False  # True: the child runs a notch below the window

    def decode(self, data: dict[str, Any]) -> tuple[str, Any] | None:
        """(PROGRESS | RESULT | FAILURE, event) for one JSON object, or None to ignore it."""
        if data.get("type") == "failed":
            return FAILURE, ev.event_from_dict(data)
        return None

    def text_line(self, line: str):
        """An event for a stdout line that is not JSON (a library printing), or None."""
        return None

    def unexpected_end(self, code: int, tail: list[str], cancelled: bool) -> ev.Failed:
        last = "\n".join(tail)
        return ev.Failed(
            message=f"The {self.what} process ended unexpectedly ({exit_description(code)})."
            + (f" Its last output:\n{last}" if last else ""),
            error_type="ProcessError",
        )

    def ended(self, code: int, succeeded: bool) -> None:
        """Runs on the worker thread once the child has exited (clean-up of what it left)."""


class Supervisor(QObject):
    """Runs one child command; ``progressed``/``completed``/``failed`` carry typed events, then
    ``finished`` (always last: the thread may quit)."""

    progressed = Signal(object)
    completed = Signal(object)
    failed = Signal(object)  # events.Failed
    finished = Signal()

    def __init__(self, command: list[str], protocol: ChildProtocol, temp_files: tuple[str, ...] = ()):
        super().__init__()
        self.command = list(command)
        self.protocol = protocol
        self.temp_files = temp_files
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._killed = threading.Event()
        self._got_result = False
        self._pending: list[str] = []  # requests sent before the child was started

    # -- from the UI thread ----------------------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask the child to stop (its stop line, or stdin closing); safe from any thread."""
        self._stop.set()
        self._signal_stop()

    def send(self, request: dict) -> bool:
        """Write one JSON request line to the child's stdin; False when it is not running."""
        return self._write(json.dumps(request) + "\n")

    def end(self, grace_s: float = 3.0) -> None:
        """Ask the child to stop, and kill it if it is still there after ``grace_s`` (for children
        with nothing to save, such as chat, when the window closes); returns at once."""
        self.request_stop()

        def wait_then_kill() -> None:
            with self._lock:
                proc = self._proc
            if proc is None:
                return
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()

        threading.Thread(target=wait_then_kill, daemon=True).start()

    def kill(self) -> None:
        """The last resort: end the child now."""
        self._killed.set()
        self._stop.set()
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()

    def _write(self, text: str) -> bool:
        with self._lock:
            proc = self._proc
            if proc is None and not self._killed.is_set():
                self._pending.append(text)  # written once the child has started
                return True
            if proc is None or proc.poll() is not None or proc.stdin is None or proc.stdin.closed:
                return False
            try:
                proc.stdin.write(text)
                proc.stdin.flush()
                return True
            except (OSError, ValueError):
                return False  # it is ending anyway

    def _signal_stop(self) -> None:
        if self.protocol.stop_line is not None:
            self._write(self.protocol.stop_line + "\n")
            return
        with self._lock:
            if self._proc is not None and self._proc.stdin is not None:
                try:
                    self._proc.stdin.close()
                except OSError:
                    pass

    # -- on the worker thread ----------------------------------------------------------------
    @Slot()
    def run(self) -> None:
        try:
            self._supervise()
        except Exception as exc:
            traceback.print_exc()
            self.failed.emit(
                ev.Failed(
                    message=f"The {self.protocol.what} process could not run: {exc}", error_type=type(exc).__name__
                )
            )
        finally:
            for path in self.temp_files:
                Path(path).unlink(missing_ok=True)
            self.finished.emit()

    def _start(self) -> subprocess.Popen | None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", TOKENIZERS_PARALLELISM="false")
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
        with self._lock:
            if self._killed.is_set():
                return None
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                env=env,
                creationflags=flags,
            )
            self.pid = self._proc.pid
            try:
                for text in self._pending:
                    self._proc.stdin.write(text)
                self._proc.stdin.flush()
            except OSError:
                pass  # it ended at once; its exit status says why
            self._pending.clear()
        if self.protocol.lower_priority:
            lower_priority(self._proc.pid)
        return self._proc

    def _supervise(self) -> None:
        proc = self._start()
        if proc is None:
            self.failed.emit(self.protocol.unexpected_end(-signal.SIGKILL, [], cancelled=True))
            return
        if self._stop.is_set():
            self._signal_stop()
        elif not self.protocol.keep_stdin and self.protocol.stop_line is None:
            self._signal_stop()  # it reads nothing: closing stdin now costs nothing
        tail: deque[str] = deque(maxlen=30)
        reader = threading.Thread(target=_read_stderr, args=(proc, tail), daemon=True)
        reader.start()
        ended = False
        if self.protocol.document:
            ended = any(self._dispatch(obj) for obj in json_objects(proc.stdout.read()))
        else:
            for line in proc.stdout:
                ended = self._line(line) or ended
        code = proc.wait()
        reader.join(timeout=5)
        self.protocol.ended(code, self._got_result)
        stopped_quietly = self._stop.is_set() and code == 0 and not self._killed.is_set()
        if not ended and not stopped_quietly:
            self.failed.emit(self.protocol.unexpected_end(code, list(tail), self._killed.is_set()))

    def _line(self, line: str) -> bool:
        try:
            data = json.loads(line)
        except ValueError:
            event = self.protocol.text_line(line) if line.strip() else None
            if event is not None:
                self.progressed.emit(event)
            return False
        return self._dispatch(data) if isinstance(data, dict) else False

    def _dispatch(self, data: dict) -> bool:
        """Emit one decoded object; True when it ends the child's work (a result or a failure)."""
        try:
            decoded = self.protocol.decode(data)
        except (KeyError, TypeError, ValueError):
            decoded = None  # not one of ours: a library's JSON
        if decoded is None:
            return False
        kind, event = decoded
        self._got_result = self._got_result or kind == RESULT
        {PROGRESS: self.progressed, RESULT: self.completed, FAILURE: self.failed}[kind].emit(event)
        return kind in (RESULT, FAILURE)


def _read_stderr(proc: subprocess.Popen, tail: deque) -> None:
    for line in proc.stderr:
        if line.strip():
            tail.append(line.rstrip())


def lower_priority(pid: int) -> None:
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
