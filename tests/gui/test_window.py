"""The window, driven offscreen with pytest-qt: every panel, a real run, stop, errors, files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel, QMessageBox, QPushButton, QSpinBox, QWidget

from headtune.core.plan import load_plan, plan_from_dict
from headtune.core.runfolder import RunFolder
from headtune.core.testing import ALPACA_ROWS, plan_dict, write_jsonl
from headtune.gui.main_window import MainWindow, fresh_run_dir

NO = QMessageBox.StandardButton


def loaded(w: MainWindow) -> bool:
    return w.data_panel.preview is not None and w.preview.summary is not None and not w.threads.running()


def estimate_gib(w: MainWindow) -> float:
    label = w.findChild(QLabel, "vramEstimateLabel")
    match = re.search(r"([0-9]+(?:\.[0-9]+)?)</b>\s*GiB|([0-9]+(?:\.[0-9]+)?) GiB", label.text())
    assert match, label.text()
    return float(match.group(1) or match.group(2))


def test_loading_a_model_and_dataset_fills_the_panels(make_window, qtbot, tiny_untied, alpaca_file, tmp_path):
    w = make_window(plan_dict(tiny_untied, alpaca_file, tmp_path / "run"))
    qtbot.waitUntil(lambda: loaded(w), timeout=60_000)
    info = w.model_panel.info
    assert info["vocab"].text() == "512 tokens" and info["layers"].text() == "2"
    assert info["architecture"].text() == "LlamaForCausalLM" and "untied" in info["tied"].text()
    assert w.training_panel.tied_note.isHidden()
    table = w.data_panel.table
    assert table.rowCount() == 20 and [table.horizontalHeaderItem(i).text() for i in range(3)] == [
        "instruction",
        "input",
        "output",
    ]
    assert table.item(0, 0).text() == ALPACA_ROWS[0]["instruction"]
    # The rendered example marks the reply as trained and the prompt as masked.
    segments = w.data_panel.preview.segments
    trained = "".join(t for t, k in segments if k == "trained")
    masked = "".join(t for t, k in segments if k == "masked")
    assert ALPACA_ROWS[0]["output"] in trained and ALPACA_ROWS[0]["instruction"] in masked
    assert ALPACA_ROWS[0]["output"] in w.data_panel.example.toPlainText()
    assert "alpaca" in w.data_panel.summary.text() and "40 rows" in w.data_panel.summary.text()
    # Histogram and truncation share follow the max-length spin box without re-reading the data.
    lengths = w.data_panel.preview.lengths
    assert len(lengths) == 40 and w.data_panel.max_line.value() == 64
    spin = w.findChild(type(w.fields["data.max_seq_len"]), "maxSeqLenSpin")
    spin.setValue(min(lengths) + 1)
    cut = sum(n > min(lengths) + 1 for n in lengths)
    assert w.data_panel.max_line.value() == min(lengths) + 1
    assert w.data_panel.truncation.text().startswith(f"{cut} of 40 examples")
    assert w.values()["data"]["max_seq_len"] == min(lengths) + 1
    assert estimate_gib(w) > 0
    assert w.findChild(QPushButton, "startButton").isEnabled()


def test_required_object_names_and_readable_combos(make_window):
    w = make_window()
    for name, kind in (
        ("modelPathEdit", None),
        ("datasetPathEdit", None),
        ("trainEmbeddingsCheck", QCheckBox),
        ("trainLmHeadCheck", QCheckBox),
        ("embeddingsModeCombo", QComboBox),
        ("quantizationCombo", QComboBox),
        ("maxSeqLenSpin", None),
        ("batchSizeSpin", None),
        ("vramEstimateLabel", QLabel),
        ("vramBar", None),
        ("startButton", QPushButton),
        ("stopButton", QPushButton),
        ("lossPlot", None),
        ("memoryPlot", None),
        ("exportButton", QPushButton),
    ):
        found = w.findChild(kind or object, name)
        assert found is not None, name
        assert found.accessibleName(), name
    import pyqtgraph as pg

    assert isinstance(w.findChild(pg.PlotWidget, "lossPlot"), pg.PlotWidget)
    assert isinstance(w.findChild(pg.PlotWidget, "memoryPlot"), pg.PlotWidget)
    q = w.findChild(QComboBox, "quantizationCombo")
    assert [q.itemData(i) for i in range(q.count())] == ["none", "8bit", "4bit"]
    assert q.itemText(2) == "4-bit NF4 (QLoRA)"
    mode = w.findChild(QComboBox, "embeddingsModeCombo")
    assert mode.toolTip().startswith("How to train them")  # the plan's help text
    assert not w.findChild(QPushButton, "exportButton").isEnabled()
    # No model yet: the plan problem is shown inline and Start is off.
    assert "model.name_or_path" in w.training_panel.plan_error.text()
    assert not w.findChild(QPushButton, "startButton").isEnabled()


def test_ticking_train_embeddings_raises_the_estimate(make_window, qtbot, tiny_llama3_vocab, alpaca_file, tmp_path):
    w = make_window(plan_dict(tiny_llama3_vocab, alpaca_file, tmp_path / "run"))
    qtbot.waitUntil(lambda: w.preview.summary is not None and w.estimate.data is not None, timeout=60_000)
    before = estimate_gib(w)
    w.plan_tabs.setCurrentWidget(w.training_panel)
    box = w.findChild(QCheckBox, "trainEmbeddingsCheck")
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton)
    assert box.isChecked() and w.values()["embeddings"]["train_embeddings"] is True
    qtbot.waitUntil(lambda: estimate_gib(w) > before, timeout=5_000)  # recomputed on the next event-loop turn
    after = estimate_gib(w)
    # The breakdown bar shows the new trainable weights.
    assert dict(w.memory_panel.bar.segments)["weights_trainable"] > 0
    assert w.last_estimate.total_bytes / 1024**3 == pytest.approx(after, abs=0.01)


def test_the_estimate_follows_the_data_and_names_the_defaults_that_save(
    make_window, qtbot, tiny_llama3_vocab, alpaca_file, tmp_path
):
    data = plan_dict(
        tiny_llama3_vocab,
        alpaca_file,
        tmp_path / "run",
        data={"max_seq_len": 512},
        embeddings={"train_embeddings": True, "train_lm_head": True, "mode": "full"},
    )
    w = make_window(data, detect=False)
    qtbot.waitUntil(lambda: w.preview.summary is not None and w.estimate.data is not None, timeout=60_000)
    est = w.last_estimate
    longest = max(w.estimate.data.lengths)
    assert est.data.seq_len == longest < 512 and est.total_bytes < est.data.worst_case_bytes
    assert "for this data" in w.findChild(QLabel, "vramEstimateLabel").text()
    note = w.findChild(QLabel, "dataFitLabel").text()
    assert f"{longest:,} tokens a row" in note and "Worst case at max_seq_len 512" in note
    saved = w.findChild(QLabel, "savedByDefaultsLabel").text()
    assert "8-bit optimizer states for the embedding/head matrices" in saved and "chunked loss" in saved


def test_devices_show_the_memory_per_device_and_the_global_batch(
    make_window, qtbot, tiny_untied, alpaca_file, tmp_path
):
    w = make_window(plan_dict(tiny_untied, alpaca_file, tmp_path / "run", training={"batch_size": 3}))
    qtbot.waitUntil(lambda: w.preview.summary is not None, timeout=60_000)
    assert "Per device" not in w.memory_panel.estimate_label.text()
    w.plan_tabs.setCurrentWidget(w.training_panel)
    w.findChild(QSpinBox, "devicesSpin").setValue(2)
    assert w.values()["training"]["devices"] == 2
    qtbot.waitUntil(lambda: "Per device on 2" in w.memory_panel.estimate_label.text(), timeout=5_000)
    assert "global batch 6" in w.memory_panel.estimate_label.text()
    ddp = w.memory_panel.estimate_label.text()
    combo = w.findChild(QComboBox, "shardingCombo")
    combo.setCurrentIndex(combo.findData("fsdp"))
    assert w.values()["training"]["sharding"] == "fsdp"
    qtbot.waitUntil(lambda: "Per device on 2 (FSDP)" in w.memory_panel.estimate_label.text(), timeout=5_000)
    assert w.memory_panel.estimate_label.text() != ddp


def test_tied_model_keeps_embeddings_and_head_together(make_window, qtbot, tiny_tied, alpaca_file, tmp_path):
    w = make_window(plan_dict(tiny_tied, alpaca_file, tmp_path / "run"))
    qtbot.waitUntil(lambda: w.preview.summary is not None, timeout=60_000)
    w.plan_tabs.setCurrentWidget(w.training_panel)
    assert w.training_panel.tied_note.isVisible() and "one matrix" in w.training_panel.tied_note.text()
    qtbot.mouseClick(w.findChild(QCheckBox, "trainLmHeadCheck"), Qt.MouseButton.LeftButton)
    assert w.findChild(QCheckBox, "trainEmbeddingsCheck").isChecked()
    qtbot.mouseClick(w.findChild(QCheckBox, "trainEmbeddingsCheck"), Qt.MouseButton.LeftButton)
    assert not w.findChild(QCheckBox, "trainLmHeadCheck").isChecked()


def test_advice_applies_with_one_click(make_window, qtbot, tiny_llama3_vocab, alpaca_file, tmp_path):
    # The full-logits loss, so that halving the batch alone makes it fit (the chunked default
    # already keeps the loss region at one chunk).
    data = plan_dict(
        tiny_llama3_vocab, alpaca_file, tmp_path / "run", training={"batch_size": 8}, memory={"loss": "standard"}
    )
    w = make_window(data, detect=False)
    qtbot.waitUntil(lambda: w.preview.summary is not None and w.estimate.data is not None, timeout=60_000)
    total = w.last_estimate.total_bytes
    # Pretend this computer has a little less RAM than the plan needs.
    w.memory_panel.set_targets(None, int(total * 0.8), preferred="ram")
    w.estimate.update_estimate()
    assert "Does not fit" in w.memory_panel.verdict.text()
    apply = w.findChild(QPushButton, "applyAdvice0")
    assert apply is not None
    change = w.last_estimate.advice[0].set
    qtbot.mouseClick(apply, Qt.MouseButton.LeftButton)
    for key, value in change.items():
        section, leaf = key.split(".")
        assert w.values()[section][leaf] == value
    qtbot.waitUntil(lambda: w.last_estimate.total_bytes < total, timeout=5_000)
    assert "Fits" in w.memory_panel.verdict.text() or "Tight" in w.memory_panel.verdict.text()


def test_find_tokens_by_text_and_train_their_rows(make_window, qtbot, tiny_untied, alpaca_file, tmp_path):
    w = make_window(plan_dict(tiny_untied, alpaca_file, tmp_path / "run"))
    qtbot.waitUntil(lambda: w.preview.tokenizer is not None, timeout=60_000)
    w.plan_tabs.setCurrentWidget(w.training_panel)
    qtbot.keyClicks(w.training_panel.token_search, "<|im_end|>")
    results = w.training_panel.token_results
    assert results.count() >= 1
    item = results.item(0)
    assert "<|im_end|>" in item.text()
    results.itemDoubleClicked.emit(item)
    assert w.values()["embeddings"]["token_ids"] == [w.preview.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert "'<|im_end|>'" in w.training_panel.token_rows.text()
    # Rows listed but neither box ticked: the plan says what to do, Start is off.
    assert "train_embeddings" in w.training_panel.plan_error.text()
    assert not w.findChild(QPushButton, "startButton").isEnabled()
    w.plan.set("embeddings.mode", "tokens")  # a change made in code is heard like an edit
    qtbot.mouseClick(w.findChild(QCheckBox, "trainEmbeddingsCheck"), Qt.MouseButton.LeftButton)
    assert w.training_panel.plan_error.isHidden()


def _run_window(make_window, qtbot, data: dict) -> MainWindow:
    w = make_window(data)
    qtbot.waitUntil(lambda: w.preview.summary is not None and not w.threads.running(), timeout=60_000)
    qtbot.mouseClick(w.findChild(QPushButton, "startButton"), Qt.MouseButton.LeftButton)
    assert w.running and w.findChild(QPushButton, "stopButton").isEnabled()
    return w


@pytest.mark.slow
def test_start_plots_loss_and_finishes(make_window, qtbot, tiny_untied, alpaca_file, tmp_path):
    out = tmp_path / "run"
    w = _run_window(
        make_window, qtbot, plan_dict(tiny_untied, alpaca_file, out, training={"max_steps": 4, "eval_every": 2})
    )
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    assert w.run_panel.state_label.text().startswith("Finished at step 4"), w.run_panel.log_view.toPlainText()
    w.run_panel._redraw_if_dirty()
    xs, ys = w.run_panel.loss_raw.getData()
    assert list(xs) == [1, 2, 3, 4] and all(y > 0 for y in ys)
    ex, _ = w.run_panel.loss_eval.getData()
    assert list(ex) == [0, 2, 4]
    w.run_panel.tabs.setCurrentWidget(w.run_panel.memory_tab)  # hidden plots are drawn when shown
    assert len(w.run_panel.mem_rss.getData()[0]) >= 1
    w.run_panel.tabs.setCurrentWidget(w.run_panel.loss_tab)
    assert w.run_panel.estimate_line.isVisible()
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert w.run_panel.progress.value() == 4
    # The runs list shows it, and its plots reopen from events.jsonl.
    names = [w.run_panel.runs_list.item(i).text() for i in range(w.run_panel.runs_list.count())]
    assert any(n.startswith("run  ·  finished at step 4/4") for n in names), names
    w.run_panel.reset()
    assert w.run_panel.load_run(str(out)) > 5
    w.run_panel._redraw_if_dirty()
    assert list(w.run_panel.loss_raw.getData()[0]) == [1, 2, 3, 4]
    # Start again: the used output folder is not overwritten; the new run goes next to it.
    assert w.findChild(QPushButton, "startButton").isEnabled()
    qtbot.mouseClick(w.findChild(QPushButton, "startButton"), Qt.MouseButton.LeftButton)
    assert w.values()["output"]["dir"] == f"{out}-2"
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    assert (Path(f"{out}-2") / "adapter").is_dir()


@pytest.mark.slow
def test_stop_mid_run_saves_a_checkpoint_and_resume_continues(make_window, qtbot, tiny_untied, alpaca_file, tmp_path):
    out = tmp_path / "run"
    w = _run_window(make_window, qtbot, plan_dict(tiny_untied, alpaca_file, out, training={"max_steps": 400}))
    qtbot.waitUntil(lambda: len(w.run_panel.curves.steps) >= 2, timeout=120_000)
    qtbot.mouseClick(w.findChild(QPushButton, "stopButton"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    label = w.run_panel.state_label.text()
    assert label.startswith("Stopped at step"), w.run_panel.log_view.toPlainText()
    step = int(label.split()[-1])
    assert 2 <= step < 400 and RunFolder(out).has_checkpoint()
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert events[-1]["type"] == "stopped" and events[-1]["checkpoint_path"]
    resume = w.findChild(QPushButton, "resumeButton")
    assert resume.isEnabled()
    qtbot.mouseClick(resume, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(w.run_panel.curves.steps) >= 1, timeout=120_000)
    assert w.run_panel.curves.steps[0] == step + 1  # continued from the checkpoint
    w.stop_run()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert w.run_panel.state_label.text().startswith("Stopped at step")


@pytest.mark.slow
def test_bad_dataset_shows_an_error_and_the_window_stays_usable(make_window, qtbot, tiny_untied, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", ALPACA_ROWS[:5], raw_lines=['{"instruction": "x", "output": '])
    w = make_window(plan_dict(tiny_untied, bad, tmp_path / "run"))
    qtbot.waitUntil(lambda: not w.data_panel.error.isHidden() and not w.threads.running(), timeout=60_000)
    assert "line 6" in w.data_panel.error.text()
    qtbot.mouseClick(w.findChild(QPushButton, "startButton"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    box = w.findChild(QMessageBox, "errorDialog")
    assert box is not None and box.isVisible()
    assert "bad.jsonl, line 6" in box.text()
    assert w.run_panel.state_label.text() == "Failed"
    assert not (tmp_path / "run").exists()  # a refused run writes nothing
    box.accept()
    # Fix the data in the window: the preview recovers and Start is available again.
    good = write_jsonl(tmp_path / "good.jsonl", ALPACA_ROWS)
    w.findChild(type(w.fields["data.path"]), "datasetPathEdit").setText(str(good))
    qtbot.waitUntil(lambda: w.data_panel.preview is not None and not w.threads.running(), timeout=60_000)
    assert w.data_panel.error.isHidden()
    assert w.findChild(QPushButton, "startButton").isEnabled()


def test_missing_model_is_shown_inline(make_window, qtbot, alpaca_file, tmp_path):
    w = make_window(plan_dict(tmp_path / "nowhere", alpaca_file, tmp_path / "run"))
    qtbot.waitUntil(lambda: not w.model_panel.error.isHidden() and not w.threads.running(), timeout=60_000)
    assert "does not exist" in w.model_panel.error.text()
    assert (
        "choose a model" in w.findChild(QLabel, "vramEstimateLabel").text()
        or "waiting" in w.findChild(QLabel, "vramEstimateLabel").text()
    )


def test_save_and_open_plan_round_trip(make_window, qtbot, tiny_untied, alpaca_file, tmp_path):
    w = make_window(plan_dict(tiny_untied, alpaca_file, tmp_path / "run"))
    w.findChild(type(w.fields["training.batch_size"]), "batchSizeSpin").setValue(3)
    assert w.dirty and w.windowTitle().startswith("untitled plan *")
    path = tmp_path / "saved.yaml"
    assert w.save_plan_as(str(path))
    assert not w.dirty
    plan = load_plan(path)  # the CLI reads what the window saved
    assert plan.training.batch_size == 3 and plan.model.name_or_path == str(tiny_untied)
    w2 = make_window()
    assert w2.open_plan(str(path))
    assert w2.values()["training"]["batch_size"] == 3 and not w2.dirty
    assert w2.windowTitle().startswith("saved.yaml")
    # A broken plan file is refused with a message; nothing in the window changes.
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: [1, 2\n")
    assert not w2.open_plan(str(broken))
    assert "not valid YAML" in w2.findChild(QMessageBox, "errorDialog").text()
    assert w2.values()["training"]["batch_size"] == 3


def test_unsaved_changes_are_not_lost_silently(make_window, tiny_untied, alpaca_file, tmp_path):
    w = make_window(plan_dict(tiny_untied, alpaca_file, tmp_path / "run"))
    w.plan.set("training.batch_size", 5)
    asked = []
    w.ask = lambda *a: asked.append(a[0]) or NO.Cancel
    assert not w.close() and w.isVisible() and asked == ["Unsaved plan"]
    w.ask = lambda *a: NO.Discard
    assert w.close()


@pytest.mark.slow
def test_closing_during_a_run_stops_and_saves(make_window, qtbot, tiny_untied, alpaca_file, tmp_path):
    out = tmp_path / "run"
    w = _run_window(make_window, qtbot, plan_dict(tiny_untied, alpaca_file, out, training={"max_steps": 400}))
    qtbot.waitUntil(lambda: len(w.run_panel.curves.steps) >= 1, timeout=120_000)
    w.ask = lambda *a: NO.Yes
    assert not w.close()  # refused for now: the run stops first
    qtbot.waitUntil(lambda: not w.isVisible(), timeout=120_000)
    assert RunFolder(out).has_checkpoint() and (out / "adapter").is_dir()


def test_settings_remember_recent_models(make_window, qtbot, tiny_untied, alpaca_file, tmp_path):
    w = make_window(plan_dict(tiny_untied, alpaca_file, tmp_path / "run"))
    qtbot.waitUntil(lambda: w.preview.summary is not None, timeout=60_000)
    assert w.settings.value("recent/models", [], list)[0] == str(tiny_untied)
    w.shutdown()
    w2 = make_window()
    actions = w2.model_panel.path_row.recent.menu().actions()
    assert [a.text() for a in actions][0] == str(tiny_untied)


def test_fresh_run_dir(tmp_path):
    assert fresh_run_dir(str(tmp_path / "a")) == str(tmp_path / "a")
    (tmp_path / "a").mkdir()
    assert fresh_run_dir(str(tmp_path / "a")) == str(tmp_path / "a")  # empty is fine
    (tmp_path / "a" / "x").write_text("")
    (tmp_path / "a-2").mkdir()
    assert fresh_run_dir(str(tmp_path / "a")) == str(tmp_path / "a-3")


def _open_window(args, tmp_path):
    env = dict(os.environ, HEADTUNE_EXIT_AFTER_SHOWN="1", QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path))
    return subprocess.run(
        [sys.executable, "-m", "headtune.gui.launcher", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
    )


@pytest.mark.slow
def test_headtune_without_arguments_opens_the_window_on_the_demo(tmp_path):
    proc = _open_window([], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "HEADTUNE_SHOWN" in proc.stdout and "HEADTUNE_READY" in proc.stdout


@pytest.mark.slow
def test_headtune_gui_opens_a_plan_file(tmp_path, tiny_untied, alpaca_file):
    plan = tmp_path / "p.yaml"
    plan_from_dict(plan_dict(tiny_untied, alpaca_file, tmp_path / "run")).save(plan)
    proc = _open_window(["gui", str(plan)], tmp_path)
    assert proc.returncode == 0 and "HEADTUNE_READY" in proc.stdout, proc.stderr
    # A plan that is not there still opens the window, with the reason shown (and printed nowhere fatal).
    proc = _open_window(["gui", str(tmp_path / "missing.yaml")], tmp_path)
    assert proc.returncode == 0 and "HEADTUNE_READY" in proc.stdout, proc.stderr


@pytest.mark.slow
def test_token_health_panel_finds_untrained_rows_and_applies_fixes(
    make_window, qtbot, tiny_untied, alpaca_file, tmp_path
):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "planted"
    shutil.copytree(tiny_untied, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight[[300, 301]] = 0.0
    model.save_pretrained(folder)
    w = make_window(plan_dict(folder, alpaca_file, tmp_path / "run"))
    qtbot.waitUntil(lambda: loaded(w), timeout=60_000)
    w.plan_tabs.setCurrentWidget(w.health_panel)
    qtbot.mouseClick(w.findChild(QPushButton, "checkTokensButton"), Qt.MouseButton.LeftButton)
    table = w.health_panel.table
    qtbot.waitUntil(lambda: table.rowCount() > 0 and not w.threads.running(), timeout=60_000)
    assert [table.item(i, 0).text() for i in range(table.rowCount())] == ["0", "300", "301"]
    assert "on 40 rows: end token <code>&lt;|im_end|&gt;</code>" in w.health_panel.template.text()
    qtbot.mouseClick(w.findChild(QPushButton, "applyTokensModeButton"), Qt.MouseButton.LeftButton)
    e = w.values()["embeddings"]
    assert e["mode"] == "tokens" and e["train_embeddings"] and e["train_lm_head"]
    assert set(e["token_ids"]) <= {0, 300, 301} and e["token_ids"]
    assert w.training_panel.plan_error.isHidden()
    qtbot.mouseClick(w.findChild(QPushButton, "applyInitMeanButton"), Qt.MouseButton.LeftButton)
    assert w.values()["embeddings"]["init_untrained"] == "mean"
    # The plan's added tokens are counted as training adds them.
    w.plan.set("embeddings.vocab_tokens", [" Kühlkreislauf"])
    qtbot.mouseClick(w.findChild(QPushButton, "checkTokensButton"), Qt.MouseButton.LeftButton)
    summary = w.health_panel.summary
    qtbot.waitUntil(lambda: "The plan adds" in summary.text() and not w.threads.running(), timeout=60_000)
    assert "(0 used by the data)" in summary.text()


def test_new_words_proposed_from_the_data_unticked_and_previewed(make_window, qtbot, tiny_untied, tmp_path):
    planted = " quarzspektrometrie"
    rows = [{"instruction": f"Say line {i}.", "input": "", "output": f"red{planted} blue{planted}."} for i in range(30)]
    data = write_jsonl(tmp_path / "planted.jsonl", rows)
    w = make_window(plan_dict(tiny_untied, data, tmp_path / "run"))
    qtbot.waitUntil(lambda: loaded(w), timeout=60_000)
    before = w.data_panel.preview.lengths
    w.plan_tabs.setCurrentWidget(w.training_panel)
    w.plan.set("embeddings.vocab_count", 3)
    qtbot.mouseClick(w.findChild(QPushButton, "vocabProposeButton"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.values()["embeddings"]["vocab_tokens"] != [], timeout=60_000)
    words = w.values()["embeddings"]["vocab_tokens"]
    assert words[0] == planted and len(words) <= 3
    listed = w.training_panel.vocab_list
    assert listed.item(0).text() == "␣quarzspektrometrie" and "pieces" in listed.item(0).toolTip()
    assert "fewer" in w.training_panel.vocab_summary.text()
    # The data preview follows the extended tokenizer, and says what it was before.
    qtbot.waitUntil(lambda: bool(w.data_panel.preview.base_lengths) and not w.threads.running(), timeout=60_000)
    assert w.data_panel.preview.base_lengths == before and sum(w.data_panel.preview.lengths) < sum(before)
    assert "tokens per example" in w.data_panel.summary.text()
    listed.item(0).setCheckState(Qt.CheckState.Unchecked)  # unticked: out of the plan, still listed
    assert planted not in w.values()["embeddings"]["vocab_tokens"] and listed.count() == len(words)


def test_method_combo_sets_the_plan_and_rewards_are_plotted(make_window, qtbot, tiny_untied, tmp_path):
    from headtune.core import events as ev
    from headtune.core.testing import PREFERENCE_ROWS

    pairs = write_jsonl(tmp_path / "pairs.jsonl", PREFERENCE_ROWS)
    w = make_window(plan_dict(tiny_untied, pairs, tmp_path / "run"))
    method = w.findChild(QComboBox, "methodCombo")
    assert [method.itemData(i) for i in range(method.count())] == ["sft", "dpo", "orpo"]
    assert method.toolTip().startswith("What the run learns from") and method.accessibleName()
    beta, lam = w.findChild(QWidget, "prefBetaSpin"), w.findChild(QWidget, "orpoLambdaSpin")
    assert not beta.isEnabled() and not lam.isEnabled()  # sft
    method.setCurrentIndex(method.findData("dpo"))
    assert w.values()["training"]["method"] == "dpo"
    assert beta.isEnabled() and not lam.isEnabled()
    method.setCurrentIndex(method.findData("orpo"))
    assert lam.isEnabled() and not beta.isEnabled() and w.values()["training"]["method"] == "orpo"
    # A plan opened with a method shows it, its setting editable.
    opened = make_window(plan_dict(tiny_untied, pairs, tmp_path / "run2", training={"method": "dpo"}))
    assert opened.findChild(QComboBox, "methodCombo").currentData() == "dpo"
    assert opened.findChild(QWidget, "prefBetaSpin").isEnabled()
    panel = w.run_panel
    panel.reset()
    panel.add_event(
        ev.Step(
            step=1,
            total_steps=4,
            loss=0.69,
            learning_rate=1e-3,
            grad_norm=1.0,
            tokens_per_s=10.0,
            epoch=0.1,
            reward_margin=0.25,
            reward_accuracy=0.75,
        )
    )
    panel.add_event(ev.Eval(step=1, eval_loss=0.6, eval_reward_accuracy=0.5))
    panel.tabs.setCurrentWidget(panel.reward_tab)
    panel._redraw_if_dirty()
    assert list(panel.reward_margin_curve.getData()[1]) == [0.25]
    assert list(panel.reward_accuracy_curve.getData()[1]) == [0.75]
    assert list(panel.eval_reward_curve.getData()[1]) == [0.5]
    assert "reward accuracy 75%" in panel.progress.format()


@pytest.mark.slow
def test_dpo_run_from_the_window_plots_rewards(make_window, qtbot, tiny_untied, tmp_path):
    from headtune.core.testing import PREFERENCE_ROWS

    pairs = write_jsonl(tmp_path / "pairs.jsonl", PREFERENCE_ROWS)
    out = tmp_path / "run"
    w = make_window(plan_dict(tiny_untied, pairs, out, training={"max_steps": 3, "eval_every": 3}))
    qtbot.waitUntil(lambda: w.preview.summary is not None and not w.threads.running(), timeout=60_000)
    method = w.findChild(QComboBox, "methodCombo")
    method.setCurrentIndex(method.findData("dpo"))
    qtbot.mouseClick(w.findChild(QPushButton, "startButton"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    assert w.run_panel.state_label.text().startswith("Finished at step 3"), w.run_panel.log_view.toPlainText()
    w.run_panel.tabs.setCurrentWidget(w.run_panel.reward_tab)
    w.run_panel._redraw_if_dirty()
    assert list(w.run_panel.reward_margin_curve.getData()[0]) == [1, 2, 3]
    assert list(w.run_panel.eval_reward_curve.getData()[0]) == [0, 3]
    assert load_plan(out / "plan.yaml").training.method == "dpo"
