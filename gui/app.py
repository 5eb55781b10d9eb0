"""Entry point of the window (``headtune``, ``headtune gui [PLAN]`` and ``headtune-gui``).

Only Qt and the light parts of core are imported before the window is shown; torch and
transformers load later, off the UI thread, when something needs them. Uncaught exceptions
(on any thread) reach the user as a dialog instead of killing the window, and faulthandler
prints a native crash's stack to stderr.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import threading
import time
import traceback

_T0 = time.perf_counter()


def _install_hooks(window_getter) -> None:
    from PySide6.QtCore import QTimer

    def show(text: str) -> None:
        window = window_getter()
        if window is not None:
            window.show_error(
                "Unexpected error", text + "\n\nPlease report this with the details printed in the terminal."
            )

    def excepthook(exc_type, exc, tb):
        traceback.print_exception(exc_type, exc, tb)
        show(f"{exc_type.__name__}: {exc}")

    def thread_hook(args):
        traceback.print_exception(args.exc_type, args.exc_value, args.exc_traceback)
        QTimer.singleShot(0, lambda: show(f"{args.exc_type.__name__}: {args.exc_value}"))

    sys.excepthook = excepthook
    threading.excepthook = thread_hook
    if sys.stderr is not None:
        try:
            faulthandler.enable()
        except (RuntimeError, ValueError, OSError):  # no real stderr (frozen windowed app)
            pass


def app_icon():
    """The app icon (SVG plus its PNG sizes) from ``headtune.resources``, for every window."""
    from importlib import resources

    from PySide6.QtCore import QSize
    from PySide6.QtGui import QIcon

    from headtune.core import APP_ID

    folder = resources.files("headtune.resources").joinpath("icons")
    icon = QIcon()
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.startswith(APP_ID + "-") and item.name.endswith(".png"):
            size = int(item.name[len(APP_ID) + 1 : -4])
            icon.addFile(str(item), QSize(size, size))
    icon.addFile(str(folder.joinpath(APP_ID + ".svg")))
    return icon


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="headtune gui", description="Open the Headtune window.")
    parser.add_argument("plan", nargs="?", help="A plan file to open (default: the built-in demo plan).")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from PySide6.QtWidgets import QApplication

    from headtune.core.errors import HeadtuneError

    from .main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Headtune")
    app.setOrganizationName("Headtune")
    from headtune.core import APP_ID

    app.setDesktopFileName(APP_ID)
    from .ui_gc import UiThreadCollector

    UiThreadCollector(parent=app)  # reference cycles are freed on the UI thread only
    app.setWindowIcon(app_icon())
    window = MainWindow()
    _install_hooks(lambda: window)
    window.show()  # first, so a problem with the plan shows as a dialog over the window
    try:
        if args.plan:
            window.open_plan(args.plan)  # shows its own dialog on failure
        else:
            from headtune.core.tools.demo import demo_plan

            window.set_plan(demo_plan())
    except HeadtuneError as exc:
        window.show_error("Cannot load the demo plan", str(exc))
    if os.environ.get("HEADTUNE_EXIT_AFTER_SHOWN"):
        from .startup_check import install

        install(app, window, _T0, want_estimate=os.environ["HEADTUNE_EXIT_AFTER_SHOWN"] == "estimate")
    code = app.exec()
    window.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
