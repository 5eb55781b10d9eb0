"""The window process frees reference cycles on the UI thread only (``gui/ui_gc.py``)."""

from __future__ import annotations

import gc

from headtune.gui.ui_gc import UiThreadCollector


class Node:
    pass


def test_cycles_are_collected_by_the_ui_thread_timer(qapp, qtbot):
    collector = UiThreadCollector(interval_ms=10)
    try:
        assert not gc.isenabled()  # no collection in whatever thread allocates next
        gc.collect()
        for _ in range(collector.thresholds[0] * 3):
            n = Node()
            n.me = n
        assert gc.get_count()[0] > collector.thresholds[0]
        qtbot.waitUntil(lambda: gc.get_count()[0] <= collector.thresholds[0], timeout=5_000)
    finally:
        collector.timer.stop()
        gc.enable()
