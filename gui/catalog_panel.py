"""The model catalog in the Model tab: a searchable table with fit badges, and the download box.

A view only: ``CatalogController`` gives it the rows (``core.tools.catalog`` entries and badges)
and the download's progress; it emits what the user asked for (use a model, download, pause,
cancel, log in). Each badge cell is coloured by its verdict and its tooltip gives the
``headtune estimate`` command that prints the same figure.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from headtune.core.tools.catalog import SIZE_FILTERS

# The badges go between these: the name and size, then one column per variant, then the facts.
LEAD_COLUMNS = ("Model", "Size")
FACT_COLUMNS = ("Vocabulary", "Tied", "Context", "Licence", "On disk")
FIT_COLOURS = {"fits": "#d4efdf", "tight": "#fdebd0", "no": "#f5b7b1"}
NAME_ROLE = Qt.ItemDataRole.UserRole


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.0f} M"


def _bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class CatalogPanel(QWidget):
    """Search, filters, the table of models with badges, and the download box."""

    filters_changed = Signal()
    model_chosen = Signal(str)
    download_requested = Signal(str)
    pause_requested = Signal()
    cancel_requested = Signal()
    token_entered = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        bar = QHBoxLayout()
        self.search = QLineEdit()
        self.search.setObjectName("catalogSearchEdit")
        self.search.setAccessibleName("Search models")
        self.search.setPlaceholderText("Search: name, family, licence, e.g. qwen3 instruct")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(lambda *_: self.filters_changed.emit())
        bar.addWidget(self.search, 1)
        self.size = QComboBox()
        self.size.setObjectName("catalogSizeCombo")
        self.size.setAccessibleName("Size filter")
        self.size.addItems(list(SIZE_FILTERS))
        self.size.currentIndexChanged.connect(lambda *_: self.filters_changed.emit())
        bar.addWidget(self.size)
        self.fit = QComboBox()
        self.fit.setObjectName("catalogFitCombo")
        self.fit.setAccessibleName("Fit filter")
        self.fit.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.fit.currentIndexChanged.connect(lambda *_: self.filters_changed.emit())
        bar.addWidget(self.fit)
        lay.addLayout(bar)
        self.card = QLabel()
        self.card.setObjectName("catalogCardLabel")
        self.card.setWordWrap(True)
        self.card.setStyleSheet("color: #555;")
        lay.addWidget(self.card)
        self.table = QTableWidget()
        self.table.setObjectName("catalogTable")
        self.table.setAccessibleName("Model catalog")
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.setMinimumHeight(340)
        self.table.itemDoubleClicked.connect(lambda item: self._choose(item.row()))
        self.table.itemSelectionChanged.connect(self._on_selection_changed)
        lay.addWidget(self.table, 1)
        row = QHBoxLayout()
        self.use_button = QPushButton("Use this model")
        self.use_button.setObjectName("catalogUseButton")
        self.use_button.setToolTip("Put the selected model in the plan (double-click a row does the same).")
        self.use_button.clicked.connect(lambda _c=False: self._choose(self.table.currentRow()))
        row.addWidget(self.use_button)
        self.download_button = QPushButton("Download")
        self.download_button.setObjectName("catalogDownloadButton")
        self.download_button.clicked.connect(lambda _c=False: self._download_selected())
        row.addWidget(self.download_button)
        self.count = QLabel()
        self.count.setObjectName("catalogCountLabel")
        row.addStretch(1)
        row.addWidget(self.count)
        lay.addLayout(row)
        lay.addWidget(self._download_box())
        self._names: list[str] = []
        self._downloaded: dict[str, bool] = {}
        self._on_selection_changed()

    def _download_box(self) -> QGroupBox:
        box = QGroupBox("Download")
        box.setObjectName("downloadBox")
        lay = QVBoxLayout(box)
        self.download_status = QLabel("Choose a model that is not on this computer to download it here.")
        self.download_status.setObjectName("downloadStatusLabel")
        self.download_status.setWordWrap(True)
        self.download_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.download_status)
        self.progress = QProgressBar()
        self.progress.setObjectName("downloadProgress")
        self.progress.setRange(0, 1000)
        self.progress.hide()
        lay.addWidget(self.progress)
        self.download_detail = QLabel()
        self.download_detail.setObjectName("downloadDetailLabel")
        self.download_detail.setStyleSheet("color: #555;")
        lay.addWidget(self.download_detail)
        buttons = QHBoxLayout()
        self.offer_button = QPushButton("Download")
        self.offer_button.setObjectName("downloadOfferButton")
        self.offer_button.hide()
        self.offer_button.clicked.connect(lambda _c=False: self.download_requested.emit(self._offered))
        buttons.addWidget(self.offer_button)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setObjectName("downloadPauseButton")
        self.pause_button.setToolTip("Stop now and keep the partial file; Download continues where it stopped.")
        self.pause_button.clicked.connect(lambda _c=False: self.pause_requested.emit())
        buttons.addWidget(self.pause_button)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("downloadCancelButton")
        self.cancel_button.setToolTip("Stop now and delete the partial file.")
        self.cancel_button.clicked.connect(lambda _c=False: self.cancel_requested.emit())
        buttons.addWidget(self.cancel_button)
        self.login_button = QPushButton("Log in…")
        self.login_button.setObjectName("downloadLoginButton")
        self.login_button.setToolTip("Give Headtune a hub access token, for gated models.")
        self.login_button.clicked.connect(lambda _c=False: self.show_token_entry(True))
        buttons.addWidget(self.login_button)
        buttons.addStretch(1)
        lay.addLayout(buttons)
        token_row = QHBoxLayout()
        self.token_edit = QLineEdit()
        self.token_edit.setObjectName("tokenEdit")
        self.token_edit.setAccessibleName("Hub access token")
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("hf_… (a read token from huggingface.co/settings/tokens)")
        self.token_edit.returnPressed.connect(self._save_token)
        token_row.addWidget(self.token_edit, 1)
        self.token_save = QPushButton("Save token")
        self.token_save.setObjectName("tokenSaveButton")
        self.token_save.clicked.connect(lambda _c=False: self._save_token())
        token_row.addWidget(self.token_save)
        self.token_widget = QWidget()
        self.token_widget.setLayout(token_row)
        token_row.setContentsMargins(0, 0, 0, 0)
        self.token_widget.hide()
        lay.addWidget(self.token_widget)
        self.cache_label = QLabel()
        self.cache_label.setObjectName("cacheLocationLabel")
        self.cache_label.setWordWrap(True)
        self.cache_label.setStyleSheet("color: #555;")
        self.cache_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.cache_label)
        self._offered = ""
        self.set_downloading(False)
        return box

    # -- the table -------------------------------------------------------------------------
    def set_fit_filters(self, labels: list[str]) -> None:
        """The fit filter's choices (their labels follow the plan, e.g. the tokens rows)."""
        index = self.fit.currentIndex()
        self.fit.blockSignals(True)
        self.fit.clear()
        self.fit.addItems(labels)
        self.fit.setCurrentIndex(max(0, min(index, len(labels) - 1)))
        self.fit.blockSignals(False)

    def show_rows(self, entries, badges, card: str) -> None:
        """One row per entry; badge columns from ``badges`` (a ``core.tools.catalog.Badges``)."""
        selected = self.selected_name()
        variants = badges.variants if badges is not None else []
        headers = [*LEAD_COLUMNS, *(v.label for v in variants), *FACT_COLUMNS]
        lead, facts_at = len(LEAD_COLUMNS), len(LEAD_COLUMNS) + len(variants)
        self.card.setText(card)
        self.table.setSortingEnabled(False)
        self.table.clear()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(len(entries))
        self._names = [e.name for e in entries]
        self._downloaded = {e.name: e.downloaded for e in entries}
        for r, e in enumerate(entries):
            s = e.shape
            gated = " (gated)" if e.gated else ""
            cells = [
                e.name,
                _size(e.params) if s else "?",
                f"{s.vocab:,}" if s else "?",
                ("tied" if s.tied else "untied") if s else "?",
                f"{s.max_positions:,}" if s and s.max_positions else "",
                (e.licence + gated) if e.licence else "",
                "yes" if e.downloaded else "no",
            ]
            columns = [0, 1, *range(facts_at, facts_at + len(FACT_COLUMNS))]
            for c, text in zip(columns, cells):
                item = QTableWidgetItem(text)
                item.setData(NAME_ROLE, e.name)
                self.table.setItem(r, c, item)
            first = self.table.item(r, 0)
            where = {"catalog": "Headtune's catalog", "cache": "the Hugging Face cache", "recent": "recently used"}
            first.setToolTip(
                f"{e.name}: {e.family} {e.variant}, from {where.get(e.origin, e.origin)}."
                + (f" About {_bytes(e.download_bytes)} to download in 16-bit." if s and not e.downloaded else "")
                + (f" {e.problem}" if e.problem else "")
            )
            for c, b in enumerate(badges.rows.get(e.name, []) if badges is not None else [], lead):
                item = QTableWidgetItem(b.text())
                item.setData(NAME_ROLE, e.name)
                if b.fit in FIT_COLOURS:
                    item.setBackground(QBrush(QColor(FIT_COLOURS[b.fit])))
                    item.setForeground(QBrush(QColor("#1b2631")))
                card_arg = f" --gpu-memory {badges.capacity_bytes / 2**30:g}GiB" if badges.capacity_bytes else ""
                sets = " ".join(f"--set {o}" for o in [f"model.name_or_path={e.name}", *b.overrides])
                item.setToolTip(
                    f"{b.variant.label} with this plan on {card or 'this card'}: {b.text()}.\n"
                    f"The same estimate: headtune estimate PLAN --worst-case --device {badges.device}{card_arg} {sets}"
                )
                self.table.setItem(r, c, item)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)  # long names: the badges come first
        self.table.setColumnWidth(0, 210)
        self.table.setTextElideMode(Qt.TextElideMode.ElideLeft)  # the owner goes first, the name stays
        self.count.setText(f"{len(entries)} models")
        if selected in self._names:
            self.table.selectRow(self._names.index(selected))
        self._on_selection_changed()

    def badge_texts(self, name: str) -> list[str]:
        """The badges shown on ``name``'s row."""
        row = self._names.index(name)
        n = self.table.columnCount() - len(LEAD_COLUMNS) - len(FACT_COLUMNS)
        return [self.table.item(row, c).text() for c in range(len(LEAD_COLUMNS), len(LEAD_COLUMNS) + n)]

    def selected_name(self) -> str | None:
        row = self.table.currentRow()
        return self._names[row] if 0 <= row < len(self._names) and self.table.selectedItems() else None

    def select(self, name: str) -> bool:
        if name in self._names:
            self.table.selectRow(self._names.index(name))
            return True
        return False

    def _choose(self, row: int) -> None:
        if 0 <= row < len(self._names):
            self.model_chosen.emit(self._names[row])

    def _download_selected(self) -> None:
        name = self.selected_name()
        if name:
            self.download_requested.emit(name)

    def _on_selection_changed(self) -> None:
        name = self.selected_name()
        self.use_button.setEnabled(name is not None)
        can = name is not None and not self._downloaded.get(name, True) and not self._busy
        self.download_button.setEnabled(can)

    # -- the download box ------------------------------------------------------------------
    _busy = False

    def set_downloading(self, busy: bool) -> None:
        self._busy = busy
        self.pause_button.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self.progress.setVisible(busy or self.progress.value() > 0)
        if busy:
            self.offer_button.hide()
        if hasattr(self, "table"):
            self._on_selection_changed()

    def offer_download(self, name: str | None, size_bytes: int = 0) -> None:
        """Say that the plan's model is not downloaded yet, with a Download button (None: hide)."""
        self._offered = name or ""
        if self._busy:
            return
        if not name:
            self.offer_button.hide()
            return
        about = f" (about {_bytes(size_bytes)})" if size_bytes else ""
        self.download_status.setText(
            f"{name} is not on this computer yet{about}. Download it here before training: you can watch it, "
            "pause it and continue later."
        )
        self.download_status.setStyleSheet("")
        self.offer_button.setText(f"Download {name}")
        self.offer_button.show()

    def show_cache(self, path: str, free_bytes: int | None) -> None:
        free = f" ({_bytes(free_bytes)} free)" if free_bytes is not None else ""
        self.cache_label.setText(f"Hugging Face cache: {path}{free}")

    def show_download_started(self, repo_id: str, total: int, files: int, cache_dir: str) -> None:
        self.download_status.setStyleSheet("")
        self.download_status.setText(f"Downloading {repo_id}: {files} files, {_bytes(total)}, into {cache_dir}")
        self.progress.setValue(0)
        self.progress.show()

    def show_download_progress(self, p) -> None:
        self.progress.setValue(int(1000 * p.bytes / p.total) if p.total else 0)
        self.download_detail.setText(
            f"{_bytes(p.bytes)} of {_bytes(p.total)} · {p.speed / 1e6:.1f} MB/s · {_eta(p.eta_s)} left · "
            f"file {min(p.files_done + 1, p.files_total)} of {p.files_total}: {p.file} "
            f"({_bytes(p.file_bytes)} of {_bytes(p.file_total)})"
        )

    def show_download_message(self, text: str, error: bool = False) -> None:
        self.download_status.setText(text)
        self.download_status.setStyleSheet("color: #c0392b;" if error else "")

    def show_token_entry(self, visible: bool) -> None:
        self.token_widget.setVisible(visible)
        if visible:
            self.token_edit.setFocus()

    def _save_token(self) -> None:
        token = self.token_edit.text().strip()
        if token:
            self.token_entered.emit(token)
