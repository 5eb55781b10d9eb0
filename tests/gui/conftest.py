"""The window fixture shared by the GUI tests."""

from __future__ import annotations

import gc

import pytest
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox

from headtune.core.plan import plan_from_dict
from headtune.gui.main_window import MainWindow

NO = QMessageBox.StandardButton


@pytest.fixture(autouse=True)
def _collect_windows_on_the_ui_thread():
    """After each test (and qtbot's own teardown) collect the closed windows' reference cycles here,
    on the UI thread: left to the cycle collector they may be freed by the next test's worker
    thread, destroying Qt widgets off the UI thread, which deadlocks (the window process collects
    on a UI-thread timer for the same reason)."""
    yield
    gc.collect()


@pytest.fixture
def make_window(qtbot, tmp_path):
    """A window on a plan; at teardown no dialog blocks and no thread is left running."""
    windows = []

    def make(plan_data: dict | None = None, **kw) -> MainWindow:
        settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
        plan = plan_from_dict(plan_data, check=False) if plan_data is not None else None
        w = MainWindow(plan, settings=settings, **kw)
        w.ask = lambda *a: NO.Discard  # teardown closes without questions
        qtbot.addWidget(w)
        w.show()
        qtbot.waitUntil(lambda: w.plots_built, timeout=10_000)  # built just after the first paint
        windows.append(w)
        return w

    yield make
    for w in windows:
        w.shutdown()
        assert not w.threads.running(), "a QThread outlived its test"
