"""Never losing a run: kill -9 at every stage of a save, then resume; one writer per run folder;
resuming a finished run; checkpoints without their training state; files that are not plain
tensors; SIGTERM.

The kills are real SIGKILLs of a real ``headtune train`` process: the process runs the command
line through a small driver (below) that wraps one save function so the process kills itself at
the chosen moment, which makes every stage reachable on purpose rather than by timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from headtune.core import runfolder
from headtune.core.cli import main
from headtune.core.errors import RunError, RunFolderBusyError
from headtune.core.runfolder import RunFolder
from headtune.core.testing import plan_dict

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and SIGTERM are POSIX signals")

DRIVER = r"""
import os, signal, sys, time
from pathlib import Path

stage, at = os.environ["HT_TEST_KILL"], int(os.environ.get("HT_TEST_AT", "0"))
from headtune.core import runfolder
from headtune.core.training import trainer


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if stage == "checkpoint_files":  # the weights are written, the optimizer state not yet
    save = trainer.HeadtuneTrainer._save_optimizer_and_scheduler

    def cut(self, output_dir):
        if self.state.global_step == at:
            die()
        save(self, output_dir)

    trainer.HeadtuneTrainer._save_optimizer_and_scheduler = cut
elif stage in ("checkpoint_seal", "adapter_files"):  # every file written, the manifest not
    seal = runfolder.seal
    target = f"checkpoint-{at}" if stage == "checkpoint_seal" else runfolder.ADAPTER_TMP

    def cut(folder, **info):
        if Path(folder).name == target:
            die()
        return seal(folder, **info)

    runfolder.seal = cut
elif stage == "rotation":  # half way through deleting the oldest checkpoint
    import shutil

    rmtree = shutil.rmtree

    def cut(path, *args, **kwargs):
        if "deleting-" in Path(path).name:
            next(p for p in Path(path).iterdir() if p.is_file()).unlink()
            die()
        return rmtree(path, *args, **kwargs)

    shutil.rmtree = cut
elif stage == "adapter_swap":  # the old adapter moved aside, the new one not yet in place
    replace = os.replace

    def cut(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        if Path(dst).name == runfolder.ADAPTER_OLD:
            die()

    os.replace = cut
elif stage == "hold":  # wait at the first step until the test says go
    on_step_end = trainer.JobCallback.on_step_end

    def hold(self, args, state, control, **kw):
        if state.global_step == 1:
            Path(os.environ["HT_TEST_HOLDING"]).write_text("1")
            deadline = time.time() + 120
            while not Path(os.environ["HT_TEST_GO"]).exists() and time.time() < deadline:
                time.sleep(0.05)
        return on_step_end(self, args, state, control, **kw)

    trainer.JobCallback.on_step_end = hold

from headtune.core.cli import main

sys.exit(main(sys.argv[1:]))
"""


def write_plan(tmp_path, model_dir, data_file, name, **training) -> Path:
    sections = {"max_steps": 6, "save_every": 2, "save_total_limit": 2, **training}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(plan_dict(model_dir, data_file, tmp_path / name, training=sections)))
    return path


def headtune(args, stage: str = "none", at: int = 0, cwd=None, **env) -> subprocess.CompletedProcess:
    """``headtune`` in a fresh process, through the driver (which kills it at ``stage``)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HT_TEST_KILL": stage, "HT_TEST_AT": str(at), **env}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *map(str, args)], capture_output=True, text=True, env=env, timeout=300, cwd=cwd
    )


def adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_untied):
    """The adapter of an uninterrupted 6-step run, to compare interrupted ones against."""
    from headtune.core.testing import ALPACA_ROWS, write_jsonl

    tmp = tmp_path_factory.mktemp("straight")
    data = write_jsonl(tmp / "data.jsonl", ALPACA_ROWS)
    done = headtune(["train", write_plan(tmp, tiny_untied, data, "run")])
    assert done.returncode == 0, done.stderr
    return adapter(tmp / "run"), data


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, at, resumes_from",
    [
        ("checkpoint_files", 4, "checkpoint-2"),  # cut while checkpoint-4's files are written
        ("checkpoint_seal", 4, "checkpoint-2"),  # all of checkpoint-4 written, never sealed
        ("rotation", 6, "checkpoint-6"),  # checkpoint-2 half deleted after checkpoint-6 was placed
        ("adapter_files", 0, "checkpoint-6"),  # the final adapter written, never sealed
    ],
)
def test_kill_during_a_save_then_resume_gives_the_uninterrupted_adapter(
    tmp_path, tiny_untied, straight, stage, at, resumes_from
):
    expected, data = straight
    plan = write_plan(tmp_path, tiny_untied, data, "run")
    run = tmp_path / "run"
    killed = headtune(["train", plan], stage, at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not RunFolder(run).has_adapter()
    # Whatever the kill left, every checkpoint under its final name is whole.
    for ckpt in RunFolder(run).checkpoints():
        assert runfolder.verify(ckpt).complete, ckpt

    resumed = headtune(["train", "--resume", run])
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from {resumes_from}" in resumed.stderr
    if resumes_from == "checkpoint-2":
        assert "Removed checkpoint-4: its write was cut short" in resumed.stderr
    assert not (run / "checkpoints" / runfolder.STAGING).exists()
    assert_identical(adapter(run), expected)
    assert RunFolder(run).adapter_info()["finished"] is True
    # Resuming again changes nothing: the run is finished.
    again = headtune(["train", "--resume", run])
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stderr
    assert_identical(adapter(run), expected)


@pytest.mark.slow
def test_kill_between_the_adapter_swap_keeps_a_complete_adapter(tmp_path, tiny_untied, straight):
    expected, data = straight
    run = tmp_path / "run"
    first = headtune(["train", write_plan(tmp_path, tiny_untied, data, "run", max_steps=4)])
    assert first.returncode == 0, first.stderr
    killed = headtune(["train", "--resume", run, "--set", "training.max_steps=6"], "adapter_swap")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Killed between the two renames: no adapter/ at all, the old and the new one beside it.
    assert not (run / "adapter").exists()
    assert (run / runfolder.ADAPTER_OLD).is_dir() and (run / runfolder.ADAPTER_TMP).is_dir()

    # The next command that takes the run's lock puts the new adapter in place; the run is done.
    again = headtune(["train", "--resume", run, "--set", "training.max_steps=6"])
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stderr
    assert "Restored adapter/ from adapter.tmp" in again.stderr
    assert not (run / runfolder.ADAPTER_OLD).exists() and not (run / runfolder.ADAPTER_TMP).exists()
    assert_identical(adapter(run), expected)


@pytest.mark.slow
def test_two_trains_on_one_folder_one_is_refused_naming_the_pid(tmp_path, tiny_untied, alpaca_file, capsys):
    plan = write_plan(tmp_path, tiny_untied, alpaca_file, "run", max_steps=3, save_every=0)
    holding, go = tmp_path / "holding", tmp_path / "go"
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "HT_TEST_KILL": "hold",
        "HT_TEST_HOLDING": str(holding),
        "HT_TEST_GO": str(go),
    }
    first = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "train", str(plan)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while not holding.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert holding.exists(), first.stderr.read() if first.poll() is not None else "never reached step 1"
        second = headtune(["train", plan])
        assert second.returncode == 2
        assert f"PID {first.pid}" in second.stderr and "is in use" in second.stderr
        # An export of the run that is still writing is refused too.
        out = tmp_path / "export"
        capsys.readouterr()
        assert main(["export", str(tmp_path / "run"), "--format", "adapter", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "is still being written" in err and f"PID {first.pid}" in err
        assert not out.exists()
    finally:
        go.write_text("1")
        out_text, err_text = first.communicate(timeout=120)
    assert first.returncode == 0, err_text
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events].count("started") == 1
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3]
    # The holder has ended, so the lock is free: the export goes through now.
    assert main(["export", str(tmp_path / "run"), "--format", "adapter", "--out", str(tmp_path / "export")]) == 0


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    folder = RunFolder(tmp_path)
    with folder.lock("training"):
        with pytest.raises(RunFolderBusyError, match=f"PID {os.getpid()}"):
            folder.lock("training").acquire()
        assert folder.lock_holder()["pid"] == os.getpid()
    assert folder.lock_holder() is None
    # A holder killed with SIGKILL leaves the file but not the lock.
    code = (
        "import os, signal, sys; from headtune.core.runfolder import RunFolder; "
        "RunFolder(sys.argv[1]).lock('training').acquire(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    assert proc.returncode == -signal.SIGKILL and folder.lock_file.is_file()
    assert folder.lock_holder() is None
    with folder.lock("training"):
        pass


def _trained(tmp_path, tiny_untied, alpaca_file, **training) -> Path:
    plan = write_plan(tmp_path, tiny_untied, alpaca_file, "run", max_steps=4, **training)
    assert main(["train", str(plan), "--quiet"]) == 0
    return tmp_path / "run"


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run but the lock file (whose holder's PID and time change with each holder)."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != runfolder.LOCK
    }


def test_resuming_a_finished_run_does_nothing(tmp_path, tiny_untied, alpaca_file, capsys):
    run = _trained(tmp_path, tiny_untied, alpaca_file)
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "Nothing to do: the run already finished 4 steps" in out and "step 5" not in out
    assert _snapshot(run) == before  # adapter, checkpoints and events untouched
    # A larger budget trains on, from step 5.
    assert main(["train", "--resume", str(run), "--set", "training.max_steps=5"]) == 0
    out = capsys.readouterr().out
    assert "step 5/5" in out and "Finished 5 steps" in out


def test_checkpoint_without_optimizer_state_is_refused(tmp_path, tiny_untied, alpaca_file, capsys):
    run = _trained(tmp_path, tiny_untied, alpaca_file)
    (run / "checkpoints" / "checkpoint-4" / "optimizer.pt").unlink()
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "training.max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint-4" in err and "lacks optimizer.pt" in err and "--resume-fresh-optimizer" in err
    assert _snapshot(run) == before
    # The explicit opt-in continues with fresh optimizer state, and says so.
    assert main(["train", "--resume", str(run), "--set", "training.max_steps=6", "--resume-fresh-optimizer"]) == 0
    captured = capsys.readouterr()
    assert "without optimizer.pt" in captured.err and "Finished 6 steps" in captured.out


class _Payload:
    """Unpickling this creates the marker file: what a planted pickle could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["optimizer.pt", "rng_state.pth", "matrix_optimizer.pt"])
def test_planted_pickle_is_refused_and_never_runs(tmp_path, tiny_untied, alpaca_file, capsys, name):
    run = _trained(tmp_path, tiny_untied, alpaca_file)
    ckpt = run / "checkpoints" / "checkpoint-4"
    marker = tmp_path / "payload-ran"
    torch.save({"state": _Payload(marker)}, ckpt / name)
    (ckpt / runfolder.MANIFEST).unlink()
    runfolder.seal(ckpt, step=4)  # a consistent folder, as someone sending it could make it
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "training.max_steps=6"]) == 2
    err = capsys.readouterr().err
    assert f"Refused to load {ckpt / name}" in err and "could run code" in err
    assert not marker.exists()


def test_no_unsafe_torch_load_in_core():
    core = Path(__file__).resolve().parents[2] / "core"
    offenders = [str(p) for p in core.rglob("*.py") if "weights_only=False" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_checkpoint_that_will_not_fit_on_disk_is_refused_before_writing(
    tmp_path, tiny_untied, alpaca_file, monkeypatch
):
    import shutil

    from headtune.core.plan import plan_from_dict
    from headtune.core.training import job as job_mod
    from headtune.core.training.job import TrainingJob

    monkeypatch.setattr(job_mod, "_free_bytes", lambda path: 1 << 40)  # the check at the start passes
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1024))
    plan = plan_from_dict(plan_dict(tiny_untied, alpaca_file, tmp_path / "run", training={"save_every": 2}))
    with pytest.raises(RunError, match="Not enough free disk space to save the checkpoint-2"):
        TrainingJob(plan).run()
    assert RunFolder(tmp_path / "run").checkpoints() == []
    assert not any((tmp_path / "run" / "checkpoints").rglob("*.safetensors"))


@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_and_the_adapter(tmp_path, tiny_untied, alpaca_file):
    plan = write_plan(tmp_path, tiny_untied, alpaca_file, "run", max_steps=500, save_every=0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "headtune.core.cli", "train", str(plan)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Stopped at step" in out
    folder = RunFolder(tmp_path / "run")
    assert folder.latest_checkpoint() is not None and folder.has_adapter()
    assert folder.adapter_info()["finished"] is False


def test_fused_step_states_resume_through_the_safe_loader(tmp_path, tiny_untied, alpaca_file, capsys):
    """The fused step's per-matrix optimizer states (matrix_optimizer.pt, 8-bit) load with
    ``weights_only=True`` and give the same adapter as never stopping."""
    lean = [
        "--set=memory.fused_step=true",
        "--set=memory.matrix_states=8bit",
        "--set=training.max_grad_norm=0",
        "--set=embeddings.train_embeddings=true",
        "--set=embeddings.mode=full",
        "--quiet",
    ]
    straight = write_plan(tmp_path, tiny_untied, alpaca_file, "straight", max_steps=4)
    assert main(["train", str(straight), *lean]) == 0
    split = write_plan(tmp_path, tiny_untied, alpaca_file, "split", max_steps=2)
    assert main(["train", str(split), *lean]) == 0
    assert (tmp_path / "split" / "checkpoints" / "checkpoint-2" / "matrix_optimizer.pt").is_file()
    assert main(["train", "--resume", str(tmp_path / "split"), "--set", "training.max_steps=4", "--quiet"]) == 0
    assert_identical(adapter(tmp_path / "split"), adapter(tmp_path / "straight"))
