"""One rank of a data-parallel test run: ``python -m torch.distributed.run --nproc_per_node 2
tests/core/distributed_worker.py SCENARIOS.json OUT_DIR``.

Runs each scenario's plan as a ``TrainingJob`` in this process (one launch covers several runs:
starting processes is the slow part) and writes what this rank saw to
``OUT_DIR/<name>-rank<R>.json``. A scenario may ask one rank to request a stop once it has done
``stop_at`` steps (as a window Stop or Ctrl+C reaching that process alone), and to resume the run
afterwards to its full budget, and to record the trained model's logits on a fixed input.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from headtune.core import events as ev  # noqa: E402
from headtune.core.errors import HeadtuneError  # noqa: E402
from headtune.core.plan import plan_from_dict  # noqa: E402
from headtune.core.training.job import TrainingJob, resume_plan  # noqa: E402


def stop_later(job: TrainingJob, at: int) -> None:
    def watch() -> None:
        while job.step < at and not job.stop_requested:
            time.sleep(0.005)
        job.request_stop()

    threading.Thread(target=watch, daemon=True).start()


def outcome(job: TrainingJob, result: ev.Event | None, error: HeadtuneError | None) -> dict:
    return {
        "type": type(result).__name__ if result is not None else None,
        "step": job.step,
        "eval_loss": getattr(result, "eval_loss", None),
        "error": str(error) if error else None,
        "exit_code": error.exit_code if error else 0,
    }


def logits(model) -> list:
    """The trained model's logits on a fixed input (every rank runs the forward: under FSDP each
    holds a share of the weights)."""
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([[1, 5, 17, 42, 99, 7]])).logits.float().tolist()


def main() -> int:
    scenarios = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    out = Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    for sc in scenarios:
        record: dict = {"rank": rank, "world_size": int(os.environ["WORLD_SIZE"])}
        seen: list[ev.Event] = []
        job = TrainingJob(plan_from_dict(sc["plan"]), sinks=[seen.append])
        if sc.get("stop_rank") == rank:
            stop_later(job, sc["stop_at"])
        try:
            record["run"] = outcome(job, job.run(), None)
        except HeadtuneError as exc:
            record["run"] = outcome(job, None, exc)
        if sc.get("logits") and job.model is not None:
            record["logits"] = logits(job.model)
        started = [e for e in seen if isinstance(e, ev.Started)]
        record["announced_steps"] = started[0].total_steps if started else None
        record["events"] = len(seen)
        if sc.get("resume"):
            job = TrainingJob(resume_plan(sc["plan"]["output"]["dir"]), resume=True)
            record["resumed"] = outcome(job, job.run(), None)
        (out / f"{sc['name']}-rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
