"""The Model tab's catalog: its rows and badges, and downloads run as a child process.

The rows (``core.tools.catalog.list_entries``: the curated list, the Hugging Face cache, recent
folders) are read off the UI thread; the badges are ``core.estimate.estimate`` of the plan's
variants on each row, a few milliseconds for the whole list, so they are recomputed on the UI
thread a moment after any plan change or a change of card in the Memory panel. A download is a
child ``headtune download --progress-json`` (``DownloadProtocol``): Pause keeps the partial file,
Cancel deletes it, and closing the window pauses it.
"""

from __future__ import annotations

import shutil

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from headtune.core import events as ev
from headtune.core.errors import HeadtuneError

from ..catalog_panel import CatalogPanel
from ..plan_model import PlanModel
from ..protocols import DownloadProtocol, DownloadStarted, download_args
from ..supervisor import Supervisor


def hub_id_to_download(name: str) -> str | None:
    """``name`` when it is a hub id whose weights are not in the local cache (disk checks only)."""
    from headtune.core.model.sources import hub_weights_cached, resolve_source

    name = name.strip()
    if not name:
        return None
    try:
        source = resolve_source(name, convert_gguf=False)
    except HeadtuneError:
        return None
    return name if source.kind == "hub" and not hub_weights_cached(name) else None


class CatalogController(QObject):
    """Fills the catalog view, keeps its badges current, and runs downloads."""

    downloaded = Signal(str)  # a model's download finished

    def __init__(self, model: PlanModel, panel: CatalogPanel, memory_panel, tasks, threads, host):
        super().__init__(host)
        self._model = model
        self._panel = panel
        self._memory_panel = memory_panel
        self._tasks = tasks
        self._threads = threads
        self._host = host
        self.entries: list = []
        self.badges = None
        self.closed = False
        self._child: Supervisor | None = None
        self._child_repo = ""
        self._fit_keys: list[str | None] = []
        self._timer = QTimer(self, singleShot=True, interval=150)
        self._timer.timeout.connect(self.update_badges)
        model.changed.connect(self._on_model_changed)
        model.replaced.connect(self._on_model_replaced)
        memory_panel.target_changed.connect(self._on_memory_panel_target_changed)
        panel.filters_changed.connect(self._on_panel_filters_changed)
        panel.model_chosen.connect(self._on_panel_model_chosen)
        panel.download_requested.connect(self.start_download)
        panel.pause_requested.connect(self._on_panel_pause_requested)
        panel.cancel_requested.connect(self._on_panel_cancel_requested)
        panel.token_entered.connect(self._on_panel_token_entered)
        self.show_cache()

    # -- the rows and badges ---------------------------------------------------------------
    def load(self) -> None:
        """Read the rows (the cache and recent folders) off the UI thread."""
        from headtune.core.tools.catalog import list_entries

        recent = list(self._host.settings.value("recent/models", [], list) or [])
        self._tasks.run("catalog", lambda: list_entries(recent), self._on_entries_listed, needs_transformers=False)

    def _on_entries_listed(self, entries: list) -> None:
        self.entries = entries
        self.update_badges()
        self.offer_for_plan()

    @Slot(str)
    def _on_model_changed(self, key: str) -> None:
        self._timer.start()  # the badges follow every key of the plan
        if key == "model.name_or_path":
            self.offer_for_plan()

    @Slot()
    def _on_model_replaced(self) -> None:
        self._timer.start()
        self.offer_for_plan()

    @Slot()
    def _on_memory_panel_target_changed(self) -> None:
        self.update_badges()

    def update_badges(self) -> None:
        from headtune.core.tools.catalog import compute_badges, fit_filters

        self._timer.stop()
        try:
            plan = self._model.plan(check=False)
        except HeadtuneError:
            return  # the plan has a problem the Training tab shows; the last badges stay
        device, capacity, where = self._memory_panel.target()
        self.badges = compute_badges(plan, self.entries, device, capacity or None)
        filters = fit_filters(self.badges.variants)
        self._fit_keys = list(filters.values())
        self._panel.set_fit_filters(list(filters))
        self.show()

    def show(self) -> None:
        from headtune.core.tools.catalog import filter_entries

        if self.badges is None:
            return
        index = self._panel.fit.currentIndex()
        fit = self._fit_keys[index] if 0 <= index < len(self._fit_keys) else None
        rows = filter_entries(self.entries, self.badges, self._panel.search.text(), self._panel.size.currentText(), fit)
        device, capacity, where = self._memory_panel.target()
        card = (
            f"Badges: this plan on {where} ({capacity / 2**30:.1f} GiB), by how the embeddings and head train. "
            "Change the card in the Memory panel."
            if capacity
            else "Badges: no card to check against; the figures are the estimate's totals."
        )
        self._panel.show_rows(rows, self.badges, card)

    @Slot()
    def _on_panel_filters_changed(self) -> None:
        self.show()

    @Slot(str)
    def _on_panel_model_chosen(self, name: str) -> None:
        self._model.set("model.name_or_path", name)
        self._host.show_status(f"Model: {name}", 5000)

    # -- downloads -------------------------------------------------------------------------
    def show_cache(self) -> None:
        from headtune.core.model.sources import hub_cache_dir

        path = hub_cache_dir()
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free: int | None = shutil.disk_usage(probe).free
        except OSError:
            free = None
        self._panel.show_cache(str(path), free)

    def offer_for_plan(self) -> None:
        """Offer to download the plan's model when it is a hub id not on this computer."""
        name = hub_id_to_download(self._model.value("model.name_or_path") or "")
        entry = next((e for e in self.entries if e.name == name), None)
        self._panel.offer_download(name, entry.download_bytes if entry is not None else 0)

    @property
    def downloading(self) -> str | None:
        return self._child_repo if self._child is not None else None

    @Slot(str)
    def start_download(self, repo_id: str) -> None:
        if self._child is not None or self.closed or not repo_id:
            return
        child = Supervisor(download_args(repo_id), DownloadProtocol())
        child.progressed.connect(self._on_child_progressed)
        child.completed.connect(self._on_child_completed)
        child.failed.connect(self._on_child_failed)
        child.finished.connect(self._on_child_finished)
        self._child, self._child_repo = child, repo_id
        self._panel.set_downloading(True)
        self._panel.show_download_message(f"Checking {repo_id} on the hub…")
        self._threads.start(child)

    def pause(self) -> None:
        if self._child is not None:
            self._child.request_stop()

    def cancel(self) -> None:
        if self._child is not None:
            self._child.send({"stop": "cancel"})

    def shutdown(self) -> None:
        """The window is closing: a download pauses (its partial file is kept for next time)."""
        self.closed = True
        self.pause()

    @Slot()
    def _on_panel_pause_requested(self) -> None:
        self.pause()

    @Slot()
    def _on_panel_cancel_requested(self) -> None:
        self.cancel()

    @Slot(object)
    def _on_child_progressed(self, event) -> None:
        if isinstance(event, DownloadStarted):
            self._panel.show_download_started(event.repo_id, event.total, len(event.files), event.cache_dir)
        else:
            self._panel.show_download_progress(event)

    @Slot(object)
    def _on_child_completed(self, result) -> None:
        repo = result.repo_id
        if result.outcome == "downloaded":
            self._panel.show_download_message(f"Downloaded {repo} to {result.path}. It is ready to train.")
            self._host.show_status(f"Downloaded {repo}", 5000)
            self.downloaded.emit(repo)
        elif result.outcome == "paused":
            self._panel.show_download_message(
                f"Paused {repo}; the partial file is kept. Download it again to continue where it stopped."
            )
        else:
            self._panel.show_download_message(f"Cancelled {repo}; the partial file was deleted.")

    @Slot(object)
    def _on_child_failed(self, e: ev.Failed) -> None:
        if self.closed:
            return
        self._panel.show_download_message(e.message, error=True)
        if "gated" in e.message:
            self._panel.show_token_entry(True)

    @Slot()
    def _on_child_finished(self) -> None:
        self._child = None
        self._panel.set_downloading(False)
        self.show_cache()
        if not self.closed:
            self.load()  # the "On disk" column and the offer follow what is now in the cache

    # -- logging in ------------------------------------------------------------------------
    @Slot(str)
    def _on_panel_token_entered(self, token: str) -> None:
        from headtune.core.tools.download import save_token, token_path

        self._panel.show_download_message("Checking the token with the hub…")

        def done(user: str) -> None:
            self._panel.token_edit.clear()
            self._panel.show_token_entry(False)
            self._panel.show_download_message(
                f"Logged in as {user}; the token is saved in {token_path()}, where huggingface_hub and "
                "`hf auth login` keep it. Download again."
            )

        self._tasks.run(
            "login",
            lambda: save_token(token),
            done,
            lambda m: self._panel.show_download_message(m, error=True),
            needs_transformers=False,
        )
