"""Typed events a training job emits, and sinks that receive them.

Each event is a frozen dataclass with a ``type`` tag; ``to_dict`` is exactly what is written
as one line of the run folder's ``events.jsonl``, and ``event_from_dict`` reads it back (so the
window can re-open the graphs of past runs). Sinks are plain callables ``sink(event)``; the
GUI's worker re-emits them as Qt signals.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runfolder import RunFolder


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class Event:
    time: float = field(default_factory=_now, kw_only=True)
    type = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Started(Event):
    type = "started"
    total_steps: int
    trainable_params: int
    total_params: int
    train_examples: int
    val_examples: int
    device: str
    resumed_from_step: int = 0
    message: str = ""


@dataclass(frozen=True)
class Log(Event):
    """A human-readable progress line (loading, tokenising, saving)."""

    type = "log"
    message: str


@dataclass(frozen=True)
class Step(Event):
    type = "step"
    step: int
    total_steps: int
    loss: float
    learning_rate: float
    grad_norm: float | None
    tokens_per_s: float
    epoch: float
    # Preference tuning (training.method dpo / orpo), means over the step's pairs; None otherwise.
    # dpo: a reply's reward is beta x (its log-probability now - under the starting model);
    # orpo: its mean token log-probability, and the margin is the log-odds ratio.
    reward_chosen: float | None = None
    reward_rejected: float | None = None
    reward_margin: float | None = None  # chosen - rejected (orpo: the log-odds ratio)
    reward_accuracy: float | None = None  # share of pairs whose margin is positive


@dataclass(frozen=True)
class Eval(Event):
    type = "eval"
    step: int
    eval_loss: float
    eval_reward_accuracy: float | None = None  # preference tuning: share of validation pairs ranked right
    eval_reward_margin: float | None = None


@dataclass(frozen=True)
class Memory(Event):
    """Memory in bytes; the CUDA fields are None when training on the CPU."""

    type = "memory"
    step: int
    rss_bytes: int
    cuda_allocated_bytes: int | None = None
    cuda_reserved_bytes: int | None = None
    cuda_max_allocated_bytes: int | None = None


@dataclass(frozen=True)
class Checkpoint(Event):
    type = "checkpoint"
    step: int
    path: str


@dataclass(frozen=True)
class Finished(Event):
    type = "finished"
    step: int
    adapter_path: str
    train_loss: float | None = None
    eval_loss: float | None = None


@dataclass(frozen=True)
class Stopped(Event):
    type = "stopped"
    step: int
    adapter_path: str
    checkpoint_path: str | None = None


@dataclass(frozen=True)
class Failed(Event):
    type = "failed"
    message: str
    step: int | None = None
    error_type: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    c.type: c for c in (Started, Log, Step, Eval, Memory, Checkpoint, Finished, Stopped, Failed)
}

Sink = Callable[[Event], None]


def event_from_dict(data: dict[str, Any]) -> Event:
    data = dict(data)
    cls = EVENT_TYPES[data.pop("type")]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class JsonlSink:
    """Appends each event as one JSON line and flushes, so a crash loses at most one line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fh = self.path.open("a", encoding="utf-8")

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), allow_nan=True)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def read_events(path: str | os.PathLike) -> Iterator[Event]:
    """Events of a run's ``events.jsonl``; a torn last line (crash mid-write) is skipped."""
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if data.get("type") in EVENT_TYPES:
                yield event_from_dict(data)


@dataclass(frozen=True)
class RunSummary:
    """What a run folder's events say about it (for the window's runs list)."""

    path: str
    state: str  # finished, stopped, failed, or incomplete (running, or killed)
    step: int
    total_steps: int
    last_loss: float | None
    eval_loss: float | None
    started: float | None
    message: str = ""


def summarize_run(run_dir: str | os.PathLike) -> RunSummary | None:
    """Summary of ``run_dir``'s ``events.jsonl``; None when it is not a run folder."""
    path = RunFolder(run_dir).events_file
    if not path.is_file():
        return None
    state, step, total, loss, eval_loss, started, message = "incomplete", 0, 0, None, None, None, ""
    for e in read_events(path):
        if isinstance(e, Started):
            started = started or e.time
            total, state = e.total_steps, "incomplete"  # a resumed run starts over
        elif isinstance(e, Step):
            step, loss = e.step, e.loss
        elif isinstance(e, Eval):
            eval_loss = e.eval_loss
        elif isinstance(e, (Finished, Stopped)):
            state, step = e.type, e.step
        elif isinstance(e, Failed):
            state, message = "failed", e.message
    return RunSummary(
        path=str(run_dir),
        state=state,
        step=step,
        total_steps=total,
        last_loss=loss,
        eval_loss=eval_loss,
        started=started,
        message=message,
    )
