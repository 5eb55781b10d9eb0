"""Widgets bound to plan keys: each shows one dotted key, reports edits, and carries its help.

A ``PlanFields`` collection is what the window edits: ``values()`` gives the plan as a nested
mapping (what ``plan_from_dict`` reads), ``set_values`` fills every widget from one,
``changed`` fires on any user edit (``plan_model.PlanModel`` turns it into the plan's own
``changed``), and ``highlight`` marks the widget a plan error is about. Tooltips are the plan's
help text, so the window and ``headtune train --help`` say the same thing. Combo boxes show
readable labels and keep the plan's value as item data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QDoubleValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
    QWidget,
)

from headtune.core.embeddings import MODES
from headtune.core.plan import TARGET_PRESETS, choices_for, help_for, range_for

# Readable labels for the plan's enumerated values.
LABELS: dict[str, dict[str, str]] = {
    "model.quantization": {"none": "None (16/32-bit weights)", "8bit": "8-bit (LLM.int8)", "4bit": "4-bit NF4 (QLoRA)"},
    "model.dtype": {"bfloat16": "bfloat16", "float16": "float16 (GPU only)", "float32": "float32"},
    "model.attn_implementation": {"sdpa": "SDPA (PyTorch)", "eager": "Eager", "flash_attention_2": "FlashAttention 2"},
    "data.format": {
        "auto": "Detect automatically",
        "alpaca": "Alpaca (instruction/output)",
        "messages": "Messages (role/content)",
        "sharegpt": "ShareGPT (from/value)",
        "text": "Raw text (all tokens trained)",
        "preference": "Preference pairs (prompt/chosen/rejected)",
    },
    "data.batching": {
        "padding_free": "Padding-free (rows end to end)",
        "grouped": "Grouped by length (padded)",
        "padded": "Padded",
    },
    "embeddings.mode": {name: mode.label for name, mode in MODES.items()},
    "embeddings.init_untrained": {"none": "Leave as they are", "mean": "Set to the mean row before training"},
    "embeddings.new_token_init": {
        "pieces": "Mean of the rows of their pieces",
        "mean": "Mean of all rows",
    },
    "training.lr_scheduler": {
        "linear": "Linear decay",
        "cosine": "Cosine",
        "constant": "Constant",
        "constant_with_warmup": "Constant after warm-up",
    },
    "training.method": {
        "sft": "Supervised (SFT)",
        "dpo": "Preference: DPO (chosen vs rejected)",
        "orpo": "Preference: ORPO (no reference)",
    },
    "training.optimizer": {
        "adamw": "AdamW (32-bit states)",
        "adamw_8bit": "AdamW 8-bit",
        "paged_adamw_8bit": "Paged AdamW 8-bit (GPU)",
    },
    "training.sharding": {
        "none": "None (each device holds the model)",
        "fsdp": "FSDP (the model split over the devices)",
    },
}
HIGHLIGHT_STYLE = "border: 2px solid #c0392b; border-radius: 3px;"
TEMPLATE_LABELS = {"model": "The model's own", "chatml": "ChatML", "llama3": "Llama 3"}
TARGET_LABELS = {"attention": "Attention", "attention+mlp": "Attention + MLP", "all-linear": "All linear layers"}


def schema_bounds(key: str, lo: float | None, hi: float | None, resolution: float) -> tuple[float, float]:
    """A widget's limits for ``key``: the plan schema's range where it states one (an open bound
    moved in by the widget's ``resolution``), else ``lo``/``hi``."""
    rng = range_for(key) or {}
    if rng.get("ge") is not None:
        lo = rng["ge"]
    elif rng.get("gt") is not None:
        lo = rng["gt"] + resolution
    if rng.get("le") is not None:
        hi = rng["le"]
    elif rng.get("lt") is not None:
        hi = rng["lt"] - resolution
    if lo is None or hi is None:
        raise ValueError(f"{key}: the schema states no {'lower' if lo is None else 'upper'} limit; give one")
    return lo, hi


class Field:
    """One widget showing one plan key."""

    def __init__(self, key: str, widget: QWidget, get: Callable[[], Any], set: Callable[[Any], None], signal) -> None:
        self.key, self.widget, self.get, self._set, self.signal = key, widget, get, set, signal

    def set(self, value: Any) -> None:
        self.widget.blockSignals(True)
        try:
            self._set(value)
        finally:
            self.widget.blockSignals(False)


def _name(widget: QWidget, key: str, object_name: str | None, accessible: str | None) -> None:
    widget.setObjectName(object_name or key.replace(".", "_"))
    widget.setAccessibleName(accessible or key.split(".")[-1].replace("_", " ").capitalize())
    text = help_for(key)
    widget.setToolTip(text)
    widget.setAccessibleDescription(text)


def _combo_find(combo: QComboBox, value: Any) -> int:
    for i in range(combo.count()):
        if combo.itemData(i) == value:
            return i
    return -1


class PlanFields(QObject):
    """The set of bound widgets; emits ``changed(key)`` when the user edits one."""

    changed = Signal(str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.fields: dict[str, Field] = {}
        self.highlighted: str | None = None

    def highlight(self, key: str | None, message: str = "") -> None:
        """Mark the widget of ``key`` as the one the plan's problem is about (None: no mark)."""
        if self.highlighted == key:
            return
        old = self.fields.get(self.highlighted) if self.highlighted else None
        if old is not None:
            old.widget.setProperty("planError", False)
            old.widget.setStyleSheet("")
            old.widget.setToolTip(help_for(old.key))
        self.highlighted = key if key in self.fields else None
        new = self.fields.get(self.highlighted) if self.highlighted else None
        if new is not None:
            new.widget.setProperty("planError", True)
            new.widget.setStyleSheet(HIGHLIGHT_STYLE)
            new.widget.setToolTip(f"{message}\n\n{help_for(key)}" if message else help_for(key))

    def __getitem__(self, key: str) -> QWidget:
        return self.fields[key].widget

    def _add(self, f: Field) -> QWidget:
        self.fields[f.key] = f
        f.signal.connect(lambda *_: self.changed.emit(f.key))
        return f.widget

    # -- factories -----------------------------------------------------------------------
    def line(
        self, key: str, object_name: str | None = None, accessible: str | None = None, placeholder: str = ""
    ) -> QLineEdit:
        w = QLineEdit()
        w.setPlaceholderText(placeholder)
        _name(w, key, object_name, accessible)
        return self._add(Field(key, w, w.text, lambda v: w.setText("" if v is None else str(v)), w.textChanged))

    def check(self, key: str, text: str, object_name: str | None = None) -> QCheckBox:
        w = QCheckBox(text)
        _name(w, key, object_name, text)
        return self._add(Field(key, w, w.isChecked, lambda v: w.setChecked(bool(v)), w.toggled))

    def spin(
        self,
        key: str,
        lo: int | None,
        hi: int | None,
        object_name: str | None = None,
        accessible: str | None = None,
        step: int = 1,
        special: str = "",
    ) -> QSpinBox:
        """``lo``/``hi``: the limits where the plan's schema states none (it wins where it does)."""
        w = QSpinBox()
        low, high = schema_bounds(key, lo, hi, 1)
        w.setRange(int(low), int(high))
        w.setSingleStep(step)
        w.setAccelerated(True)
        if special:
            w.setSpecialValueText(special)
        _name(w, key, object_name, accessible)
        return self._add(Field(key, w, w.value, lambda v: w.setValue(int(v)), w.valueChanged))

    def dspin(
        self,
        key: str,
        lo: float | None,
        hi: float | None,
        decimals: int,
        step: float,
        object_name: str | None = None,
        accessible: str | None = None,
    ) -> QDoubleSpinBox:
        """``lo``/``hi``: the limits where the plan's schema states none (it wins where it does)."""
        w = QDoubleSpinBox()
        w.setRange(*schema_bounds(key, lo, hi, 10**-decimals))
        w.setDecimals(decimals)
        w.setSingleStep(step)
        _name(w, key, object_name, accessible)
        return self._add(Field(key, w, w.value, lambda v: w.setValue(float(v)), w.valueChanged))

    def number(
        self, key: str, object_name: str | None = None, accessible: str | None = None, optional: bool = False
    ) -> QLineEdit:
        """A float typed as text (learning rates read best as 2e-4); empty means None if optional."""
        w = QLineEdit()
        v = QDoubleValidator(0.0, 1e6, 12, w)
        v.setNotation(QDoubleValidator.Notation.ScientificNotation)
        w.setValidator(v)
        if optional:
            w.setPlaceholderText("same as training")
        _name(w, key, object_name, accessible)

        def get():
            text = w.text().strip()
            if not text:
                return None if optional else 0.0
            try:
                return float(text)
            except ValueError:
                return text  # the plan's validation names the key

        return self._add(Field(key, w, get, lambda x: w.setText("" if x is None else f"{x:g}"), w.textChanged))

    def combo(
        self,
        key: str,
        object_name: str | None = None,
        accessible: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> QComboBox:
        w = QComboBox()
        labels = labels or LABELS.get(key, {})
        for value in choices_for(key) or ():
            w.addItem(labels.get(value, value), value)
        _name(w, key, object_name, accessible)

        def set_(v):
            i = _combo_find(w, v)
            w.setCurrentIndex(max(0, i))

        return self._add(Field(key, w, w.currentData, set_, w.currentIndexChanged))

    def editable_combo(
        self,
        key: str,
        labels: dict[str, str],
        object_name: str | None = None,
        accessible: str | None = None,
        parse: Callable[[str], Any] = str.strip,
        show: Callable[[Any], str] = str,
    ) -> QComboBox:
        """Presets with readable labels, or free text (a file path, a list of module names)."""
        w = QComboBox()
        w.setEditable(True)
        w.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        for value, label in labels.items():
            w.addItem(label, value)
        _name(w, key, object_name, accessible)

        def get():
            text = w.currentText()
            i = w.findText(text)
            return w.itemData(i) if i >= 0 else parse(text)

        def set_(v):
            i = _combo_find(w, v)
            if i >= 0:
                w.setCurrentIndex(i)
            else:
                w.setEditText(show(v))

        return self._add(Field(key, w, get, set_, w.currentTextChanged))

    def token_list(
        self, key: str, ints: bool, object_name: str | None = None, accessible: str | None = None, placeholder: str = ""
    ) -> QLineEdit:
        """A comma-separated list (token strings, or token ids)."""
        w = QLineEdit()
        w.setPlaceholderText(placeholder)
        _name(w, key, object_name, accessible)

        def get():
            items = [x.strip() for x in w.text().split(",") if x.strip()]
            if not ints:
                return items
            try:
                return [int(x) for x in items]
            except ValueError:
                return items  # validation names the key

        return self._add(Field(key, w, get, lambda v: w.setText(", ".join(str(x) for x in v or [])), w.textChanged))

    def word_list(self, key: str, object_name: str | None = None, accessible: str | None = None) -> QListWidget:
        """Strings to tick or untick (e.g. proposed new tokens): the value is the ticked ones.
        Unticked entries stay listed so they can be ticked again; a space shows as ``␣``."""
        w = QListWidget()
        _name(w, key, object_name, accessible)

        def items() -> list[QListWidgetItem]:
            return [w.item(i) for i in range(w.count())]

        def get():
            return [it.data(Qt.ItemDataRole.UserRole) for it in items() if it.checkState() == Qt.CheckState.Checked]

        def put(value) -> None:
            wanted = [str(x) for x in value or []]
            listed = {it.data(Qt.ItemDataRole.UserRole): it for it in items()}
            for text, it in listed.items():
                it.setCheckState(Qt.CheckState.Checked if text in wanted else Qt.CheckState.Unchecked)
            for text in wanted:
                if text not in listed:
                    add_word(w, text, "")

        return self._add(Field(key, w, get, put, w.itemChanged))

    # -- whole plan ----------------------------------------------------------------------
    def values(self, base: dict | None = None) -> dict:
        """The plan mapping: ``base`` (keys without widgets) updated from every widget."""
        import copy

        out = copy.deepcopy(base or {})
        for key, f in self.fields.items():
            section, leaf = key.split(".")
            out.setdefault(section, {})[leaf] = f.get()
        return out

    def set_values(self, data: dict) -> None:
        for key, f in self.fields.items():
            section, leaf = key.split(".")
            if section in data and leaf in data[section]:
                f.set(data[section][leaf])


def add_word(w: QListWidget, text: str, tip: str, checked: bool = True) -> QListWidgetItem:
    """One entry of a ``word_list``: shown with visible spaces, the text kept as item data."""
    it = QListWidgetItem(text.replace(" ", "␣"))
    it.setData(Qt.ItemDataRole.UserRole, text)
    it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
    it.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
    if tip:
        it.setToolTip(tip)
    w.addItem(it)
    return it


def parse_targets(text: str):
    """The target-modules field: a preset name, or a comma-separated list of module names."""
    text = text.strip()
    if text in TARGET_PRESETS:
        return text
    return [x.strip() for x in text.split(",") if x.strip()]


def show_targets(value) -> str:
    return value if isinstance(value, str) else ", ".join(value)
