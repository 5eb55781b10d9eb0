"""The Export dialog and the Chat tab, driven offscreen on a real finished run."""

from __future__ import annotations

import os

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPushButton

from headtune.core.plan import plan_from_dict
from headtune.core.testing import plan_dict
from headtune.core.tools.chat import ChatPair
from headtune.core.training.job import TrainingJob


@pytest.fixture
def finished_run(tmp_path, tiny_untied, alpaca_file):
    d = plan_dict(
        tiny_untied,
        alpaca_file,
        tmp_path / "runs" / "first",
        embeddings={"train_lm_head": True, "mode": "full"},
        training={"max_steps": 4, "learning_rate": 5e-2},
    )
    TrainingJob(plan_from_dict(d)).run()
    return d


def select_run(w, qtbot, path):
    lst = w.run_panel.runs_list
    qtbot.waitUntil(lambda: lst.count() > 0, timeout=10_000)
    for i in range(lst.count()):
        if lst.item(i).data(Qt.ItemDataRole.UserRole) == str(path):
            lst.setCurrentRow(i)
            return
    raise AssertionError("run not listed")


@pytest.mark.slow
def test_export_dialog_exports_with_progress_and_refuses_an_existing_folder(make_window, qtbot, finished_run, tmp_path):
    w = make_window(finished_run)
    run = tmp_path / "runs" / "first"
    button = w.findChild(QPushButton, "exportButton")
    select_run(w, qtbot, run)
    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    dialog = w.export.dialog
    assert dialog.isVisible() and dialog.run_dir == str(run)
    dialog.format_combo.setCurrentIndex(dialog.format_combo.findData("merged"))
    assert dialog.dest_edit.text() == str(tmp_path / "runs" / "first-merged")
    progress_seen = []
    dialog.progress.valueChanged.connect(progress_seen.append)
    qtbot.mouseClick(dialog.export_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.running, timeout=180_000)
    assert dialog.result is not None, dialog.status.text()
    out = tmp_path / "runs" / "first-merged"
    assert (out / "config.json").is_file() and (out / "README.md").is_file()
    assert dialog.progress.value() == 100 and len(set(progress_seen)) >= 3  # several steps were shown
    assert "Exported to" in dialog.status.text()
    # Again to the same folder: refused with the reason, the export kept, nothing half-written.
    before = sorted(p.name for p in out.iterdir())
    qtbot.mouseClick(dialog.export_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.running, timeout=180_000)
    assert "already exists" in dialog.status.text() and dialog.result is None
    assert sorted(p.name for p in out.iterdir()) == before
    assert not list((tmp_path / "runs").glob(".first-merged.partial-*"))
    dialog.close()


def test_export_button_off_without_a_saved_adapter(make_window, qtbot, tiny_untied, alpaca_file, tmp_path):
    w = make_window(plan_dict(tiny_untied, alpaca_file, tmp_path / "runs" / "none"))
    assert not w.findChild(QPushButton, "exportButton").isEnabled()
    assert not w.chat_panel.send_button.isEnabled()


@pytest.mark.slow
def test_chat_tab_streams_both_answers(make_window, qtbot, finished_run, tmp_path):
    w = make_window(finished_run)
    run = tmp_path / "runs" / "first"
    select_run(w, qtbot, run)
    chat, talk = w.chat_panel, w.chat
    assert chat.send_button.isEnabled() and talk.run_dir == str(run)
    w.run_panel.tabs.setCurrentWidget(chat)
    chat.prompt.setPlainText("Name colour number 3.")
    chat.max_tokens.setValue(8)
    qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
    assert talk.running and not chat.send_button.isEnabled()
    qtbot.waitUntil(lambda: not talk.running, timeout=120_000)
    assert chat.status.text().startswith("Done"), chat.status.text()
    pair = ChatPair(run, device="cpu")
    messages = [{"role": "user", "content": "Name colour number 3."}]
    assert chat.base_output.toPlainText() == pair.answer(messages, tuned=False, max_new_tokens=8)
    assert chat.tuned_output.toPlainText() == pair.answer(messages, tuned=True, max_new_tokens=8)
    assert chat.base_output.toPlainText() != chat.tuned_output.toPlainText()
    pid = talk.child_pid
    assert talk.model_loaded and pid not in (None, os.getpid())  # kept for the next prompt, in a child process
    # A second prompt reuses the loaded model: no new child is started.
    chat.prompt.setPlainText("Name colour number 4.")
    qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not talk.running, timeout=120_000)
    assert talk.child_pid == pid and chat.status.text().startswith("Done")
    talk.release_model()  # what starting a training run does
    assert not talk.model_loaded
    qtbot.waitUntil(lambda: not talk.child_alive, timeout=30_000)  # the child has ended, its memory freed
    assert chat.status.text().startswith("Done")  # ending it on purpose is no failure
