"""The child-process supervisor: typed progress, results and failures, stop, and children that die."""

from __future__ import annotations

import json
import sys

import pytest
from PySide6.QtCore import QObject

from headtune.core import events as ev
from headtune.core.testing import small_report
from headtune.gui.protocols import DoctorProtocol, ExportDone, ExportProgressed, ExportProtocol, TrainingProtocol
from headtune.gui.supervisor import ChildProtocol, Supervisor, json_objects
from headtune.gui.workers import Threads


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def emit_lines(*objects) -> str:
    """Python source that prints each object as one JSON line."""
    return "".join(f"print({json.dumps(o)!r}, flush=True)\n" for o in objects)


class Recorder(QObject):
    def __init__(self, supervisor: Supervisor):
        super().__init__()
        self.seen: list[tuple[str, object]] = []
        for name in ("progressed", "completed", "failed"):
            getattr(supervisor, name).connect(lambda e, name=name: self.seen.append((name, e)))
        supervisor.finished.connect(lambda: self.seen.append(("finished", None)))


@pytest.fixture
def run_child(qtbot):
    threads = Threads()

    def run(command, protocol, setup=None) -> list[tuple[str, object]]:
        supervisor = Supervisor(command, protocol)
        recorder = Recorder(supervisor)
        if setup is not None:
            setup(supervisor)
        with qtbot.waitSignal(supervisor.finished, timeout=60_000):
            threads.start(supervisor)
        qtbot.waitUntil(lambda: not threads.running(), timeout=10_000)
        return recorder.seen

    yield run
    assert threads.wait_all()


def test_training_events_arrive_typed_in_order(run_child):
    started = ev.Started(
        total_steps=2, trainable_params=1, total_params=2, train_examples=3, val_examples=0, device="cpu"
    ).to_dict()
    step = ev.Step(
        step=1, total_steps=2, loss=1.5, learning_rate=1e-3, grad_norm=None, tokens_per_s=10.0, epoch=0.5
    ).to_dict()
    finished = ev.Finished(step=2, adapter_path="/x/adapter").to_dict()
    code = emit_lines(started, step) + "print('a library talking', flush=True)\n" + emit_lines(finished)
    seen = run_child(child(code), TrainingProtocol())
    kinds = [(k, type(e).__name__) for k, e in seen]
    assert kinds == [
        ("progressed", "Started"),
        ("progressed", "Step"),
        ("progressed", "Log"),
        ("completed", "Finished"),
        ("finished", "NoneType"),
    ]
    assert seen[1][1].loss == 1.5 and seen[2][1].message == "a library talking"
    assert seen[3][1].adapter_path == "/x/adapter"


def test_a_failure_line_is_the_failure_not_an_unexpected_end(run_child):
    failed = ev.Failed(message="data.path: no such file", error_type="DataError").to_dict()
    seen = run_child(child(emit_lines(failed) + "import sys; sys.exit(2)"), ExportProtocol("/tmp/nowhere-export"))
    assert [k for k, _ in seen] == ["failed", "finished"]
    assert seen[0][1] == ev.Failed(message="data.path: no such file", error_type="DataError", time=seen[0][1].time)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSEGV"])
def test_a_child_that_kills_itself_ends_in_one_clear_failure(run_child, how):
    code = (
        emit_lines({"progress": 0.25, "message": "merging"})
        + f"import os, signal, sys; print('last words', file=sys.stderr, flush=True); "
        f"os.kill(os.getpid(), signal.{how})"
    )
    seen = run_child(child(code), ExportProtocol("/tmp/nowhere-export"))
    assert [k for k, _ in seen] == ["progressed", "failed", "finished"]
    assert seen[0][1] == ExportProgressed(0.25, "merging")
    message = seen[1][1].message
    assert message.startswith(f"The export process ended unexpectedly ({how}") and "nothing was written" in message
    assert "last words" in message


def test_a_silent_exit_without_a_result_is_a_failure(run_child):
    seen = run_child(child("import sys; sys.exit(3)"), TrainingProtocol())
    assert [k for k, _ in seen] == ["failed", "finished"]
    assert "ended unexpectedly (exit code 3)" in seen[0][1].message and "Resume" in seen[0][1].message


def test_stop_is_a_line_on_stdin(run_child):
    # Asked before the child has even started: the line is written as soon as it has.
    stopped = ev.Stopped(step=1, adapter_path="/x").to_dict()
    code = "import sys\nfor line in sys.stdin:\n    if line.strip() == 'stop':\n        break\n" + emit_lines(stopped)
    seen = run_child(child(code), TrainingProtocol(), setup=lambda s: s.request_stop())
    assert [k for k, _ in seen] == ["completed", "finished"] and isinstance(seen[0][1], ev.Stopped)


def test_closing_stdin_ends_a_serving_child_quietly(run_child):
    class Serving(ChildProtocol):
        keep_stdin = True

    code = "import sys\nfor line in sys.stdin:\n    pass\n"
    seen = run_child(child(code), Serving(), setup=lambda s: s.request_stop())
    assert seen == [("finished", None)]  # asked to end, it ended: no failure


def test_kill_is_the_last_resort_and_says_cancelled(run_child, tmp_path):
    out = tmp_path / "export"
    partial = tmp_path / ".export.partial-123"
    partial.mkdir()
    code = emit_lines({"progress": 0.1, "message": "loading"}) + "import time; time.sleep(60)"

    def kill_after_progress(supervisor):
        supervisor.progressed.connect(lambda _e: supervisor.kill())

    seen = run_child(child(code), ExportProtocol(str(out)), setup=kill_after_progress)
    assert [k for k, _ in seen] == ["progressed", "failed", "finished"]
    assert seen[1][1].message == "Export cancelled; nothing was written."
    assert not partial.exists()  # what the killed export left is removed


def test_export_result_and_a_pretty_printed_report(run_child):
    done = {"path": "/out", "format": "merged", "seconds": 1.5, "peak_rss_bytes": 10, "files": ["a"], "notes": []}
    seen = run_child(child(emit_lines(done)), ExportProtocol("/tmp/nowhere-export"))
    assert seen[0] == ("completed", ExportDone("/out", "merged", 1.5, 10, ("a",), ()))
    from headtune.core.tools import doctor

    report = small_report(doctor.Check("GPU", "warning", "none"))
    text = "warming up\n" + json.dumps(report.to_dict(), indent=2)
    seen = run_child(child(f"import sys; print({text!r}); sys.exit(1)"), DoctorProtocol())
    assert [k for k, _ in seen] == ["completed", "finished"]  # exit code 1 only says a check failed
    assert seen[0][1].to_text() == report.to_text()


def test_json_objects_skips_other_output():
    text = 'noise {"a": 1}\n{\n  "b": [1, 2]\n}\n{broken\n{"c": {"d": 2}}'
    assert list(json_objects(text)) == [{"a": 1}, {"b": [1, 2]}, {"c": {"d": 2}}]
