"""Help → System check in the window: runs in a child process, shows the doctor's report, copies it."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMessageBox, QPlainTextEdit, QPushButton

from headtune.core.testing import small_report
from headtune.core.tools import doctor
from headtune.gui import doctor_dialog, protocols
from headtune.gui.app import app_icon
from headtune.gui.main_window import MainWindow


@pytest.fixture
def window(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(settings=settings, detect=False)
    w.ask = lambda *a: QMessageBox.StandardButton.Discard
    qtbot.addWidget(w)
    w.show()
    yield w
    w.shutdown()
    assert not w.threads.running(), "a QThread outlived its test"


def python_child(code: str) -> list[str]:
    """A child command that runs ``code`` (in place of a real ``headtune`` sub-command)."""
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_system_check_from_the_help_menu(window, qtbot, monkeypatch, tmp_path):
    commands = []
    real = protocols.doctor_args

    def recording(output_dir):
        commands.append(real(output_dir))
        return commands[-1]

    def not_here(*a, **kw):
        raise AssertionError("the system check ran in the window's process")

    monkeypatch.setattr(protocols, "doctor_args", recording)
    monkeypatch.setattr(doctor, "run_checks", not_here)  # only a child process may run it
    window.plan.set("output.dir", str(tmp_path / "runs" / "first"))
    help_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Help")
    action = next(a for a in help_menu.actions() if a.objectName() == "systemCheckAction")
    action.trigger()
    dialog = window.findChild(doctor_dialog.DoctorDialog, "doctorDialog")
    assert dialog is not None and dialog.isVisible()
    copy = dialog.findChild(QPushButton, "copyDiagnosticsButton")
    assert not copy.isEnabled() and "Checking" in dialog.summary.text()  # the UI thread is free meanwhile
    with qtbot.waitSignal(dialog.checked, timeout=180_000) as blocker:
        pass
    report = blocker.args[0]
    assert commands and commands[0][-4:] == ["doctor", "--json", "--output", str(tmp_path / "runs" / "first")]
    text = dialog.findChild(QPlainTextEdit, "doctorReport").toPlainText()
    assert text == report.to_text()
    assert report.output_dir == str(tmp_path.resolve())  # the plan's output folder (its nearest existing parent)
    assert "[ok] bitsandbytes 4-bit" in text and "[ok] bitsandbytes 8-bit" in text
    if not torch.cuda.is_available():
        assert "No GPU" in dialog.summary.text() and "No GPU" in text
    assert copy.isEnabled()
    QGuiApplication.clipboard().clear()
    qtbot.mouseClick(copy, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == report.to_text()
    assert "copied" in dialog.summary.text()


def test_a_failing_check_is_shown_and_can_be_copied(window, qtbot, monkeypatch):
    failed = json.dumps(
        {"type": "failed", "message": "The check broke: torch could not be imported.", "error_type": "HeadtuneError"}
    )
    monkeypatch.setattr(
        protocols, "doctor_args", lambda output_dir: python_child(f"import sys; print({failed!r}); sys.exit(1)")
    )
    dialog = window.show_system_check()
    with qtbot.waitSignal(dialog.check_failed, timeout=30_000):
        pass
    assert "could not finish" in dialog.summary.text()
    assert dialog.text.toPlainText() == "The check broke: torch could not be imported."
    assert dialog.copy_button.isEnabled() and dialog.again_button.isEnabled()
    dialog.copy_diagnostics()
    assert QGuiApplication.clipboard().text() == "The check broke: torch could not be imported."
    # Check again runs it anew (here with a fake report, to keep this test quick).
    fake = small_report(doctor.Check("GPU", "warning", "No GPU: none here", "Install one."))
    printed = json.dumps(fake.to_dict(), indent=2)
    monkeypatch.setattr(protocols, "doctor_args", lambda output_dir: python_child(f"print({printed!r})"))
    with qtbot.waitSignal(dialog.checked, timeout=30_000):
        qtbot.mouseClick(dialog.again_button, Qt.MouseButton.LeftButton)
    assert dialog.text.toPlainText() == fake.to_text() and "Install one." in fake.to_text()


def test_a_check_that_crashes_natively_leaves_the_window_up(window, qtbot, monkeypatch):
    # What a broken bitsandbytes kernel does: the process dies on a signal, with no report.
    monkeypatch.setattr(
        protocols,
        "doctor_args",
        lambda output_dir: python_child(
            "import os, signal, sys; print('loading kernels', file=sys.stderr, flush=True); "
            "os.kill(os.getpid(), signal.SIGSEGV)"
        ),
    )
    dialog = window.show_system_check()
    with qtbot.waitSignal(dialog.check_failed, timeout=30_000) as blocker:
        pass
    message = blocker.args[0]
    assert "The system check process ended unexpectedly (SIGSEGV" in message and "native code" in message
    assert "loading kernels" in message  # the last words of the child, for the bug report
    assert "could not finish" in dialog.summary.text() and dialog.again_button.isEnabled()
    assert window.isVisible()
    qtbot.waitUntil(lambda: not window.threads.running(), timeout=10_000)


def test_app_icon_has_every_size(qapp):
    icon = app_icon()
    assert not icon.isNull()
    sizes = sorted(s.width() for s in icon.availableSizes())
    assert sizes == [16, 24, 32, 48, 64, 128, 256, 512]
    assert icon.pixmap(48, 48).width() == 48
