"""The Model tab's catalog: badges follow the plan and the card, filters, choosing, downloading."""

from __future__ import annotations

import os

import pytest
from hub_server import CONFIG, FakeHub, Repo

from headtune.core.estimate import GiB
from headtune.core.testing import plan_dict
from headtune.core.tools.catalog import compute_badges


def set_card(w, gib: int) -> None:
    combo = w.memory_panel.target_combo
    combo.setCurrentIndex(combo.findData(f"gpu:{gib * GiB}"))


def badge_texts(panel, name: str) -> list[str]:
    return panel.badge_texts(name)


@pytest.fixture
def empty_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf"


def test_catalog_badges_are_the_estimate_and_follow_plan_and_card(
    make_window, qtbot, empty_cache, tiny_tied, alpaca_file, tmp_path
):
    w = make_window(plan_dict(tiny_tied, alpaca_file, tmp_path / "run"), detect=False)
    panel = w.model_panel.catalog
    qtbot.waitUntil(lambda: panel.table.rowCount() >= 40, timeout=10_000)
    set_card(w, 12)
    qtbot.waitUntil(lambda: "12.0 GiB" in panel.card.text(), timeout=5_000)
    name = "meta-llama/Llama-3.2-3B-Instruct"
    entry = next(e for e in w.catalog.entries if e.name == name)
    expected = compute_badges(w.plan.plan(check=False), [entry], "cuda", 12 * GiB).rows[name]
    assert badge_texts(panel, name) == [b.text() for b in expected]
    headers = [panel.table.horizontalHeaderItem(c).text() for c in range(panel.table.columnCount())]
    assert headers[2:6] == ["LoRA only", "+ full", "+ tokens (256 rows)", "+ lora"]
    assert headers[:2] == ["Model", "Size"] and headers[6:] == ["Vocabulary", "Tied", "Context", "Licence", "On disk"]
    tip = panel.table.item(panel._names.index(name), 3).toolTip()
    assert (
        "headtune estimate PLAN --worst-case --device cuda --gpu-memory 12GiB" in tip and "embeddings.mode=full" in tip
    )

    before = badge_texts(panel, name)
    w.plan.set("data.max_seq_len", 4096)  # a plan change recomputes every badge
    qtbot.waitUntil(lambda: badge_texts(panel, name) != before, timeout=5_000)
    after = compute_badges(w.plan.plan(check=False), [entry], "cuda", 12 * GiB).rows[name]
    assert badge_texts(panel, name) == [b.text() for b in after]
    set_card(w, 80)  # a bigger card: everything fits
    qtbot.waitUntil(lambda: all(t.startswith("fits") for t in badge_texts(panel, name)), timeout=5_000)


def test_search_and_filters_and_choosing_a_model(make_window, qtbot, empty_cache, tiny_tied, alpaca_file, tmp_path):
    w = make_window(
        plan_dict(tiny_tied, alpaca_file, tmp_path / "run", embeddings={"train_embeddings": True}), detect=False
    )
    panel = w.model_panel.catalog
    qtbot.waitUntil(lambda: panel.table.rowCount() >= 40, timeout=10_000)
    set_card(w, 8)
    total = panel.table.rowCount()
    panel.search.setText("smollm2 instruct")
    assert panel.table.rowCount() == 3 and all("SmolLM2" in n and "Instruct" in n for n in panel._names)
    panel.search.clear()
    panel.size.setCurrentText("9 B and more")
    assert 0 < panel.table.rowCount() < total
    panel.size.setCurrentText("any size")
    panel.fit.setCurrentText("fits: + full")
    fitting = list(panel._names)
    assert fitting and "Qwen/Qwen2.5-14B" not in fitting and len(fitting) < total
    panel.select("HuggingFaceTB/SmolLM2-360M-Instruct")
    panel.use_button.click()
    assert w.plan.value("model.name_or_path") == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_download_from_the_window_shows_progress_and_gated_asks_for_a_token(
    make_window, qtbot, monkeypatch, tmp_path, empty_cache, tiny_tied, alpaca_file
):
    hub = FakeHub(pause_s=0.003).start()
    hub.repos["acme/small"] = Repo({"config.json": CONFIG, "model.safetensors": os.urandom(3 * 1024 * 1024)})
    hub.repos["acme/gated"] = Repo({"config.json": CONFIG, "model.safetensors": b"w" * 100}, gated=True)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(empty_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        plan = plan_dict(tiny_tied, alpaca_file, tmp_path / "run", model={"name_or_path": "acme/small"})
        w = make_window(plan, detect=False)
        panel = w.model_panel.catalog
        qtbot.waitUntil(lambda: panel.offer_button.isVisible(), timeout=10_000)
        assert "acme/small is not on this computer" in panel.download_status.text()
        assert str(empty_cache / "hub") in panel.cache_label.text()
        details = []
        panel.progress.valueChanged.connect(lambda _v: details.append(panel.download_detail.text()))
        panel.offer_button.click()
        qtbot.waitUntil(lambda: "Downloaded acme/small" in panel.download_status.text(), timeout=60_000)
        assert any("MB/s" in d and "model.safetensors" in d for d in details)
        assert panel.progress.value() == 1000
        qtbot.waitUntil(lambda: not panel.offer_button.isVisible() and w.catalog.downloading is None, timeout=30_000)

        saved = []
        monkeypatch.setattr("headtune.core.tools.download.save_token", lambda t: saved.append(t) or "tester")
        panel.download_requested.emit("acme/gated")
        qtbot.waitUntil(lambda: "is gated" in panel.download_status.text(), timeout=60_000)
        assert "accept the licence" in panel.download_status.text() and panel.token_widget.isVisible()
        panel.token_edit.setText("hf_secret")
        panel.token_save.click()
        qtbot.waitUntil(lambda: "Logged in as tester" in panel.download_status.text(), timeout=10_000)
        assert saved == ["hf_secret"] and not panel.token_widget.isVisible()
    finally:
        hub.stop()


def test_start_offers_to_download_an_uncached_hub_model_first(
    make_window, qtbot, monkeypatch, empty_cache, tiny_tied, alpaca_file, tmp_path
):
    from PySide6.QtWidgets import QMessageBox

    # Online as far as the offer is concerned (the window's own lookups stay offline: no real hub).
    monkeypatch.setattr("headtune.core.tools.download.offline", lambda: False)
    plan = plan_dict(tiny_tied, alpaca_file, tmp_path / "run", model={"name_or_path": "Qwen/Qwen3-0.6B"})
    w = make_window(plan, detect=False)
    asked, started = [], []
    w.ask = lambda title, *a: asked.append(title) or QMessageBox.StandardButton.Yes
    monkeypatch.setattr(w.catalog, "start_download", started.append)
    w.runs.start_run()
    assert asked == ["Download the model first?"] and started == ["Qwen/Qwen3-0.6B"]
    assert not w.running and w.plan_tabs.currentWidget() is w.model_panel
    w.ask = lambda *a: QMessageBox.StandardButton.Discard


@pytest.mark.slow
def test_pause_resume_and_cancel_from_the_window(
    make_window, qtbot, monkeypatch, tmp_path, empty_cache, tiny_tied, alpaca_file
):
    hub = FakeHub(piece=64 * 1024, pause_s=0.02).start()  # about 3 s for the weights
    weights = os.urandom(8 * 1024 * 1024)
    hub.repos["acme/slow"] = Repo({"config.json": CONFIG, "model.safetensors": weights})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(empty_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    blobs = empty_cache / "hub" / "models--acme--slow" / "blobs"
    try:
        w = make_window(plan_dict(tiny_tied, alpaca_file, tmp_path / "run"), detect=False)
        panel = w.model_panel.catalog
        for how, button in (("Paused", panel.pause_button), ("Cancelled", panel.cancel_button)):
            panel.download_requested.emit("acme/slow")
            qtbot.waitUntil(lambda: panel.progress.value() > 100, timeout=60_000)
            assert button.isVisible()
            button.click()
            qtbot.waitUntil(lambda h=how: panel.download_status.text().startswith(h), timeout=30_000)
            qtbot.waitUntil(lambda: w.catalog.downloading is None, timeout=30_000)
            partial = list(blobs.glob("*.incomplete"))
            if how == "Paused":
                assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(weights)
            else:
                assert partial == []
        hub.log.clear()
        panel.download_requested.emit("acme/slow")  # after a pause and a cancel: whole again
        qtbot.waitUntil(lambda: panel.download_status.text().startswith("Downloaded acme/slow"), timeout=60_000)
        snapshot = empty_cache / "hub" / "models--acme--slow" / "snapshots" / hub.repos["acme/slow"].sha
        assert (snapshot / "model.safetensors").read_bytes() == weights
    finally:
        hub.stop()
