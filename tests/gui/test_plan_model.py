"""The plan model: every change is heard, whoever makes it; a plan error marks the field it names."""

from __future__ import annotations

import sys

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLineEdit, QMessageBox, QPushButton, QSpinBox

from headtune.core.errors import PlanError
from headtune.core.plan import Plan, plan_from_dict
from headtune.core.testing import plan_dict
from headtune.core.tools import health
from headtune.gui import protocols
from headtune.gui.fields import PlanFields
from headtune.gui.plan_model import PlanModel


def heard(model: PlanModel) -> list[str]:
    keys: list[str] = []
    model.changed.connect(keys.append)
    return keys


def test_changes_made_in_code_and_by_widgets_are_heard_alike(qtbot):
    fields = PlanFields()
    spin = fields.spin("training.batch_size", 1, 64)
    edit = fields.line("data.path")
    model = PlanModel(fields)
    keys = heard(model)
    assert spin.value() == Plan().training.batch_size  # the widgets show the defaults from the start
    model.set("training.batch_size", 5)
    assert keys == ["training.batch_size"] and spin.value() == 5 and model.value("training.batch_size") == 5
    model.set("training.batch_size", 5)
    assert keys == ["training.batch_size"]  # no change, nothing to hear
    edit.setText("d.jsonl")  # as a person typing
    assert keys[-1] == "data.path" and model.values()["data"]["path"] == "d.jsonl"
    model.set("training.batch_size", 1000)  # the widget's range applies to code too
    assert model.value("training.batch_size") == 64 == spin.value()
    model.update({"training.grad_accum": 8, "data.path": "e.jsonl"})  # a key without a widget, and one with
    assert keys[-2:] == ["training.grad_accum", "data.path"] and edit.text() == "e.jsonl"
    assert model.plan(check=False).training.grad_accum == 8


def test_opening_a_plan_is_heard_key_by_key_then_as_a_whole(qtbot):
    fields = PlanFields()
    fields.spin("training.batch_size", 1, 64)
    model = PlanModel(fields)
    keys = heard(model)
    replaced = []
    model.replaced.connect(lambda: replaced.append(list(keys)))
    data = Plan().to_dict()
    data["training"]["batch_size"], data["data"]["path"] = 7, "x.jsonl"
    model.load(plan_from_dict(data, check=False))
    assert sorted(keys) == ["data.path", "training.batch_size"] and replaced == [keys]
    assert model.values() == plan_from_dict(data, check=False).to_dict()


def test_window_hears_advice_and_health_fixes(make_window, tmp_path):
    w = make_window()
    keys = heard(w.plan)
    w.memory_panel.advice_applied.emit({"training.batch_size": 2, "training.grad_accum": 4})
    assert keys == ["training.batch_size", "training.grad_accum"]
    assert w.findChild(QSpinBox, "batchSizeSpin").value() == 2 and w.dirty
    w.health_panel.train_rows_requested.emit([5, 3])
    assert {"embeddings.mode", "embeddings.token_ids", "embeddings.train_embeddings"} <= set(keys)
    assert w.findChild(QLineEdit, "tokenIdsEdit").text() == "3, 5"
    assert "3, 5" in w.training_panel.token_rows.text()  # heard by the token rows without a manual refresh


def test_a_plan_error_highlights_the_field_it_names(make_window, tmp_path):
    w = make_window(detect=False)
    model_edit = w.findChild(QLineEdit, "modelPathEdit")
    assert w.estimate.last_check.key == "model.name_or_path"
    assert model_edit.property("planError") is True and "no model given" in model_edit.toolTip()
    w.plan.update({"model.name_or_path": "some/model", "data.path": "d.jsonl"})
    assert w.estimate.last_check.problem is None and not model_edit.property("planError")
    w.plan.set("embeddings.token_ids", [3])  # rows listed, but neither matrix is trained
    ids_edit = w.findChild(QLineEdit, "tokenIdsEdit")
    assert w.estimate.last_check.key == "embeddings.token_ids"
    assert ids_edit.property("planError") is True and not model_edit.property("planError")
    assert w.fields.highlighted == "embeddings.token_ids"
    w.plan.set("embeddings.token_ids", [])
    assert w.estimate.last_check.problem is None and w.fields.highlighted is None
    assert not ids_edit.property("planError") and ids_edit.styleSheet() == ""
    spin = w.plan.field_for_error(PlanError("training.batch_size: must be at least 1", "training.batch_size"))
    assert spin is w.findChild(QSpinBox, "batchSizeSpin")
    assert w.plan.field_for_error(PlanError("The plan must be a mapping")) is None
    w.plan.mark_error(PlanError("training.batch_size: must be at least 1", "training.batch_size"))
    assert spin.property("planError") is True and "must be at least 1" in spin.toolTip()
    w.plan.mark_error(PlanError("schema_version: not a plan format version", "schema_version"))  # no field
    assert w.fields.highlighted is None and not spin.property("planError")


def test_token_health_runs_in_a_child_and_survives_its_crash(
    make_window, qtbot, monkeypatch, tiny_untied, alpaca_file, tmp_path
):
    def not_here(*a, **kw):
        raise AssertionError("token health ran in the window's process")

    commands = []
    real = protocols.inspect_args

    def crashing(model, spec=None, *tokens):
        commands.append(real(model, spec, *tokens))
        return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]

    monkeypatch.setattr(health, "inspect_model", not_here)
    monkeypatch.setattr(protocols, "inspect_args", crashing)
    w = make_window(plan_dict(tiny_untied, alpaca_file, tmp_path / "run"), detect=False)
    qtbot.mouseClick(w.findChild(QPushButton, "checkTokensButton"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.health_panel.check_button.isEnabled(), timeout=30_000)
    assert commands[0][3:6] == ["inspect", str(tiny_untied), "--json"]
    assert commands[0][commands[0].index("--data") + 1] == str(alpaca_file)
    assert "The token health check process ended unexpectedly (SIGKILL" in w.health_panel.error.text()
    assert w.isVisible()


def test_chat_child_that_dies_mid_answer_is_reported(make_window, qtbot, monkeypatch, tmp_path):
    code = (
        "import json, os, signal, sys\nprint(json.dumps({'type': 'loaded'}), flush=True)\n"
        "sys.stdin.readline()\nprint(json.dumps({'type': 'piece', 'tuned': False, 'text': 'Hel'}), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    monkeypatch.setattr(protocols, "chat_args", lambda run_dir: [sys.executable, "-c", code])
    w = make_window(detect=False)
    w.chat.set_run(str(tmp_path))
    w.chat_panel.prompt.setPlainText("Hello?")
    qtbot.mouseClick(w.chat_panel.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.chat.child_alive, timeout=30_000)
    assert w.chat_panel.base_output.toPlainText() == "Hel"
    assert w.chat_panel.status.text().startswith("Failed: The chat process ended unexpectedly (SIGKILL")
    assert not w.chat.running and w.chat_panel.send_button.isEnabled() and w.isVisible()


def test_opening_a_plan_keeps_its_values_whatever_the_previous_model(
    make_window, qtbot, tiny_tied, tiny_untied, alpaca_file, tmp_path
):
    w = make_window(plan_dict(tiny_tied, alpaca_file, tmp_path / "run"), detect=False)
    qtbot.waitUntil(lambda: w.preview.summary is not None, timeout=60_000)
    assert w.preview.summary.tied
    # An untied model's plan that trains the embeddings only: the tied model's rule must not apply.
    plan = plan_from_dict(
        plan_dict(
            tiny_untied, alpaca_file, tmp_path / "run2", embeddings={"train_embeddings": True, "train_lm_head": False}
        ),
        check=False,
    )
    w.set_plan(plan)
    e = w.values()["embeddings"]
    assert e["train_embeddings"] is True and e["train_lm_head"] is False and not w.dirty
    qtbot.waitUntil(lambda: w.preview.summary is not None and not w.threads.running(), timeout=60_000)
    assert not w.preview.summary.tied and w.values()["embeddings"]["train_lm_head"] is False


def test_training_child_that_dies_natively_fails_the_run_not_the_window(
    make_window, qtbot, monkeypatch, tiny_untied, alpaca_file, tmp_path
):
    code = (
        "import json, os, signal\n"
        "print(json.dumps({'type': 'log', 'message': 'Loading the model', 'time': 0}), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    monkeypatch.setattr(protocols, "train_args", lambda plan_file, resume_dir: [sys.executable, "-c", code])
    w = make_window(plan_dict(tiny_untied, alpaca_file, tmp_path / "run"), detect=False)
    qtbot.waitUntil(lambda: w.findChild(QPushButton, "startButton").isEnabled(), timeout=60_000)
    qtbot.mouseClick(w.findChild(QPushButton, "startButton"), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=60_000)
    assert w.run_panel.state_label.text() == "Failed"
    assert "Loading the model" in w.run_panel.log_view.toPlainText()
    box = w.findChild(QMessageBox, "errorDialog")
    assert box is not None and box.isVisible()
    assert box.text().startswith("The training process ended unexpectedly (SIGSEGV")
    assert w.isVisible() and w.findChild(QPushButton, "startButton").isEnabled()
