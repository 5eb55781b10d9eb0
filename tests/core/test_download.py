"""`headtune download` against a real HTTP server speaking the hub's protocol, with the real
``huggingface_hub`` client in a child process (``HF_ENDPOINT`` and ``HF_HOME`` point it there)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import CONFIG, FakeHub, Repo

from headtune.core.errors import ModelError
from headtune.core.model.sources import ModelSource, require_downloaded
from headtune.core.tools.download import wanted_files

BIG = 6 * 1024 * 1024


@pytest.fixture
def hub(tmp_path):
    server = FakeHub(piece=64 * 1024, pause_s=0.004).start()
    weights = os.urandom(BIG)
    server.repos["acme/big"] = Repo(
        {
            "config.json": CONFIG,
            "tokenizer.json": b"{}",
            "model.safetensors": weights,
            "pytorch_model.bin": b"an older copy of the weights",
            "original/consolidated.00.pth": b"yet another copy",
        }
    )
    server.repos["acme/gated"] = Repo({"config.json": CONFIG, "model.safetensors": b"w" * 1000}, gated=True)
    server.tokens_with_access.add("hf_granted")
    server.valid_tokens.update({"hf_granted", "hf_not_accepted"})
    server.home = tmp_path / "hf"
    yield server
    server.stop()


def env_for(hub: FakeHub, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE")}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(hub.home), "HF_HUB_OFFLINE": "0", **extra}


def start(hub: FakeHub, *args: str, prelude: str = "", **env) -> subprocess.Popen:
    code = prelude + "from headtune.core.cli import main; import sys; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, "download", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(hub, **env),
    )


def run(hub: FakeHub, *args: str, prelude: str = "", **env) -> tuple[int, list[dict], str]:
    proc = start(hub, *args, prelude=prelude, **env)
    out = proc.stdout.read()  # stdin stays open: closing it would pause the download
    err = proc.stderr.read()
    proc.wait(timeout=60)
    proc.stdin.close()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return proc.returncode, events, err


def stop_half_way(hub: FakeHub, how: str) -> list[dict]:
    """Download acme/big and send ``how`` once a third of the weights has arrived."""
    proc = start(hub, "acme/big", "--progress-json")
    events, sent = [], False
    for line in proc.stdout:
        events.append(json.loads(line))
        e = events[-1]
        if not sent and e.get("type") == "progress" and e["file"] == "model.safetensors" and e["file_bytes"] > BIG // 3:
            proc.stdin.write(how + "\n")
            proc.stdin.flush()
            sent = True
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert sent
    return events


def blobs(hub: FakeHub, repo: str = "acme/big") -> Path:
    return hub.home / "hub" / f"models--{repo.replace('/', '--')}" / "blobs"


def snapshot(hub: FakeHub, repo: str = "acme/big") -> Path:
    return hub.home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / hub.repos[repo].sha


def test_wanted_files_prefer_safetensors_at_the_top_level():
    names = ["config.json", "model.safetensors", "pytorch_model.bin", "original/consolidated.00.pth", ".gitattributes"]
    assert wanted_files(names) == ["config.json", "model.safetensors"]
    assert wanted_files(["config.json", "pytorch_model.bin", "flax_model.msgpack"]) == [
        "config.json",
        "pytorch_model.bin",
    ]


def test_download_reports_progress_and_fills_the_cache(hub):
    code, events, err = run(hub, "acme/big", "--progress-json")
    assert code == 0, err
    started, *progress, ended = events
    assert started["type"] == "download_started"
    assert [f for f, _ in started["files"]] == ["config.json", "model.safetensors", "tokenizer.json"]
    assert started["total"] == BIG + len(CONFIG) + 2 and started["cache_dir"] == str(hub.home / "hub")
    weights = [e for e in progress if e["file"] == "model.safetensors"]
    assert len(weights) >= 3  # several reports during the one large file
    assert all(a["bytes"] <= b["bytes"] for a, b in zip(progress, progress[1:]))
    assert any(e["speed"] > 0 and e["eta_s"] is not None for e in weights)
    assert progress[-1]["bytes"] == started["total"] and progress[-1]["files_done"] == 3
    assert ended["outcome"] == "downloaded" and ended["path"] == str(snapshot(hub))
    assert (snapshot(hub).parent.parent / "refs" / "main").read_text() == hub.repos["acme/big"].sha
    got = (snapshot(hub) / "model.safetensors").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(hub.repos["acme/big"].files["model.safetensors"]).digest()
    assert not list(blobs(hub).glob("*.incomplete"))
    fetched = {r.path.rsplit("/", 1)[1] for r in hub.requests("GET") if "/resolve/" in r.path}
    assert fetched == {"config.json", "model.safetensors", "tokenizer.json"}  # no .bin, no original/
    # The cache now serves the model by name, offline: what training and the catalog look for.
    check = "from headtune.core.model.sources import hub_weights_cached as c; print(c('acme/big'))"
    found = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=env_for(hub, HF_HUB_OFFLINE="1")
    )
    assert found.stdout.strip() == "True", found.stderr


def test_pause_keeps_the_partial_file_and_the_next_download_resumes_it_with_a_range(hub):
    events = stop_half_way(hub, "pause")
    assert events[-1]["outcome"] == "paused"
    (partial,) = blobs(hub).glob("*.incomplete")
    kept = partial.stat().st_size
    assert BIG // 3 < kept < BIG and events[-1]["partial_files"] == [str(partial)]
    assert not (snapshot(hub) / "model.safetensors").exists()

    hub.log.clear()
    code, events, err = run(hub, "acme/big", "--progress-json")
    assert code == 0, err
    (get,) = hub.requests("GET", "model.safetensors")
    assert get.range == f"bytes={kept}-"  # only the rest was asked for
    assert events[1]["bytes"] >= kept  # the first report counts what was already there
    data = (snapshot(hub) / "model.safetensors").read_bytes()
    assert data == hub.repos["acme/big"].files["model.safetensors"]
    assert not list(blobs(hub).glob("*.incomplete"))


def test_cancel_leaves_no_partial_file(hub):
    events = stop_half_way(hub, "cancel")
    assert events[-1]["outcome"] == "cancelled" and events[-1]["partial_files"] == []
    assert not list(blobs(hub).glob("*.incomplete"))
    assert not (snapshot(hub) / "model.safetensors").exists()
    # Nothing of the weights is in the cache under any name: every blob is a whole small file.
    assert all(p.stat().st_size < 1000 for p in blobs(hub).iterdir())


def test_cancel_from_the_terminal_deletes_what_a_pause_left(hub):
    stop_half_way(hub, "pause")
    assert list(blobs(hub).glob("*.incomplete"))
    code, _, _ = run(hub, "acme/big", "--cancel")
    assert code == 0 and not list(blobs(hub).glob("*.incomplete"))


def test_not_enough_disk_is_refused_before_any_file_is_fetched(hub):
    tiny_disk = "import shutil; shutil.disk_usage = lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6); "
    code, events, err = run(hub, "acme/big", "--progress-json", prelude=tiny_disk)
    assert code == 1
    assert events[-1]["type"] == "failed"
    message = events[-1]["message"]
    assert "Not enough disk space" in message and str(hub.home / "hub") in message and "HF_HOME" in message
    assert not [r for r in hub.requests("GET") if "/resolve/" in r.path]


def test_gated_model_says_how_to_accept_and_log_in(hub):
    code, events, err = run(hub, "acme/gated", "--progress-json")
    assert code == 2
    message = events[-1]["message"]
    assert "gated" in message and f"{hub.url}/acme/gated" in message and "accept the licence" in message
    assert "not logged in" in message and "Log in" in message and "hf auth login" in message
    assert [r.method for r in hub.requests(None, "config.json")] == ["HEAD"]  # detected before any download

    code, events, _ = run(hub, "acme/gated", "--progress-json", HF_TOKEN="hf_not_accepted")
    assert code == 2 and "has no access to it yet" in events[-1]["message"]  # the 403 answer

    code, events, err = run(hub, "acme/gated", "--progress-json", HF_TOKEN="hf_granted")
    assert code == 0, err
    assert events[-1]["outcome"] == "downloaded"


def test_the_token_is_checked_and_stored_where_huggingface_hub_keeps_it(hub):
    code = "from headtune.core.tools.download import save_token; import sys; print(save_token(sys.argv[1]))"
    ok = subprocess.run([sys.executable, "-c", code, "hf_granted"], capture_output=True, text=True, env=env_for(hub))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "tester"
    assert (hub.home / "token").read_text().strip() == "hf_granted"
    # The stored token is what the next download sends.
    rc, events, err = run(hub, "acme/gated", "--progress-json")
    assert rc == 0, err
    assert all(r.auth == "Bearer hf_granted" for r in hub.requests("GET", "model.safetensors"))
    bad = subprocess.run([sys.executable, "-c", code, "hf_nonsense"], capture_output=True, text=True, env=env_for(hub))
    assert bad.returncode != 0 and "refused this access token" in bad.stderr


def test_offline_says_plainly_that_it_needs_a_network(hub):
    code, events, _ = run(hub, "acme/big", "--progress-json", HF_HUB_OFFLINE="1")
    assert code == 1 and "needs a network connection" in events[-1]["message"]
    assert "HF_HUB_OFFLINE" in events[-1]["message"]
    nowhere = hub.url.rsplit(":", 1)[0] + ":9"  # nothing listens on the discard port
    code, events, _ = run(hub, "acme/big", "--progress-json", HF_ENDPOINT=nowhere)
    assert (
        code == 1
        and "needs a network connection" in events[-1]["message"]
        and "could not be reached" in (events[-1]["message"])
    )


def test_terminal_download_prints_a_progress_bar(hub):
    code, _, err = run(hub, "acme/big")
    assert code == 0
    assert "Downloading acme/big (3 files" in err and "100%" in err and "MB/s" in err


def test_training_refuses_a_hub_model_that_is_not_downloaded(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    source = ModelSource("hub", "acme/big", "acme/big")
    with pytest.raises(ModelError, match=r"not downloaded yet.*headtune download acme/big.*never starts"):
        require_downloaded(source)
    # Once the weights are in the cache, it goes ahead.
    snap = tmp_path / "hub" / "models--acme--big" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_bytes(CONFIG)
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "m-1.safetensors"}}))
    refs = tmp_path / "hub" / "models--acme--big" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    with pytest.raises(ModelError):  # a shard named by the index is missing
        require_downloaded(source)
    (snap / "m-1.safetensors").write_bytes(b"x")
    require_downloaded(source)


@pytest.mark.slow
def test_a_downloaded_model_loads_for_training_offline(hub, tiny_tied):
    hub.repos["acme/tiny"] = Repo({p.name: p.read_bytes() for p in tiny_tied.iterdir() if p.is_file()})
    code, events, err = run(hub, "acme/tiny", "--progress-json")
    assert code == 0, err
    load = (
        "from headtune.core.model.sources import load_model, load_tokenizer, resolve_source\n"
        "from headtune.core.plan import plan_from_dict\n"
        "spec = plan_from_dict({'model': {'name_or_path': 'acme/tiny', 'dtype': 'float32'}}, check=False).model\n"
        "source = resolve_source('acme/tiny')\n"
        "model = load_model(source, spec, 'cpu')\n"
        "print(source.kind, len(load_tokenizer(source)), model.config.vocab_size)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", load], capture_output=True, text=True, env=env_for(hub, HF_HUB_OFFLINE="1")
    )
    assert done.returncode == 0, done.stderr[-2000:]
    kind, _tokens, vocab = done.stdout.split()
    assert kind == "hub" and int(vocab) == 512
