"""The plan file: new, open, save, save as, and whether there are unsaved changes.

The window's title follows the file name and the unsaved mark (``title_changed``). Opening a
plan goes through ``PlanModel.load``, so everything that follows the plan hears about it.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtWidgets import QFileDialog, QMessageBox

from headtune.core.errors import HeadtuneError
from headtune.core.plan import Plan, load_plan

from ..plan_model import PlanModel

PLAN_FILTER = "Headtune plans (*.yaml *.yml);;All files (*)"


class PlanFileController(QObject):
    """Owns the plan's file path and its last saved state."""

    title_changed = Signal(str)

    def __init__(self, model: PlanModel, host):
        super().__init__(host)
        self._model = model
        self._host = host  # the window: dialogs, messages, settings
        self.path: Path | None = None
        self._saved: dict = {}
        model.changed.connect(self._on_model_changed)
        model.replaced.connect(self._on_model_replaced)

    @property
    def dirty(self) -> bool:
        return self._model.values() != self._saved

    def set_plan(self, plan: Plan, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else None
        self._model.load(plan)

    def mark_saved(self) -> None:
        self._saved = self._model.values()
        self._emit_title()

    @Slot(str)
    def _on_model_changed(self, _key: str) -> None:
        self._emit_title()

    @Slot()
    def _on_model_replaced(self) -> None:
        self.mark_saved()

    def _emit_title(self) -> None:
        name = self.path.name if self.path else "untitled plan"
        self.title_changed.emit(f"{name}{' *' if self._saved and self.dirty else ''} — Headtune")

    def start_dir(self, key: str) -> str:
        return self._host.settings.value(f"dirs/{key}", str(Path.cwd()), str)

    # -- the File menu ---------------------------------------------------------------------
    def confirm_discard(self) -> bool:
        """True when there are no unsaved changes, or the user saved or discarded them."""
        if not self.dirty:
            return True
        answer = self._host.ask(
            "Unsaved plan",
            "The plan has changes that are not saved. Save them first?",
            QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Save,
        )
        if answer == QMessageBox.StandardButton.Save:
            return self.save_plan()
        return answer == QMessageBox.StandardButton.Discard

    def new_plan(self) -> None:
        if self.confirm_discard():
            self.set_plan(Plan())

    def open_plan(self, path: str | None = None) -> bool:
        if not path:
            if not self.confirm_discard():
                return False
            path, _ = QFileDialog.getOpenFileName(self._host, "Open a plan", self.start_dir("plan"), PLAN_FILTER)
            if not path:
                return False
        try:
            plan = load_plan(path, check=False)
        except HeadtuneError as exc:
            self._host.show_error("Cannot open the plan", str(exc))
            return False
        self._host.settings.setValue("dirs/plan", str(Path(path).parent))
        self.set_plan(plan, path)
        return True

    def save_plan(self) -> bool:
        if self.path is None:
            return self.save_plan_as()
        return self._write(self.path)

    def save_plan_as(self, path: str | None = None) -> bool:
        if not path:
            path, _ = QFileDialog.getSaveFileName(self._host, "Save the plan", self.start_dir("plan"), PLAN_FILTER)
            if not path:
                return False
            if not path.endswith((".yaml", ".yml")):
                path += ".yaml"
        return self._write(Path(path))

    def _write(self, path: Path) -> bool:
        try:
            self._model.plan(check=False).save(path)
        except (HeadtuneError, OSError) as exc:
            self._host.show_error("Cannot save the plan", f"{path}: {exc}")
            return False
        self.path = path
        self._host.settings.setValue("dirs/plan", str(path.parent))
        self.mark_saved()
        self._host.show_status(f"Plan saved to {path}", 5000)
        return True
