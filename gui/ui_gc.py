"""Python's cycle collector, run on the UI thread only.

Left automatic, the collector runs in whichever thread happens to allocate, and a worker thread
(loading a tokenizer, say) may then free a closed window's Qt widgets off the UI thread, which
deadlocks against the UI thread deleting widgets (seen in a test). So the window process turns
automatic collection off and collects on a timer in the UI thread, with the usual thresholds.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer


class UiThreadCollector(QObject):
    """Disables automatic collection and collects every ``interval_ms`` on the UI thread."""

    def __init__(self, interval_ms: int = 1000, parent: QObject | None = None):
        super().__init__(parent)
        self.thresholds = gc.get_threshold()
        gc.disable()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.collect)
        self.timer.start(interval_ms)

    def collect(self) -> None:
        """Collect the generations whose allocation counts passed their thresholds."""
        counts = gc.get_count()
        for generation in (2, 1, 0):
            if counts[generation] > self.thresholds[generation]:
                gc.collect(generation)
                return
