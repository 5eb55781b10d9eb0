"""The window's menu bar: File (plans), Run (start, stop), Help (system check, about).

Each action calls the window's controllers or public methods when triggered, so the menus hold no
behaviour of their own.
"""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMessageBox


def build_menus(window) -> None:
    """Add the menus to ``window`` (a ``MainWindow``); keeps ``start_action``, ``stop_action`` and
    ``system_check_action`` on it for the controllers and tests."""
    file_menu = window.menuBar().addMenu("&File")
    for text, shortcut, name in (
        ("&New plan", QKeySequence.StandardKey.New, "new_plan"),
        ("&Open plan…", QKeySequence.StandardKey.Open, "open_plan"),
        ("&Save plan", QKeySequence.StandardKey.Save, "save_plan"),
        ("Save plan &as…", QKeySequence.StandardKey.SaveAs, "save_plan_as"),
    ):
        # The plan file's controller, looked up when triggered (not the checked flag as a path).
        _action(window, file_menu, text, lambda _checked=False, name=name: getattr(window.file, name)(), shortcut)
    file_menu.addSeparator()
    _action(window, file_menu, "&Quit", window.close, QKeySequence.StandardKey.Quit)
    run_menu = window.menuBar().addMenu("&Run")
    window.start_action = _action(
        window, run_menu, "&Start", lambda _checked=False: window.runs.start_run(), "Ctrl+Return"
    )
    window.stop_action = _action(window, run_menu, "S&top", lambda _checked=False: window.stop_run())
    help_menu = window.menuBar().addMenu("&Help")
    window.system_check_action = _action(
        window, help_menu, "&System check…", lambda _checked=False: window.show_system_check()
    )
    window.system_check_action.setObjectName("systemCheckAction")
    _action(window, help_menu, "&About Headtune", lambda _checked=False: _about(window))


def _action(window, menu, text: str, slot, shortcut=None) -> QAction:
    action = QAction(text, window)
    if shortcut is not None:
        action.setShortcut(shortcut)
    action.triggered.connect(slot)
    menu.addAction(action)
    return action


def _about(window) -> None:
    from headtune.core import __version__

    QMessageBox.about(
        window,
        "About Headtune",
        f"<b>Headtune {__version__}</b><p>Fine-tune open LLMs with LoRA/QLoRA, including the "
        "token embeddings and the LM head, on your own computer.</p><p>Apache-2.0.</p>",
    )
