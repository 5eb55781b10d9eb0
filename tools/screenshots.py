"""Save the window's main states as PNGs under docs/screenshots/ (offscreen, about 2 minutes).

    QT_QPA_PLATFORM=offscreen python tools/screenshots.py            (all)
    QT_QPA_PLATFORM=offscreen python tools/screenshots.py catalog    (the model catalog only)

States: empty (a new plan), the demo plan loaded with its estimate, its token-health check, a
short demo run with its plots, the model catalog with its fit badges, the Chat tab and the Export dialog (GGUF q8_0) on that run, and an error (a malformed dataset line) with its dialog. Runs go to a temporary folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUT = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


def wait(app, cond, timeout: float = 600) -> None:
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise SystemExit("timed out waiting for the window")
        app.processEvents()
        time.sleep(0.02)


def save(pixmap, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / f".{name}.tmp.png"
    pixmap.save(str(tmp))
    os.replace(tmp, OUT / f"{name}.png")
    print(f"saved {OUT / name}.png")


def catalog_shots(app, window, tmp: Path) -> None:
    """The Model tab's catalog with its badges on a 12 GiB card, then filtered to what fits with
    the embeddings trained, with a model chosen that is not downloaded yet."""
    from headtune.core.estimate import GiB
    from headtune.core.tools.demo import demo_plan

    sets = [f"output.dir={tmp / 'catalog'}", "model.dtype=bfloat16", "data.max_seq_len=1024", "training.batch_size=2"]
    w = window(demo_plan(sets))
    w.splitter.setSizes([1000, 440])
    combo = w.memory_panel.target_combo
    combo.setCurrentIndex(combo.findData(f"gpu:{12 * GiB}"))
    panel = w.model_panel.catalog
    wait(app, lambda: panel.table.rowCount() > 40 and "12.0 GiB" in panel.card.text())
    w.plan_tabs.setCurrentWidget(w.model_panel)
    panel.select("meta-llama/Llama-3.2-3B-Instruct")
    w.splitter.setSizes([1000, 440])
    app.processEvents()
    save(w.grab(), "catalog")
    panel.search.setText("instruct")
    panel.fit.setCurrentText("fits: + full")
    panel.select("meta-llama/Llama-3.2-1B-Instruct")
    panel.use_button.click()  # its facts come from the catalog: no network needed
    chosen = "meta-llama/Llama-3.2-1B-Instruct"
    wait(app, lambda: panel.offer_button.isVisible() and getattr(w.estimate.summary, "name", "") == chosen)
    wait(app, lambda: not w.threads.running())
    w.splitter.setSizes([1000, 440])
    app.processEvents()
    save(w.grab(), "catalog-filtered")
    w.close()


def main() -> int:
    from PySide6.QtCore import QSettings
    from PySide6.QtGui import QPainter
    from PySide6.QtWidgets import QApplication, QMessageBox

    from headtune.core.plan import Plan, with_overrides
    from headtune.core.tools.demo import demo_plan
    from headtune.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    tmp = Path(tempfile.mkdtemp(prefix="headtune-shots-"))
    settings = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)

    def window(plan=None) -> MainWindow:
        w = MainWindow(plan, settings=settings)
        w.ask = lambda *a: QMessageBox.StandardButton.Discard
        w.resize(1440, 900)
        w.show()
        wait(app, lambda: w.plots_built and not w.threads.running())
        return w

    catalog_shots(app, window, tmp)
    if sys.argv[1:] == ["catalog"]:
        return 0

    w = window(Plan())
    save(w.grab(), "empty")
    w.close()

    plan = demo_plan(
        [
            f"output.dir={tmp / 'demo'}",
            "training.batch_size=4",
            "training.max_steps=16",
            "training.eval_every=4",
            "training.save_every=0",
        ]
    )
    w = window(plan)
    wait(app, lambda: w.data_panel.preview is not None and not w.threads.running())
    w.plan_tabs.setCurrentWidget(w.data_panel)
    save(w.grab(), "plan-loaded")
    w.plan_tabs.setCurrentWidget(w.health_panel)
    w.health_panel.check_requested.emit()
    wait(app, lambda: w.health_panel.table.rowCount() > 0 and not w.threads.running())
    save(w.grab(), "token-health")

    w.plan_tabs.setCurrentWidget(w.training_panel)
    w.runs.start_run()
    wait(app, lambda: not w.running, timeout=2400)  # a shared 2-core machine can take this long
    w.run_panel._dirty = True
    w.run_panel._redraw_if_dirty()
    app.processEvents()
    save(w.grab(), "training")
    w.run_panel.tabs.setCurrentWidget(w.run_panel.memory_tab)
    app.processEvents()
    save(w.run_panel.grab(), "memory-plot")

    w.run_panel.tabs.setCurrentWidget(w.chat_panel)
    w.chat_panel.prompt.setPlainText("What does Headtune do?")
    w.chat_panel.max_tokens.setValue(48)
    w.chat_panel.send_button.click()
    wait(app, lambda: not w.chat.running, timeout=600)
    app.processEvents()
    save(w.grab(), "chat")
    dialog = w.show_export()
    dialog.format_combo.setCurrentIndex(dialog.format_combo.findData("gguf"))
    dialog.start_export()
    wait(app, lambda: not dialog.running, timeout=900)
    app.processEvents()
    save(dialog.grab(), "export")
    w.close()

    bad = tmp / "my_data.jsonl"
    good_rows = (Path(str(plan.data.path)).read_text(encoding="utf-8").splitlines())[:12]
    bad.write_text("\n".join(good_rows + ['{"instruction": "Summarise this.", "output": ']) + "\n", encoding="utf-8")
    w = window(with_overrides(plan, [f"data.path={bad}", f"output.dir={tmp / 'bad'}"]))
    wait(app, lambda: not w.data_panel.error.isHidden() and not w.threads.running())
    w.plan_tabs.setCurrentWidget(w.data_panel)
    w.runs.start_run()
    wait(app, lambda: not w.running, timeout=300)
    box = w.findChild(QMessageBox, "errorDialog")
    app.processEvents()
    shot = w.grab()
    if box is not None and box.isVisible():
        painter = QPainter(shot)
        dialog = box.grab()
        painter.drawPixmap((shot.width() - dialog.width()) // 2, (shot.height() - dialog.height()) // 3, dialog)
        painter.end()
    save(shot, "error")
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
