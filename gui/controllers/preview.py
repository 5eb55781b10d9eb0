"""The model's facts, its tokenizer, the data preview and token search.

Everything slow (reading a model's configuration, loading its tokenizer, tokenising a sample of
the dataset) runs on ``TaskWorker`` threads; a result that arrives after the user has typed
something else is dropped (``TaskRunner``). Typing is debounced, so a path is read once it has
been typed, not at every key.
"""

from __future__ import annotations

import copy
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal, Slot
from PySide6.QtWidgets import QFileDialog

from headtune.core.errors import PlanError

from ..plan_model import PlanModel
from ..plan_panels import set_error

RECENT_MAX = 10
MODEL_KEYS = ("model.name_or_path", "model.trust_remote_code")
DATA_KEYS = ("data.path", "data.format", "data.chat_template")
TIED_KEYS = ("embeddings.train_embeddings", "embeddings.train_lm_head")


def load_tokenizer_for(name_or_path: str, trust_remote_code: bool):
    from headtune.core.model.sources import load_tokenizer, resolve_source

    return load_tokenizer(resolve_source(name_or_path), trust_remote_code)


class PreviewController(QObject):
    """Fills the Model and Data tabs and the token tools from what it reads off the UI thread."""

    model_read = Signal(object)  # the ModelSummary, or None while there is none
    data_read = Signal(object)  # the DataPreview (token lengths for the estimate), or None

    def __init__(self, model: PlanModel, model_panel, data_panel, training_panel, tasks, host):
        super().__init__(host)
        self._model = model
        self._model_panel, self._data_panel, self._training_panel = model_panel, data_panel, training_panel
        self._tasks = tasks
        self._host = host
        self.summary = None
        self.tokenizer = None
        self._model_timer = QTimer(self, singleShot=True, interval=300)
        self._model_timer.timeout.connect(self.load_model_info)
        self._data_timer = QTimer(self, singleShot=True, interval=300)
        self._data_timer.timeout.connect(self.load_data_preview)
        model.changed.connect(self._on_model_changed)
        model.replaced.connect(self._on_model_replaced)
        model_panel.path_row.browse_requested.connect(self._on_model_path_browse_requested)
        model_panel.path_row.recent_chosen.connect(self._on_model_path_recent_chosen)
        data_panel.path_row.browse_requested.connect(self._on_data_path_browse_requested)
        data_panel.path_row.recent_chosen.connect(self._on_data_path_recent_chosen)
        training_panel.token_search_changed.connect(self._on_training_panel_token_search_changed)
        training_panel.vocab_requested.connect(self._on_training_panel_vocab_requested)
        training_panel.output_browse_requested.connect(self._on_training_panel_output_browse_requested)
        settings = host.settings
        model_panel.path_row.set_recent(settings.value("recent/models", [], list) or [])
        data_panel.path_row.set_recent(settings.value("recent/datasets", [], list) or [])

    def stop(self) -> None:
        for timer in (self._model_timer, self._data_timer):
            timer.stop()

    # -- plan changes ----------------------------------------------------------------------
    @Slot(str)
    def _on_model_changed(self, key: str) -> None:
        if key in MODEL_KEYS:
            self._model_timer.start()
        if key in DATA_KEYS:
            self._data_timer.start()
        if key == "data.max_seq_len":
            self._data_panel.update_max_len(self._model.value(key))
        if key in TIED_KEYS and self.summary is not None and self.summary.tied and not self._model.loading:
            # One matrix on a tied model: the two boxes move together.
            other = TIED_KEYS[1] if key == TIED_KEYS[0] else TIED_KEYS[0]
            self._model.set(other, self._model.value(key))
        if key in ("embeddings.token_ids", "embeddings.new_tokens"):
            self.show_token_rows()
        if key == "training.method":
            self._training_panel.show_method(self._model.value(key))
        if key in ("embeddings.new_tokens", "embeddings.vocab_tokens"):
            self._data_timer.start()  # token lengths follow the extended tokenizer

    @Slot()
    def _on_model_replaced(self) -> None:
        self._set_summary(None)
        self.data_read.emit(None)
        self._data_timer.stop()  # the preview follows the new model's tokenizer
        self._model_timer.start()  # debounced: the window paints first, then the model is read
        self._data_panel.update_max_len(self._model.value("data.max_seq_len"))

    def _set_summary(self, summary) -> None:
        self.summary = summary
        self.model_read.emit(summary)

    # -- the model -------------------------------------------------------------------------
    @Slot()
    def load_model_info(self) -> None:
        from headtune.core.tools.preview import model_summary

        name, trust = self._model.value("model.name_or_path").strip(), self._model.value("model.trust_remote_code")
        self.tokenizer = None
        self._training_panel.show_tied(None)
        self._set_summary(None)
        if not name:
            self._model_panel.show_error("Choose a model: a hub id, a model folder or a .gguf file.", hint=True)
            self._tasks.forget("model")
            return
        set_error(self._model_panel.error, None)
        self._host.show_status(f"Reading the configuration of {name}…")
        self._tasks.run("model", lambda: model_summary(name), self._on_model_summary, self._on_model_error)
        self._data_panel.show_loading("Loading the model's tokenizer for the preview…")
        self._tasks.run(
            "tokenizer", lambda: load_tokenizer_for(name, trust), self._on_tokenizer_loaded, self._on_tokenizer_error
        )

    def _on_model_summary(self, summary) -> None:
        self._model_panel.show_summary(summary)
        self._training_panel.show_tied(summary.tied)
        self.summary = summary
        if summary.tied and self._model.value(TIED_KEYS[0]) != self._model.value(TIED_KEYS[1]):
            on = self._model.value(TIED_KEYS[0]) or self._model.value(TIED_KEYS[1])
            self._model.update({TIED_KEYS[0]: on, TIED_KEYS[1]: on})
        self._remember("recent/models", summary.name, self._model_panel.path_row)
        self._host.show_status(f"{summary.architecture}, {summary.params / 1e6:,.0f} M parameters", 5000)
        self._set_summary(summary)

    def _on_model_error(self, message: str) -> None:
        self._model_panel.show_error(message)
        self._host.show_status("The model cannot be used; see the Model tab.", 5000)
        self._set_summary(None)

    def _on_tokenizer_loaded(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.show_token_rows()
        self._on_training_panel_token_search_changed(self._training_panel.token_search.text())
        self.load_data_preview()

    def _on_tokenizer_error(self, message: str) -> None:
        self._data_panel.show_loading(f"No preview: the model's tokenizer could not be loaded ({message})")

    # -- the data --------------------------------------------------------------------------
    @Slot()
    def load_data_preview(self) -> None:
        from headtune.core.tools.preview import preview_data

        self.data_read.emit(None)  # until this data is read, the estimate is the worst case

        if not self._model.value("data.path").strip():
            self._tasks.forget("data")
            self._data_panel.show_error("Choose a dataset: a data file or a hub dataset id.", hint=True)
            return
        if self.tokenizer is None:
            self._data_panel.show_loading("Waiting for the model's tokenizer…")
            return
        try:
            plan = self._model.plan(check=False)
        except PlanError as exc:
            self._data_panel.show_error(str(exc))
            return
        spec, e = plan.data, plan.embeddings
        # A copy: a Rust tokenizer used from two threads at once can fail ("Already borrowed"),
        # and the UI thread keeps using this one for token search.
        tokenizer = copy.deepcopy(self.tokenizer)
        self._data_panel.show_loading(f"Reading {Path(spec.path).name}…")
        self._tasks.run(
            "data",
            lambda: preview_data(spec, tokenizer, new_tokens=e.new_tokens, vocab_tokens=e.vocab_tokens),
            self._on_data_preview,
            self._data_panel.show_error,
        )

    def _on_data_preview(self, preview) -> None:
        self._data_panel.show_preview(preview)
        self.data_read.emit(preview)
        self._data_panel.update_max_len(self._model.value("data.max_seq_len"))
        self._remember("recent/datasets", self._model.value("data.path"), self._data_panel.path_row)

    # -- tokens ----------------------------------------------------------------------------
    @Slot(str)
    def _on_training_panel_token_search_changed(self, text: str) -> None:
        from headtune.core.tools.preview import search_vocab

        if self.tokenizer is None:
            self._training_panel.show_token_results([])
            return
        self._training_panel.show_token_results(search_vocab(self.tokenizer, text))

    @Slot()
    def _on_training_panel_vocab_requested(self) -> None:
        from headtune.core.tools.vocab import propose

        if self.tokenizer is None:
            self._training_panel.show_vocab_busy("Choose a model first: its tokenizer is what the words are added to.")
            return
        try:
            plan = self._model.plan(check=False)
        except PlanError as exc:
            self._training_panel.show_vocab_busy(str(exc))
            return
        if not plan.data.path.strip():
            self._training_panel.show_vocab_busy("Choose a dataset first: the words come from its trained text.")
            return
        tokenizer, e = copy.deepcopy(self.tokenizer), plan.embeddings
        self._training_panel.show_vocab_busy(f"Looking for new words in {Path(plan.data.path).name}…")
        self._tasks.run(
            "vocab",
            lambda: propose(plan.data, tokenizer, e.vocab_count, e.vocab_min_share),
            self._on_vocab_proposed,
            self._training_panel.show_vocab_busy,
        )

    def _on_vocab_proposed(self, proposal) -> None:
        self._training_panel.show_vocab_proposal(proposal)
        self._model.set("embeddings.vocab_tokens", proposal.tokens)

    def show_token_rows(self) -> None:
        ids = [i for i in self._model.value("embeddings.token_ids") if isinstance(i, int)]
        new_tokens = self._model.value("embeddings.new_tokens")
        if not ids and not new_tokens:
            self._training_panel.show_token_rows("")
            return
        parts = []
        if self.tokenizer is not None:
            size = len(self.tokenizer)
            for i in ids:
                parts.append(
                    f"{i} = {self.tokenizer.convert_ids_to_tokens(i)!r}"
                    if 0 <= i < size
                    else f"{i} = (outside the vocabulary)"
                )
        else:
            parts += [str(i) for i in ids]
        parts += [f"new {t!r}" for t in new_tokens]
        self._training_panel.show_token_rows("Rows trained in tokens mode: " + ", ".join(parts))

    # -- files -----------------------------------------------------------------------------
    def _remember(self, key: str, value: str, row) -> None:
        settings = self._host.settings
        items = [x for x in (settings.value(key, [], list) or []) if x != value]
        items = [value] + items[: RECENT_MAX - 1]
        settings.setValue(key, items)
        row.set_recent(items)

    def _start_dir(self, key: str) -> str:
        return self._host.settings.value(f"dirs/{key}", str(Path.cwd()), str)

    @Slot()
    def _on_model_path_browse_requested(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self._host,
            "Choose a model (a .gguf file, or config.json in a model folder)",
            self._start_dir("model"),
            "Models (config.json *.gguf);;All files (*)",
        )
        if path:
            self._host.settings.setValue("dirs/model", str(Path(path).parent))
            self._model.set("model.name_or_path", str(Path(path).parent) if path.endswith("config.json") else path)

    @Slot(str)
    def _on_model_path_recent_chosen(self, value: str) -> None:
        self._model.set("model.name_or_path", value)

    @Slot()
    def _on_data_path_browse_requested(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self._host,
            "Choose the training data",
            self._start_dir("data"),
            "Data (*.jsonl *.json *.csv *.parquet *.txt);;All files (*)",
        )
        if path:
            self._host.settings.setValue("dirs/data", str(Path(path).parent))
            self._model.set("data.path", path)

    @Slot(str)
    def _on_data_path_recent_chosen(self, value: str) -> None:
        self._model.set("data.path", value)

    @Slot()
    def _on_training_panel_output_browse_requested(self) -> None:
        path = QFileDialog.getExistingDirectory(self._host, "Folder for the run", self._start_dir("output"))
        if path:
            self._host.settings.setValue("dirs/output", path)
            self._model.set("output.dir", path)
