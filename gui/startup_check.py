"""A started window that checks itself and quits: ``HEADTUNE_EXIT_AFTER_SHOWN=1`` (or ``=estimate``).

The packaged app's smoke test and the window benchmark start the real program (also frozen, where
no test code can be injected) with this variable set: the window prints ``HEADTUNE_SHOWN`` when it
is on screen and ``HEADTUNE_READY`` when its plots are drawn, with the seconds since start, then
closes. With ``estimate`` it also waits, up to 5 minutes, for the plan's memory estimate (the
model's configuration is read off the UI thread) and prints it and the icon sizes.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer

# How long the check waits for the plots and the estimate before giving up.
TIMEOUT_S = 300


def install(app, window, t0: float, want_estimate: bool) -> None:
    """Schedule the check on ``app``'s event loop for ``window``; ``t0`` is the program's start."""

    def shown():  # a zero timer runs after the posted show/paint events have been handled
        print(f"HEADTUNE_SHOWN {time.perf_counter() - t0:.3f}", flush=True)
        QTimer.singleShot(0, ready)

    def ready():
        waiting = not window.plots_built or (want_estimate and window.last_estimate is None)
        if waiting and time.perf_counter() - t0 < TIMEOUT_S:
            QTimer.singleShot(5, ready)
            return
        app.processEvents()
        if want_estimate:
            est = window.last_estimate
            sizes = sorted(s.width() for s in app.windowIcon().availableSizes())
            print(f"HEADTUNE_ICON {','.join(map(str, sizes))}", flush=True)
            print("HEADTUNE_ESTIMATE " + (f"{est.total_bytes} {est.fit}" if est is not None else "none"), flush=True)
        print(f"HEADTUNE_READY {time.perf_counter() - t0:.3f}", flush=True)
        window.file.confirm_discard = lambda: True
        window.close()
        if want_estimate and window.last_estimate is None:
            app.exit(1)  # the smoke test fails: no estimate within the time limit
        else:
            app.quit()

    QTimer.singleShot(0, shown)
