"""``headtune train`` on several devices: starts ``torch.distributed.run`` itself.

A plan with ``training.devices`` > 1 (or 0: every GPU) is run by PyTorch's own launcher, one
process per device, each running the same ``headtune train`` command line (they see
``WORLD_SIZE`` and train as one rank each; ``core.training.distributed`` keeps them in step).
This process stays in front as the one a person or the window talks to:

- the processes run in a session of their own, so a Ctrl+C in the terminal reaches this process
  only; it asks them to stop (SIGTERM: a checkpoint and the adapter are saved, every rank stops
  after the same step), and a second Ctrl+C aborts them;
- with ``--events-json`` the window reads rank 0's JSON lines (the other ranks print nothing) and
  its ``stop`` line, or stdin closing, reaches this process, which stops the run as above;
- the exit code is rank 0's (0 done or stopped, 2 bad input, 1 a failure): each process writes
  its own into a temporary folder, since torchrun itself reports any failure as 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..errors import PlanError
from ..plan import Plan

SUPERVISED_ENV = "HEADTUNE_LAUNCHER_DIR"  # each process writes its exit code there (core.cli reads the name)


def devices_for(plan: Plan) -> int:
    """How many processes the plan asks for on this computer (``training.devices``, 0 = every GPU)."""
    import torch

    want = plan.training.devices
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if want == 0:
        return max(1, gpus)
    if gpus and want > gpus:
        raise PlanError(
            f"training.devices: {want} processes were asked for, and this computer has {gpus} GPU"
            f"{'s' if gpus > 1 else ''}. Set training.devices to {gpus} or less (0 takes every GPU).",
            "training.devices",
        )
    return want


# torch.distributed.run's own entry point, minus its failure report (a traceback-like summary
# of which rank failed): the ranks have said what went wrong, and this process turns their exit
# codes into Headtune's.
AGENT = (
    "import logging, sys\n"
    "logging.getLogger('torch.distributed.elastic').setLevel(logging.CRITICAL)\n"
    "from torch.distributed.elastic.multiprocessing.errors import ChildFailedError\n"
    "from torch.distributed.run import parse_args, run\n"
    "try:\n"
    "    run(parse_args(sys.argv[1:]))\n"
    "except ChildFailedError:\n"
    "    sys.exit(1)\n"
)


def launcher_args(nproc: int, argv: list[str]) -> list[str]:
    """torchrun's arguments that run ``headtune train ARGV`` in ``nproc`` processes here."""
    return [
        "--standalone",  # one machine: a free port and a local rendezvous, found by torchrun
        f"--nproc_per_node={nproc}",
        "-m",
        "headtune.core.cli",
        *argv,
    ]


def launch_if_wanted(plan: Plan, argv: list[str], events_json: bool = False) -> int | None:
    """Run ``headtune train ARGV`` under torch.distributed.run when the plan asks for more than one
    device; the exit code, or None when one process it is (the caller trains in-process)."""
    nproc = devices_for(plan)
    if nproc <= 1:
        return None
    return run_processes(launcher_args(nproc, argv), nproc, events_json)


def _children(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def run_processes(torchrun_args: list[str], nproc: int, events_json: bool) -> int:
    """Run torch.distributed.run with ``torchrun_args`` and supervise it; rank 0's exit code."""
    with tempfile.TemporaryDirectory(prefix="headtune-launch-") as folder:
        env = dict(os.environ, **{SUPERVISED_ENV: folder})
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        if not events_json:
            print(f"Starting {nproc} processes: torchrun {' '.join(torchrun_args)}", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-c", AGENT, *torchrun_args]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        presses: list[int] = []

        def stop(signum=None, frame=None) -> None:
            # The first request stops the run cleanly (SIGTERM to each training process: they
            # agree on the step); a second one aborts them (SIGINT: their second signal).
            sig = signal.SIGTERM if not presses else signal.SIGINT
            presses.append(1)
            if len(presses) == 1 and not events_json:
                print(
                    "\nStopping after this step (a checkpoint and the adapter are saved). Press Ctrl+C again "
                    "to abort without saving.",
                    file=sys.stderr,
                    flush=True,
                )
            for child in _children(proc.pid):
                if child.pid != proc.pid and "headtune.core.cli" in " ".join(_cmdline(child)):
                    try:
                        child.send_signal(sig)
                    except Exception:  # gone already
                        pass

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        if events_json:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the window stops through stdin

            def watch_stdin() -> None:
                for line in sys.stdin:
                    if line.strip() == "stop":
                        break
                if proc.poll() is None:
                    stop()

            threading.Thread(target=watch_stdin, daemon=True).start()
        try:
            rc = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        codes = {}
        for f in Path(folder).glob("rank-*.exit"):
            try:
                codes[int(f.stem.split("-")[1])] = int(f.read_text(encoding="utf-8").strip() or 1)
            except ValueError:
                continue
    if 0 in codes and (codes[0] != 0 or rc == 0):
        return codes[0]
    if rc != 0:
        silent = sorted(set(range(nproc)) - set(codes))
        failed = [c for c in codes.values() if c != 0]
        if silent and not failed:
            print(
                f"headtune: training process{'es' if len(silent) > 1 else ''} {', '.join(map(str, silent))} of "
                f"{nproc} ended without an exit code (killed, or out of memory); the others were stopped.",
                file=sys.stderr,
            )
        return max(failed) if failed else 1
    return 0


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except Exception:
        return []
