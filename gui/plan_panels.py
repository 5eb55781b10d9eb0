"""The panels that edit the plan: Model, Data and Training options.

Each panel lays out widgets from a shared ``PlanFields`` (so every widget is bound to one plan
key and carries its help text as tooltip) and has a few ``show_*`` methods through which the
window fills in what it learned off the UI thread: the model's facts, the data preview, the
tokens a search found. Panels never run work themselves.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .catalog_panel import CatalogPanel
from .fields import TARGET_LABELS, TEMPLATE_LABELS, PlanFields, add_word, parse_targets, show_targets

ERROR_STYLE = "color: #c0392b;"
SEGMENT_STYLES = {
    "trained": "background-color: #d4efdf; color: #145a32; font-weight: 600;",
    "masked": "color: #7f8c8d;",
    "cut": "color: #c0392b; text-decoration: line-through;",
}


def _error_label(name: str) -> QLabel:
    w = QLabel()
    w.setObjectName(name)
    w.setWordWrap(True)
    w.setStyleSheet(ERROR_STYLE)
    w.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    w.hide()
    return w


HINT_STYLE = "color: #555;"


def set_error(label: QLabel, text: str | None, hint: bool = False) -> None:
    """Show ``text`` under a field in red (a problem) or grey (what to do next); hide when empty."""
    label.setText(text or "")
    label.setStyleSheet(HINT_STYLE if hint else ERROR_STYLE)
    label.setVisible(bool(text))


def _scroll(inner: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setWidget(inner)
    area.setFrameShape(QScrollArea.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # wrap, never scroll sideways
    return area


class PathRow(QWidget):
    """A path/id field with Browse and Recent buttons."""

    browse_requested = Signal()
    recent_chosen = Signal(str)

    def __init__(self, edit: QLineEdit, browse_tip: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.edit = edit
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(edit, 1)
        self.browse = QPushButton("Browse…")
        self.browse.setObjectName(edit.objectName().replace("Edit", "") + "BrowseButton")
        self.browse.setAccessibleName("Browse")
        self.browse.setToolTip(browse_tip)
        self.browse.clicked.connect(self.browse_requested.emit)
        lay.addWidget(self.browse)
        self.recent = QToolButton()
        self.recent.setText("Recent")
        self.recent.setObjectName(edit.objectName().replace("Edit", "") + "RecentButton")
        self.recent.setAccessibleName("Recent entries")
        self.recent.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        lay.addWidget(self.recent)
        self.set_recent([])

    def set_recent(self, entries: list[str]) -> None:
        from PySide6.QtWidgets import QMenu

        menu = QMenu(self.recent)
        for entry in entries:
            menu.addAction(entry, lambda e=entry: self.recent_chosen.emit(e))
        self.recent.setMenu(menu)
        self.recent.setEnabled(bool(entries))


class ModelPanel(QWidget):
    def __init__(self, fields: PlanFields, parent: QWidget | None = None):
        super().__init__(parent)
        self.catalog = CatalogPanel()
        inner = QWidget()
        lay = QVBoxLayout(inner)
        edit = fields.line(
            "model.name_or_path", "modelPathEdit", "Model", "Hub id (org/name), model folder, or .gguf file"
        )
        self.path_row = PathRow(edit, "Choose a model folder or a .gguf file.")
        lay.addWidget(QLabel("<b>Base model</b>"))
        lay.addWidget(self.path_row)
        self.error = _error_label("modelErrorLabel")
        lay.addWidget(self.error)
        catalog = QGroupBox("Catalog: models that fit this plan, and downloads")
        QVBoxLayout(catalog).addWidget(self.catalog)
        lay.addWidget(catalog)
        info = QGroupBox("About this model (from its configuration, no weights loaded)")
        form = QFormLayout(info)
        self.info: dict[str, QLabel] = {}
        for key, label in (
            ("architecture", "Architecture"),
            ("params", "Parameters"),
            ("vocab", "Vocabulary"),
            ("hidden", "Hidden size"),
            ("layers", "Layers"),
            ("context", "Context length"),
            ("tied", "Embeddings and LM head"),
            ("source", "Loaded from"),
        ):
            w = QLabel("–")
            w.setObjectName(f"modelInfo_{key}")
            w.setAccessibleName(label)
            w.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            form.addRow(label + ":", w)
            self.info[key] = w
        lay.addWidget(info)
        load = QGroupBox("Loading")
        form = QFormLayout(load)
        form.addRow("Quantisation:", fields.combo("model.quantization", "quantizationCombo", "Quantisation"))
        form.addRow("Precision:", fields.combo("model.dtype", "dtypeCombo", "Precision"))
        form.addRow("Attention:", fields.combo("model.attn_implementation", "attentionCombo", "Attention kernel"))
        form.addRow("", fields.check("model.double_quant", "Double quantisation (4-bit)", "doubleQuantCheck"))
        form.addRow("", fields.check("model.trust_remote_code", "Trust the model's own code", "trustRemoteCodeCheck"))
        lay.addWidget(load)
        lay.addStretch(1)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(_scroll(inner))

    def show_summary(self, s) -> None:
        set_error(self.error, None)
        values = {
            "architecture": s.architecture,
            "params": f"{s.params / 1e9:.2f} B" if s.params >= 1e9 else f"{s.params / 1e6:.1f} M",
            "vocab": f"{s.vocab:,} tokens",
            "hidden": f"{s.hidden:,}",
            "layers": str(s.layers),
            "context": f"{s.context:,} tokens" if s.context else "not stated",
            "tied": "tied: one shared matrix" if s.tied else "separate matrices (untied)",
            "source": {
                "folder": "a local folder",
                "hub": "the Hugging Face hub",
                "gguf": "a GGUF file (de-quantised once for training)",
            }.get(s.source, s.source),
        }
        for k, v in values.items():
            self.info[k].setText(v)

    def show_error(self, text: str, hint: bool = False) -> None:
        set_error(self.error, text, hint)
        for w in self.info.values():
            w.setText("–")


class DataPanel(QWidget):
    def __init__(self, fields: PlanFields, parent: QWidget | None = None):
        super().__init__(parent)
        inner = QWidget()
        lay = QVBoxLayout(inner)
        edit = fields.line(
            "data.path", "datasetPathEdit", "Dataset", "A .jsonl/.json/.csv/.parquet/.txt file or a hub id"
        )
        self.path_row = PathRow(edit, "Choose a data file.")
        lay.addWidget(QLabel("<b>Training data</b>"))
        lay.addWidget(self.path_row)
        self.error = _error_label("dataErrorLabel")
        lay.addWidget(self.error)
        form = QFormLayout()
        form.addRow("Format:", fields.combo("data.format", "dataFormatCombo", "Data format"))
        form.addRow(
            "Chat template:",
            fields.editable_combo("data.chat_template", TEMPLATE_LABELS, "chatTemplateCombo", "Chat template"),
        )
        form.addRow(
            "Max sequence length:",
            fields.spin("data.max_seq_len", None, 1_048_576, "maxSeqLenSpin", "Maximum sequence length", step=128),
        )
        form.addRow(
            "Validation share:",
            fields.dspin("data.val_fraction", None, None, 3, 0.01, "valFractionSpin", "Validation share"),
        )
        form.addRow("", fields.check("data.packing", "Pack short examples together", "packingCheck"))
        form.addRow("Batches:", fields.combo("data.batching", "batchingCombo", "Batching"))
        lay.addLayout(form)
        self.summary = QLabel("Choose a dataset to see a preview.")
        self.summary.setObjectName("dataSummaryLabel")
        self.summary.setWordWrap(True)
        lay.addWidget(self.summary)
        self.table = QTableWidget()
        self.table.setObjectName("dataPreviewTable")
        self.table.setAccessibleName("First rows of the dataset")
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(140)
        lay.addWidget(self.table)
        legend = QLabel(
            f"One example as the model sees it: <span style='{SEGMENT_STYLES['trained']}'>trained "
            f"tokens</span>, <span style='{SEGMENT_STYLES['masked']}'>masked (prompt) tokens</span>, "
            f"<span style='{SEGMENT_STYLES['cut']}'>cut by the maximum length</span>"
        )
        legend.setWordWrap(True)
        lay.addWidget(legend)
        self.example = QTextBrowser()
        self.example.setObjectName("renderedExample")
        self.example.setAccessibleName("Rendered example with trained and masked tokens")
        self.example.setMinimumHeight(140)
        lay.addWidget(self.example)
        self.histogram_host = QWidget()
        self.histogram_host.setMinimumHeight(170)
        QVBoxLayout(self.histogram_host).setContentsMargins(0, 0, 0, 0)
        self.plots_built = False
        self._max_seq_len = 0
        lay.addWidget(self.histogram_host)
        self.truncation = QLabel()
        self.truncation.setObjectName("truncationLabel")
        self.truncation.setWordWrap(True)
        lay.addWidget(self.truncation)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(_scroll(inner))
        self.preview = None

    def build_plots(self) -> None:
        """Create the length histogram (pyqtgraph is imported after the window is shown)."""
        if self.plots_built:
            return
        import pyqtgraph as pg

        self.histogram = pg.PlotWidget(background="w")
        self.histogram.setObjectName("lengthHistogram")
        self.histogram.setAccessibleName("Token length histogram")
        self.histogram.setLabel("bottom", "tokens per example")
        self.histogram.setLabel("left", "examples")
        self.histogram.setMouseEnabled(x=False, y=False)
        self.bars = pg.BarGraphItem(x0=[], x1=[], height=[], brush="#5dade2", pen="#2874a6")
        self.histogram.addItem(self.bars)
        self.max_line = pg.InfiniteLine(
            angle=90,
            movable=False,
            pen=pg.mkPen("#c0392b", width=2, style=Qt.PenStyle.DashLine),
            label="max {value:.0f}",
            labelOpts={"position": 0.9, "color": "#c0392b"},
        )
        self.histogram.addItem(self.max_line)
        self.histogram_host.layout().addWidget(self.histogram)
        self.plots_built = True
        self.update_max_len(self._max_seq_len)

    def show_loading(self, text: str) -> None:
        set_error(self.error, None)
        self.summary.setText(text)

    def show_error(self, text: str, hint: bool = False) -> None:
        self.preview = None
        set_error(self.error, text, hint)
        self.summary.setText("" if hint else "No preview: fix the problem above.")
        self.table.clear()
        self.table.setRowCount(0)
        self.table.setColumnCount(0)
        self.example.clear()
        if self.plots_built:
            self.bars.setOpts(x0=[], x1=[], height=[])
        self.truncation.clear()

    def show_preview(self, p) -> None:
        self.preview = p
        set_error(self.error, None)
        share = p.trained_tokens / max(1, p.trained_tokens + p.masked_tokens)
        tmpl = f" · template: {p.template_source}" if p.template_source else ""
        grown = ""
        if p.base_lengths and p.lengths:
            before, after = sum(p.base_lengths) / len(p.base_lengths), sum(p.lengths) / len(p.lengths)
            grown = f" · with the new tokens {before:,.1f} → {after:,.1f} tokens per example"
        self.summary.setText(
            f"<b>{p.format}</b> · {p.rows:,} rows{tmpl} · {share:.0%} of tokens trained, the rest masked{grown}"
        )
        self.table.clear()
        self.table.setColumnCount(len(p.columns))
        self.table.setRowCount(len(p.table))
        self.table.setHorizontalHeaderLabels(p.columns)
        for r, row in enumerate(p.table):
            for c, cell in enumerate(row):
                item = QTableWidgetItem(cell)
                item.setToolTip(cell)
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        for c in range(self.table.columnCount()):
            self.table.setColumnWidth(c, min(self.table.columnWidth(c), 320))
        body = "".join(f"<span style='{SEGMENT_STYLES[kind]}'>{html.escape(text)}</span>" for text, kind in p.segments)
        self.example.setHtml(f"<pre style='white-space: pre-wrap; font-family: monospace;'>{body}</pre>")
        self.update_max_len(p.max_seq_len)

    def update_max_len(self, max_seq_len: int) -> None:
        """Redraw the histogram and the truncation share for a new maximum length (no re-tokenising)."""
        p = self.preview
        self._max_seq_len = max_seq_len
        if self.plots_built:
            self.max_line.setValue(max_seq_len)
        if p is None or not p.lengths:
            return
        import numpy as np

        lengths = np.asarray(p.lengths)
        hi = max(int(lengths.max()), max_seq_len)
        if self.plots_built:
            counts, edges = np.histogram(lengths, bins=min(40, max(5, len(set(p.lengths)))), range=(0, hi + 1))
            self.bars.setOpts(x0=edges[:-1], x1=edges[1:], height=counts)
            self.histogram.setXRange(0, hi * 1.05, padding=0)
            self.histogram.setYRange(0, counts.max() * 1.1, padding=0)
        cut = int((lengths > max_seq_len).sum())
        share = cut / len(lengths)
        self.truncation.setText(
            f"{cut:,} of {len(lengths):,} examples ({share:.1%}) are longer than {max_seq_len:,} "
            f"tokens and would be truncated. Longest: {int(lengths.max()):,} tokens."
        )
        self.truncation.setStyleSheet(ERROR_STYLE if cut else "")


class TrainingPanel(QWidget):
    """LoRA, embeddings and head, optimisation, checkpoints and output."""

    token_search_changed = Signal(str)
    output_browse_requested = Signal()
    vocab_requested = Signal()

    def __init__(self, fields: PlanFields, parent: QWidget | None = None):
        super().__init__(parent)
        inner = QWidget()
        lay = QVBoxLayout(inner)
        self.plan_error = _error_label("planErrorLabel")
        lay.addWidget(self.plan_error)
        lay.addWidget(self._lora_group(fields))
        lay.addWidget(self._embeddings_group(fields))
        lay.addWidget(self._optimisation_group(fields))
        lay.addWidget(self._memory_group(fields))
        lay.addWidget(self._output_group(fields))
        lay.addStretch(1)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(_scroll(inner))

    def _lora_group(self, fields: PlanFields) -> QGroupBox:
        lora = QGroupBox("LoRA")
        form = QFormLayout(lora)
        form.addRow("Rank:", fields.spin("adapter.r", None, 1024, "loraRankSpin", "LoRA rank"))
        form.addRow("Alpha:", fields.dspin("adapter.alpha", 0.01, 4096, 2, 1.0, "loraAlphaSpin", "LoRA alpha"))
        form.addRow("Dropout:", fields.dspin("adapter.dropout", None, None, 3, 0.01, "loraDropoutSpin", "LoRA dropout"))
        form.addRow(
            "Target layers:",
            fields.editable_combo(
                "adapter.target_modules",
                TARGET_LABELS,
                "loraTargetsCombo",
                "LoRA target layers",
                parse=parse_targets,
                show=show_targets,
            ),
        )
        form.addRow("", fields.check("adapter.dora", "DoRA (magnitude and direction)", "doraCheck"))
        form.addRow("", fields.check("adapter.rslora", "Rank-stabilised scaling (rsLoRA)", "rsloraCheck"))
        form.addRow(
            "LoRA+ ratio:",
            fields.dspin(
                "adapter.loraplus_ratio", None, 256.0, 1, 1.0, "loraplusRatioSpin", "LoRA+ learning-rate ratio"
            ),
        )
        return lora

    def _embeddings_group(self, fields: PlanFields) -> QGroupBox:
        emb = QGroupBox("Token embeddings and LM head")
        form = QFormLayout(emb)
        checks = QHBoxLayout()
        self.train_embeddings: QCheckBox = fields.check(
            "embeddings.train_embeddings", "Train token embeddings", "trainEmbeddingsCheck"
        )
        self.train_lm_head: QCheckBox = fields.check("embeddings.train_lm_head", "Train LM head", "trainLmHeadCheck")
        checks.addWidget(self.train_embeddings)
        checks.addWidget(self.train_lm_head)
        checks.addStretch(1)
        form.addRow(checks)
        self.tied_note = QLabel()
        self.tied_note.setObjectName("tiedNoteLabel")
        self.tied_note.setWordWrap(True)
        self.tied_note.setStyleSheet("color: #555;")
        form.addRow(self.tied_note)
        form.addRow("Mode:", fields.combo("embeddings.mode", "embeddingsModeCombo", "Embeddings training mode"))
        form.addRow(
            "Learning rate:",
            fields.number("embeddings.learning_rate", "embeddingsLrEdit", "Embeddings learning rate", optional=True),
        )
        form.addRow(
            "Tokens to add:",
            fields.token_list(
                "embeddings.new_tokens",
                ints=False,
                object_name="newTokensEdit",
                accessible="Tokens to add",
                placeholder="e.g. <tool_call>, </tool_call>",
            ),
        )
        form.addRow(
            "New rows start at:",
            fields.combo("embeddings.new_token_init", "newTokenInitCombo", "New rows start at"),
        )
        propose = QHBoxLayout()
        propose.addWidget(QLabel("at most"))
        propose.addWidget(fields.spin("embeddings.vocab_count", None, None, "vocabCountSpin", "New tokens at most"))
        propose.addWidget(QLabel("each saving at least"))
        propose.addWidget(
            fields.dspin("embeddings.vocab_min_share", None, None, 4, 0.0005, "vocabMinShareSpin", "Least share saved")
        )
        self.vocab_button = QPushButton("Propose from the data")
        self.vocab_button.setObjectName("vocabProposeButton")
        self.vocab_button.setToolTip(
            "Find the words of the training data that the model's tokenizer splits most, and list "
            "them below as new tokens (untick any you do not want)."
        )
        self.vocab_button.clicked.connect(self.vocab_requested.emit)
        propose.addWidget(self.vocab_button)
        propose.addStretch(1)
        form.addRow("New words:", propose)
        self.vocab_list = fields.word_list("embeddings.vocab_tokens", "vocabTokensList", "New words from the data")
        self.vocab_list.setMaximumHeight(140)
        form.addRow("", self.vocab_list)
        self.vocab_summary = QLabel()
        self.vocab_summary.setObjectName("vocabSummaryLabel")
        self.vocab_summary.setWordWrap(True)
        form.addRow("", self.vocab_summary)
        form.addRow(
            "Token rows to train:",
            fields.token_list(
                "embeddings.token_ids",
                ints=True,
                object_name="tokenIdsEdit",
                accessible="Token rows to train",
                placeholder="token ids; find them by text below",
            ),
        )
        form.addRow(
            "Untrained-looking rows:",
            fields.combo("embeddings.init_untrained", "initUntrainedCombo", "Untrained-looking rows"),
        )
        self.token_rows = QLabel()
        self.token_rows.setObjectName("tokenRowsLabel")
        self.token_rows.setWordWrap(True)
        form.addRow("", self.token_rows)
        self.token_search = QLineEdit()
        self.token_search.setObjectName("tokenSearchEdit")
        self.token_search.setAccessibleName("Find tokens by text")
        self.token_search.setPlaceholderText("Find tokens by text, e.g. <|im_end|> or im_")
        self.token_search.setToolTip("Search the model's vocabulary; double-click a result to train its row.")
        self.token_search.textChanged.connect(self.token_search_changed.emit)
        form.addRow("Find tokens:", self.token_search)
        self.token_results = QListWidget()
        self.token_results.setObjectName("tokenSearchResults")
        self.token_results.setAccessibleName("Matching tokens")
        self.token_results.setMaximumHeight(110)
        self.token_results.itemDoubleClicked.connect(self._on_token_results_activated)
        form.addRow("", self.token_results)
        self._token_ids_edit: QLineEdit = fields["embeddings.token_ids"]
        return emb

    def _optimisation_group(self, fields: PlanFields) -> QGroupBox:
        opt = QGroupBox("Optimisation")
        form = QFormLayout(opt)
        self._method_combo = fields.combo("training.method", "methodCombo", "Training method")
        self._beta_spin = fields.dspin("training.pref_beta", None, None, 3, 0.01, "prefBetaSpin", "DPO beta")
        self._lambda_spin = fields.dspin("training.orpo_lambda", None, None, 3, 0.01, "orpoLambdaSpin", "ORPO lambda")
        form.addRow("Method:", self._method_combo)
        form.addRow("DPO beta:", self._beta_spin)
        form.addRow("ORPO lambda:", self._lambda_spin)
        self.show_method(self._method_combo.currentData())
        form.addRow("Batch size:", fields.spin("training.batch_size", None, 4096, "batchSizeSpin", "Batch size"))
        form.addRow(
            "Gradient accumulation:",
            fields.spin("training.grad_accum", None, 4096, "gradAccumSpin", "Gradient accumulation"),
        )
        form.addRow(
            "Devices (processes):",
            fields.spin("training.devices", None, 64, "devicesSpin", "Devices", special="every GPU"),
        )
        form.addRow("Sharding:", fields.combo("training.sharding", "shardingCombo", "Sharding over devices"))
        form.addRow("Epochs:", fields.dspin("training.epochs", 0.0, 1000.0, 2, 0.5, "epochsSpin", "Epochs"))
        form.addRow(
            "Max steps (0 = epochs):",
            fields.spin("training.max_steps", 0, 10_000_000, "maxStepsSpin", "Maximum steps", special="use epochs"),
        )
        form.addRow("Learning rate:", fields.number("training.learning_rate", "learningRateEdit", "Learning rate"))
        form.addRow("Schedule:", fields.combo("training.lr_scheduler", "schedulerCombo", "Learning-rate schedule"))
        form.addRow(
            "Warm-up share:", fields.dspin("training.warmup_ratio", None, None, 3, 0.01, "warmupSpin", "Warm-up")
        )
        form.addRow(
            "Weight decay:",
            fields.dspin("training.weight_decay", 0.0, 10.0, 4, 0.01, "weightDecaySpin", "Weight decay"),
        )
        form.addRow(
            "Gradient clipping:",
            fields.dspin("training.max_grad_norm", 0.0, 1000.0, 2, 0.1, "maxGradNormSpin", "Gradient clipping norm"),
        )
        form.addRow("Optimizer:", fields.combo("training.optimizer", "optimizerCombo", "Optimizer"))
        form.addRow(
            "", fields.check("training.gradient_checkpointing", "Gradient checkpointing", "gradientCheckpointingCheck")
        )
        form.addRow("Seed:", fields.spin("training.seed", 0, 2**31 - 1, "seedSpin", "Seed"))
        return opt

    def show_method(self, method: str) -> None:
        """Each method's own setting is editable only under that method."""
        self._beta_spin.setEnabled(method == "dpo")
        self._lambda_spin.setEnabled(method == "orpo")

    def _memory_group(self, fields: PlanFields) -> QGroupBox:
        # Lean memory (plan section memory:, core/training/lean.py); tooltips are the plan's help text.
        mem = QGroupBox("Memory")
        form = QFormLayout(mem)
        form.addRow("Loss:", fields.combo("memory.loss", "memoryLossCombo", "Loss computation"))
        form.addRow(
            "Loss chunk (tokens):",
            fields.spin("memory.loss_chunk_tokens", None, 1_000_000, "memoryChunkSpin", "Loss chunk tokens"),
        )
        form.addRow(
            "Matrix precision:", fields.combo("memory.matrix_dtype", "memoryDtypeCombo", "Embedding and head precision")
        )
        form.addRow(
            "Matrix optimizer states:",
            fields.combo("memory.matrix_states", "memoryStatesCombo", "Embedding and head optimizer states"),
        )
        form.addRow(
            "",
            fields.check(
                "memory.frozen_copy", "Keep frozen originals of fully trained matrices", "memoryFrozenCopyCheck"
            ),
        )
        form.addRow(
            "",
            fields.check(
                "memory.fused_step", "Update the matrices inside backward (no clipping)", "memoryFusedStepCheck"
            ),
        )
        return mem

    def _output_group(self, fields: PlanFields) -> QGroupBox:
        ck = QGroupBox("Evaluation, checkpoints and output")
        form = QFormLayout(ck)
        form.addRow(
            "Evaluate every (steps):",
            fields.spin("training.eval_every", 0, 10_000_000, "evalEverySpin", "Evaluate every", special="never"),
        )
        form.addRow(
            "Save every (steps):",
            fields.spin("training.save_every", 0, 10_000_000, "saveEverySpin", "Save every", special="never"),
        )
        form.addRow(
            "Checkpoints kept:",
            fields.spin("training.save_total_limit", None, 1000, "saveLimitSpin", "Checkpoints kept"),
        )
        out = fields.line("output.dir", "outputDirEdit", "Output folder")
        row = QHBoxLayout()
        row.addWidget(out, 1)
        browse = QPushButton("Browse…")
        browse.setObjectName("outputBrowseButton")
        browse.setAccessibleName("Browse for the output folder")
        browse.clicked.connect(self.output_browse_requested.emit)
        row.addWidget(browse)
        form.addRow("Output folder:", row)
        form.addRow("", fields.check("output.tensorboard", "Write TensorBoard event files", "tensorboardCheck"))
        return ck

    def show_tied(self, tied: bool | None) -> None:
        self.tied_note.setText(
            "This model ties its embeddings and LM head: they are one matrix, so both boxes train it once."
            if tied
            else ""
        )
        self.tied_note.setVisible(bool(tied))

    def show_token_results(self, results: list[tuple[int, str]]) -> None:
        self.token_results.clear()
        for tid, tok in results:
            item = QListWidgetItem(f"{tid}  {tok!r}")
            item.setData(Qt.ItemDataRole.UserRole, tid)
            self.token_results.addItem(item)

    def show_vocab_proposal(self, p) -> None:
        """Candidates from ``core.tools.vocab.propose``, all ticked, each with its figures."""
        self.vocab_list.blockSignals(True)
        self.vocab_list.clear()
        for c in p.candidates:
            add_word(
                self.vocab_list,
                c.text,
                f"{c.count:,} times in the trained text, {c.pieces} pieces today; saves {c.saved:,} tokens ({c.share:.2%})",
            )
        self.vocab_list.blockSignals(False)
        n = max(1, p.examples)
        self.vocab_summary.setText(
            f"{len(p.candidates)} tokens ({p.new_rows} new rows): the trained text takes {p.share_saved:.1%} fewer "
            f"tokens; {p.all_base_tokens / n:,.1f} → {p.all_new_tokens / n:,.1f} tokens per example (measured)."
            if p.candidates
            else "No word of the data would save enough tokens."
        )

    def show_vocab_busy(self, message: str) -> None:
        self.vocab_summary.setText(message)

    def show_token_rows(self, text: str) -> None:
        self.token_rows.setText(text)

    def _on_token_results_activated(self, item) -> None:
        tid = item.data(Qt.ItemDataRole.UserRole)
        current = [x.strip() for x in self._token_ids_edit.text().split(",") if x.strip()]
        if str(tid) not in current:
            self._token_ids_edit.setText(", ".join(current + [str(tid)]))  # emits textChanged -> plan changed
