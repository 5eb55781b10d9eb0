"""The window's three speed targets, measured side by side in one run.

    python benchmarks/window.py            # about 7 minutes on 2 CPU cores
    python benchmarks/window.py --quick    # fewer repeats and steps

1. Launch: time from starting ``headtune`` (no arguments: the window on the demo plan) to the
   window shown with its first events processed (target <= 2 s), and to its plots drawn as well
   (they are built right after the first paint). Each launch is a fresh process.
2. Responsiveness: the longest gap of a 10 ms heartbeat ``QTimer`` on the UI thread while a CPU
   training run goes on in the window's worker thread (target: stall <= 50 ms, stall = gap - 10 ms).
   Reported for the whole run (model loading included) and for the training steps alone.
3. Throughput: optimizer steps per second of the same plan in the window and under
   ``headtune train`` (a subprocess), runs alternated (order flipped each round); the ratio of
   the medians, window / CLI (target >= 0.97), and each round's ratio to show the noise.
   Steps/s is taken from the ``time`` of the ``step`` events, after the first few (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from headtune.core.testing import ALPACA_ROWS, build_model, build_tokenizer, plan_dict, write_jsonl

WARMUP_STEPS = 5
# A small Llama whose CPU step is compute-bound (about 0.5 s here), like real CPU fine-tuning.
HIDDEN = 512


def launch_times(n: int, workdir: Path) -> tuple[list[float], list[float]]:
    """Seconds from process start to the window shown, and to its plots built."""
    env = dict(os.environ, HEADTUNE_EXIT_AFTER_SHOWN="1", XDG_CONFIG_HOME=str(workdir / "config"))
    shown, ready = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "headtune.gui.launcher"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=workdir,
        )
        marks = {}
        for line in proc.stdout:
            if line.startswith(("HEADTUNE_SHOWN", "HEADTUNE_READY")):
                marks[line.split()[0]] = time.perf_counter() - t0
        proc.wait()
        if len(marks) != 2 or proc.returncode != 0:
            raise SystemExit(f"the window did not start (exit code {proc.returncode})")
        shown.append(marks["HEADTUNE_SHOWN"])
        ready.append(marks["HEADTUNE_READY"])
    return shown, ready


def steps_per_s(run_dir: Path) -> float:
    steps = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    steps = [e for e in steps if e["type"] == "step"][WARMUP_STEPS:]
    return (len(steps) - 1) / (steps[-1]["time"] - steps[0]["time"])


def cli_run(plan_file: Path) -> float:
    run_dir = plan_file.parent / "cli-out"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "headtune.core.cli",
            "train",
            str(plan_file),
            "--quiet",
            "--set",
            f"output.dir={run_dir}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    sps = steps_per_s(run_dir)
    import shutil

    shutil.rmtree(run_dir)
    return sps


def window_run(app, plan_data: dict, run_dir: Path, heartbeat: bool) -> tuple[float, float, float, float]:
    """(steps/s, longest stall over the whole run in ms, longest stall during steps in ms, the
    window process's own CPU use during the run as a share of one core).

    The heartbeat (100 wake-ups a second of the UI thread) is the stall meter; it preempts the
    training threads, so throughput rounds run without it."""
    from PySide6.QtCore import QEventLoop, QSettings, QTimer

    from headtune.core.plan import plan_from_dict
    from headtune.gui.main_window import MainWindow

    data = json.loads(json.dumps(plan_data))
    data["output"]["dir"] = str(run_dir)
    settings = QSettings(str(run_dir.parent / "bench-settings.ini"), QSettings.Format.IniFormat)
    w = MainWindow(plan_from_dict(data), settings=settings, detect=False)
    w.show()
    deadline = time.time() + 120
    while (w.preview.summary is None or w.threads.running()) and time.time() < deadline:
        app.processEvents()
        time.sleep(0.01)
    beats: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    if heartbeat:
        timer.start()
    loop = QEventLoop()
    import psutil

    me = psutil.Process()
    cpu0, wall0 = me.cpu_times(), time.perf_counter()
    w.runs.start_run()
    w.runs.run_ended.connect(loop.quit)
    loop.exec()  # the UI thread idles in the event loop, as in the app
    timer.stop()
    cpu1, wall1 = me.cpu_times(), time.perf_counter()
    own_cpu = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / (wall1 - wall0)
    app.processEvents()
    first_step = _first_step_time(run_dir)
    gaps_all = [b - a for a, b in zip(beats, beats[1:])] or [0.010]
    gaps_steps = [b - a for a, b in zip(beats, beats[1:]) if a >= first_step] or [0.010]
    w.shutdown()
    w.ask = lambda *a: None
    w.file.confirm_discard = lambda: True
    w.close()
    w.deleteLater()
    app.processEvents()
    sps = steps_per_s(run_dir)
    import shutil

    shutil.rmtree(run_dir)
    return sps, (max(gaps_all) - 0.010) * 1000, (max(gaps_steps) - 0.010) * 1000, own_cpu


def _first_step_time(run_dir: Path) -> float:
    """The first step event's time, on the perf_counter clock (events carry wall time)."""
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    first = next(e["time"] for e in events if e["type"] == "step")
    return time.perf_counter() - (time.time() - first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    launches, reps, stall_runs, steps = (3, 2, 1, 30) if args.quick else (5, 6, 2, 40)

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        times, ready = launch_times(launches, tmp)
        tok = build_tokenizer(tmp / "tok")
        model = build_model(tmp / "model", tok, vocab_size=512, tied=False, hidden=HIDDEN, layers=4)
        rows = ALPACA_ROWS * 8
        data_file = write_jsonl(tmp / "data.jsonl", rows)
        plan_data = plan_dict(
            model,
            data_file,
            tmp / "unused",
            training={"max_steps": steps, "batch_size": 8, "eval_every": 0, "save_every": 0, "learning_rate": 1e-3},
        )
        plan_data["data"]["max_seq_len"] = 128
        from headtune.core.plan import plan_from_dict

        plan_file = tmp / "plan.yaml"
        plan_from_dict(plan_data).save(plan_file)
        cli, win, stall_all, stall_steps, beat_sps, own_cpu = [], [], [], [], [], []
        for i in range(reps):  # throughput: alternated, and the order flips each round

            def in_window(i=i):
                sps, _, _, cpu = window_run(app, plan_data, tmp / f"win-{i}", heartbeat=False)
                win.append(sps)
                own_cpu.append(cpu)

            pair = [in_window, lambda: cli.append(cli_run(plan_file))]
            for run in pair if i % 2 == 0 else pair[::-1]:
                run()
        for i in range(stall_runs):  # responsiveness, with the heartbeat
            sps, s_all, s_steps, _ = window_run(app, plan_data, tmp / f"beat-{i}", heartbeat=True)
            stall_all.append(s_all)
            stall_steps.append(s_steps)
            beat_sps.append(sps)

    print(
        f"Window benchmark ({launches} launches; {reps} x {steps}-step runs each way, alternated; "
        f"{stall_runs} more in the window with the heartbeat)\n"
    )
    print(f"{'measure':52} {'value':>12} {'target':>10}")
    print(f"{'launch to window shown, median (s)':52} {statistics.median(times):12.2f} {'<= 2.00':>10}")
    print(f"{'launch to window shown, worst (s)':52} {max(times):12.2f}")
    print(f"{'launch to plots drawn too, median (s)':52} {statistics.median(ready):12.2f}")
    print(f"{'longest UI stall during training steps (ms)':52} {max(stall_steps):12.1f} {'<= 50':>10}")
    print(f"{'longest UI stall, whole run incl. model load (ms)':52} {max(stall_all):12.1f}")
    print(f"{'steps/s in the window with the heartbeat on':52} {statistics.median(beat_sps):12.3f}")
    print(f"{'steps/s in the window (median)':52} {statistics.median(win):12.3f}")
    print(f"{'steps/s with headtune train (median)':52} {statistics.median(cli):12.3f}")
    ratio = statistics.median(win) / statistics.median(cli)
    rounds = [w / c for w, c in zip(win, cli)]
    print(f"{'throughput ratio window / CLI (medians)':52} {ratio:12.3f} {'>= 0.97':>10}")
    print(f"{'  median of the per-round ratios':52} {statistics.median(rounds):12.3f}")
    print(f"  per round: {' '.join(f'{r:.3f}' for r in rounds)}")
    print(f"{'window process CPU during a run (% of one core)':52} {100 * statistics.median(own_cpu):12.1f}")
    print(f"  CLI alone varies {min(cli):.3f} to {max(cli):.3f} steps/s between rounds on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
