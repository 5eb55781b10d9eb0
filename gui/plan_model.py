"""The plan being edited, as one object every part of the window reads and changes.

``PlanModel`` holds the plan mapping (what ``plan_from_dict`` reads). A widget edit and a
change made in code (advice applied, a plan opened, a fix from the Token health tab) take the
same path: the value is stored, the bound widget shows it, and ``changed(key)`` is emitted, so
nothing has to be re-triggered by hand. Opening a plan also emits ``replaced`` once, after the
per-key changes. ``field_for_error`` maps a ``PlanError``'s dotted key to the widget that edits
it, which the view highlights.
"""

from __future__ import annotations

import copy
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QWidget

from headtune.core.errors import PlanError
from headtune.core.plan import Plan, plan_from_dict

from .fields import PlanFields


class PlanModel(QObject):
    """The edited plan; ``changed(key)`` for every change, ``replaced()`` after a whole new plan."""

    changed = Signal(str)
    replaced = Signal()

    def __init__(self, fields: PlanFields, parent: QObject | None = None):
        super().__init__(parent)
        self.fields = fields
        self.loading = False  # True while a whole plan is being shown (its keys belong together)
        self._data: dict = self._show(Plan().to_dict())  # the defaults, heard by nobody yet
        fields.changed.connect(self._on_fields_changed)

    # -- reading ---------------------------------------------------------------------------
    def values(self) -> dict:
        """A copy of the whole plan mapping."""
        return copy.deepcopy(self._data)

    def value(self, key: str) -> Any:
        section, leaf = key.split(".")
        return copy.deepcopy(self._data.get(section, {}).get(leaf))

    def plan(self, check: bool) -> Plan:
        return plan_from_dict(self.values(), check=check)

    # -- changing --------------------------------------------------------------------------
    def set(self, key: str, value: Any) -> None:
        """Set one key from code: the widget shows it and ``changed(key)`` fires if it differs."""
        field = self.fields.fields.get(key)
        if field is not None:
            field.set(value)
            value = field.get()  # as the widget holds it (clamped, parsed), exactly what an edit gives
        self._store(key, value)

    def update(self, change: dict[str, Any]) -> None:
        for key, value in change.items():
            self.set(key, value)

    def load(self, plan: Plan) -> None:
        """Show a whole plan (opened, new, or resumed): per-key ``changed``, then ``replaced``."""
        old, self._data = self._data, self._show(plan.to_dict())
        self.loading = True
        try:
            for key in self._keys(old, self._data):
                self.changed.emit(key)
        finally:
            self.loading = False
        self.replaced.emit()

    def _show(self, data: dict) -> dict:
        """Fill the widgets from ``data``; returns it as they hold it (clamped, parsed)."""
        self.fields.set_values(data)
        for key, field in self.fields.fields.items():
            section, leaf = key.split(".")
            data.setdefault(section, {})[leaf] = field.get()
        return data

    def _on_fields_changed(self, key: str) -> None:
        self._store(key, self.fields.fields[key].get())

    def _store(self, key: str, value: Any) -> None:
        section, leaf = key.split(".")
        if self._data.get(section, {}).get(leaf, object()) == value:
            return
        self._data.setdefault(section, {})[leaf] = copy.deepcopy(value)
        self.changed.emit(key)

    @staticmethod
    def _keys(a: dict, b: dict) -> list[str]:
        """Dotted keys whose values differ between two plan mappings."""
        out = []
        for section in sorted(set(a) | set(b)):
            sa, sb = a.get(section), b.get(section)
            if isinstance(sa, dict) and isinstance(sb, dict):
                out += [f"{section}.{k}" for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
        return out

    # -- errors ----------------------------------------------------------------------------
    def mark_error(self, error: PlanError | None) -> None:
        """Have the view highlight the field ``error`` names (None, or a key without a field: none)."""
        key = error.key if error is not None and self.field_for_error(error) is not None else None
        self.fields.highlight(key, str(error) if key else "")

    def field_for_error(self, error: PlanError | str | None) -> QWidget | None:
        """The widget editing the key a plan error names (or the key itself), if one does."""
        key = error.key if isinstance(error, PlanError) else error
        if not key:
            return None
        field = self.fields.fields.get(key)
        return field.widget if field is not None else None
