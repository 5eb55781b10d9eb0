"""The Memory panel: the estimate as a stacked bar against the target's capacity, the verdict,
and the advisor's fixes, each applicable with one click.

The estimate itself is ``headtune.core.estimate.estimate`` (a pure function taking well under a
millisecond), so the window recomputes it on every change on the UI thread.
"""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from headtune.core.estimate import CATEGORIES, COMMON_GPUS_GIB, GiB

CATEGORY_LABELS = {
    "weights_frozen": "Frozen weights",
    "weights_trainable": "Trainable weights",
    "gradients": "Gradients",
    "optimizer_states": "Optimizer states",
    "activations": "Activations",
    "logits_loss": "Logits and loss",
    "transient": "Temporary buffers",
    "overhead": "CUDA context and allocator",
}
CATEGORY_COLORS = {
    "weights_frozen": "#6c7a89",
    "weights_trainable": "#2e86de",
    "gradients": "#10ac84",
    "optimizer_states": "#f39c12",
    "activations": "#8e44ad",
    "logits_loss": "#e74c3c",
    "transient": "#95a5a6",
    "overhead": "#34495e",
}
VERDICTS = {
    "fits": ("Fits", "#1e8449"),
    "tight": ("Tight: under 10% to spare", "#b9770e"),
    "no": ("Does not fit", "#c0392b"),
}
RAM_TARGET = "ram"


def fmt_gib(n: float) -> str:
    """Bytes as GiB with enough digits to be non-zero for tiny test models."""
    g = n / GiB
    return f"{g:.1f}" if g >= 10 else f"{g:.2f}" if g >= 0.1 or g == 0 else f"{g:.4f}"


def segments_of(est) -> list[tuple[str, int]]:
    """(category, bytes) in drawing order, zero-sized ones left out; CUDA overhead last."""
    out = [(c, int(est.breakdown.get(c, 0))) for c in CATEGORIES if est.breakdown.get(c, 0) > 0]
    if est.overhead_bytes > 0:
        out.append(("overhead", int(est.overhead_bytes)))
    return out


def data_fit_text(est, rows: int = 0) -> str:
    """The data's figure beside the worst case, and the long examples that set the peak."""
    d = est.data
    if d is None:
        return "<span style='color:gray'>Every batch counted at max_seq_len (worst case) until the data is read.</span>"
    if d.packed:
        return "Packed data: sequences are up to max_seq_len, so this is also the worst case."
    of = f" (the first {d.examples:,} of {rows:,} examples)" if rows > d.examples else ""
    text = (
        f"Longest batch in this data{of}: {d.seq_len:,} tokens a row. Worst case at max_seq_len "
        f"{d.max_seq_len:,}: {fmt_gib(d.worst_case_bytes)} GiB."
    )
    if d.cut_at is not None and d.cut_bytes is not None:
        text += (
            f" <b>{d.cut_examples} of {d.examples:,} examples are longer than {d.cut_at:,} tokens and set the "
            f"peak</b>: max_seq_len {d.cut_at:,} would give {fmt_gib(d.cut_bytes)} GiB (cutting them)."
        )
    return text


class MemoryBar(QWidget):
    """A horizontal stacked bar of the estimate's categories, with the capacity as a line."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.segments: list[tuple[str, int]] = []
        self.capacity: int | None = None
        self.setMinimumHeight(30)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(400, 30)

    def set_data(self, segments: list[tuple[str, int]], capacity: int | None) -> None:
        self.segments, self.capacity = segments, capacity
        total = sum(b for _, b in segments)
        parts = ", ".join(f"{CATEGORY_LABELS[c]} {fmt_gib(b)} GiB" for c, b in segments)
        self.setToolTip(parts)
        self.setAccessibleDescription(f"Estimated {fmt_gib(total)} GiB: {parts}")
        self.update()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(1, 4, -1, -4)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(self.palette().alternateBase())
        p.drawRoundedRect(rect, 3, 3)
        total = sum(b for _, b in self.segments)
        scale_max = max(total, self.capacity or 0) * 1.04 or 1
        x = rect.left()
        for cat, b in self.segments:
            w = rect.width() * b / scale_max
            p.setBrush(QColor(CATEGORY_COLORS[cat]))
            p.drawRect(QRectF(x, rect.top(), w, rect.height()))
            x += w
        if self.capacity:
            cx = rect.left() + rect.width() * self.capacity / scale_max
            p.setPen(QPen(self.palette().text().color(), 2, Qt.PenStyle.DashLine))
            p.drawLine(int(cx), int(rect.top() - 3), int(cx), int(rect.bottom() + 3))
        p.end()


class MemoryPanel(QWidget):
    """Estimate, target, bar, legend, verdict and advice. ``advice_applied`` carries the plan
    keys to set; ``target_changed`` fires when the user picks another capacity."""

    advice_applied = Signal(dict)
    target_changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._ram = 0
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.estimate_label = QLabel("Estimated peak memory: choose a model")
        self.estimate_label.setObjectName("vramEstimateLabel")
        self.estimate_label.setAccessibleName("Estimated peak memory")
        self.estimate_label.setTextFormat(Qt.TextFormat.RichText)
        top.addWidget(self.estimate_label, 1)
        top.addWidget(QLabel("Target:"))
        self.target_combo = QComboBox()
        self.target_combo.setObjectName("capacityCombo")
        self.target_combo.setAccessibleName("Memory target")
        self.target_combo.setToolTip(
            "The memory the run must fit in: your GPU, a common GPU size, or this "
            "computer's RAM when training on the CPU."
        )
        top.addWidget(self.target_combo)
        lay.addLayout(top)
        self.bar = MemoryBar()
        self.bar.setObjectName("vramBar")
        self.bar.setAccessibleName("Memory breakdown")
        lay.addWidget(self.bar)
        self.legend = QLabel()
        self.legend.setObjectName("vramLegend")
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.legend)
        self.data_note = QLabel()
        self.data_note.setObjectName("dataFitLabel")
        self.data_note.setWordWrap(True)
        self.data_note.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.data_note)
        self.defaults_note = QLabel()
        self.defaults_note.setObjectName("savedByDefaultsLabel")
        self.defaults_note.setWordWrap(True)
        self.defaults_note.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.defaults_note)
        self.verdict = QLabel()
        self.verdict.setObjectName("fitVerdictLabel")
        self.verdict.setTextFormat(Qt.TextFormat.RichText)
        self.verdict.setWordWrap(True)
        lay.addWidget(self.verdict)
        self.advice_box = QWidget()
        self.advice_box.setObjectName("adviceList")
        self.advice_layout = QVBoxLayout(self.advice_box)
        self.advice_layout.setContentsMargins(0, 0, 0, 0)
        self.advice_layout.setSpacing(2)
        lay.addWidget(self.advice_box)
        self.set_targets(None, 0)
        self.target_combo.currentIndexChanged.connect(lambda *_: self.target_changed.emit())

    # -- targets -------------------------------------------------------------------------
    def set_targets(self, gpu: tuple[int, str] | None, ram_bytes: int, preferred: str | None = None) -> None:
        """Fill the target list: the detected GPU (if any), common sizes, and this computer's RAM."""
        current = preferred or self.target_combo.currentData()
        self._ram = ram_bytes
        self.target_combo.blockSignals(True)
        self.target_combo.clear()
        if gpu is not None:
            self.target_combo.addItem(f"This GPU: {gpu[1]}", f"gpu:{gpu[0]}")
        for g in COMMON_GPUS_GIB + (48, 80):
            self.target_combo.addItem(f"{g} GiB GPU", f"gpu:{g * GiB}")
        ram_text = (
            f"This computer's RAM ({ram_bytes / GiB:.1f} GiB), CPU training"
            if ram_bytes
            else "This computer's RAM, CPU training"
        )
        self.target_combo.addItem(ram_text, RAM_TARGET)
        i = self.target_combo.findData(current) if current else -1
        if i < 0:
            i = 0 if gpu is not None else self.target_combo.findData(RAM_TARGET)
        self.target_combo.setCurrentIndex(i)
        self.target_combo.blockSignals(False)

    def target(self) -> tuple[str, int, str]:
        """(device for the estimate, capacity in bytes, description)."""
        data = self.target_combo.currentData() or RAM_TARGET
        if data == RAM_TARGET:
            return "cpu", self._ram, "this computer's RAM"
        return "cuda", int(data.split(":", 1)[1]), self.target_combo.currentText().removeprefix("This GPU: ")

    def target_key(self) -> str:
        return self.target_combo.currentData() or RAM_TARGET

    # -- showing an estimate -------------------------------------------------------------
    def show_message(self, text: str) -> None:
        self.estimate_label.setText(text)
        self.bar.set_data([], None)
        self.legend.clear()
        self.data_note.clear()
        self.defaults_note.clear()
        self.verdict.clear()
        self._set_advice([], 0)

    def show_estimate(self, est, note: str = "", rows: int = 0) -> None:
        """Show ``est``; ``rows`` is how many examples the data has (its lengths may cover fewer)."""
        _, capacity, where = self.target()
        total = est.total_bytes
        self.estimate_label.setText(
            f"Estimated peak{' for this data' if est.data is not None else ''}: <b>{fmt_gib(total)} GiB</b> "
            f"of {capacity / GiB:.1f} GiB ({where})" + (f" <span style='color:gray'>{note}</span>" if note else "")
        )
        self.data_note.setText(data_fit_text(est, rows))
        self.defaults_note.setText(
            "<span style='color:gray'>Saved by the memory defaults: "
            + ", ".join(f"{x['label']} {fmt_gib(x['bytes'])} GiB" for x in est.saved_by_defaults)
            + "</span>"
            if est.saved_by_defaults
            else ""
        )
        segs = segments_of(est)
        self.bar.set_data(segs, capacity)
        self.legend.setText(
            "&nbsp;&nbsp; ".join(
                f"<span style='color:{CATEGORY_COLORS[c]}'>■</span> {CATEGORY_LABELS[c]} {fmt_gib(b)}" for c, b in segs
            )
            + " GiB"
            + (
                f"&nbsp;&nbsp; (+ {est.paged_optimizer_states_bytes / GiB:.2f} GiB paged optimizer states in "
                "CPU memory)"
                if est.paged_optimizer_states_bytes
                else ""
            )
        )
        text, color = VERDICTS.get(est.fit or "fits", VERDICTS["fits"])
        self.verdict.setText(
            f"<b style='color:{color}'>{text}</b>"
            + (" Changes that would make it fit:" if est.fit == "no" and est.advice else "")
        )
        self._set_advice(est.advice if est.fit != "fits" else [], capacity)

    def _set_advice(self, advice, capacity: int) -> None:
        while self.advice_layout.count():
            item = self.advice_layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        for i, adv in enumerate(advice[:4]):
            row = QWidget()
            h = QHBoxLayout(row)
            h.setContentsMargins(0, 0, 0, 0)
            change = ", ".join(f"{k.split('.')[-1]} = {v}" for k, v in adv.set.items())
            ok = "fits" if adv.total_bytes <= capacity else "still too big"
            label = QLabel(f"{adv.why} ({change}): {fmt_gib(adv.total_bytes)} GiB, {ok}")
            label.setWordWrap(True)
            button = QPushButton("Apply")
            button.setObjectName(f"applyAdvice{i}")
            button.setAccessibleName(f"Apply: {adv.why}")
            button.clicked.connect(lambda _=False, s=dict(adv.set): self.advice_applied.emit(s))
            h.addWidget(label, 1)
            h.addWidget(button)
            self.advice_layout.addWidget(row)
