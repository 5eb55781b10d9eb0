"""The run folder's layout: every name inside a run folder, and the questions asked of one.

A run folder (the plan's ``output.dir``) holds::

    plan.yaml              the fully resolved plan the run started with
    events.jsonl           every event of the run, one JSON object per line
    init_untrained.json    rows reset by ``embeddings.init_untrained`` (when set)
    checkpoints/           resumable checkpoints, ``checkpoint-<step>/``
    adapter/               the trained adapter and tokenizer (written at the end and on stop)
    error-traceback.txt    the traceback of an unexpected error (a bug), to report

Training, export, chat, the window and the run list all ask this module, so the layout and the
answer to "is this a run, can it resume, can it export" are written once.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import BadInputError

PLAN = "plan.yaml"
EVENTS = "events.jsonl"
INIT_UNTRAINED = "init_untrained.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
ADAPTER = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
ERROR_LOG = "error-traceback.txt"


class RunFolder:
    """One run folder (which may not exist yet)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- names ---------------------------------------------------------------------------
    @property
    def plan_file(self) -> Path:
        return self.path / PLAN

    @property
    def events_file(self) -> Path:
        return self.path / EVENTS

    @property
    def init_untrained_file(self) -> Path:
        return self.path / INIT_UNTRAINED

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER

    @property
    def error_log(self) -> Path:
        return self.path / ERROR_LOG

    # -- questions -----------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether this is a Headtune run folder (it has the plan the run started with)."""
        return self.plan_file.is_file()

    def has_adapter(self) -> bool:
        return (self.adapter_dir / ADAPTER_CONFIG).is_file()

    def checkpoints(self) -> list[Path]:
        """Checkpoint folders, oldest step first (cheap: no transformers import)."""
        found = []
        for p in self.checkpoints_dir.glob(CHECKPOINT_PREFIX + "*"):
            step = checkpoint_step(p)
            if p.is_dir() and step is not None:
                found.append((step, p))
        return [p for _, p in sorted(found)]

    def has_checkpoint(self) -> bool:
        """Whether there is a checkpoint to resume from."""
        return bool(self.checkpoints())

    def latest_checkpoint(self) -> str | None:
        if not self.checkpoints_dir.is_dir():
            return None
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(str(self.checkpoints_dir))

    def require_run(self) -> RunFolder:
        """This folder, if it is a run folder (else a ``BadInputError`` saying why)."""
        if not self.path.is_dir():
            raise BadInputError(
                f"{self.path} does not exist or is not a folder. Give the run folder of a training "
                "run (the plan's output.dir)."
            )
        if not self.is_run():
            raise BadInputError(f"{self.path} is not a Headtune run folder: it has no {PLAN}.")
        return self

    def require_adapter(self) -> RunFolder:
        """This folder, if it is a run folder with a saved adapter (else a ``BadInputError``)."""
        self.require_run()
        if not self.has_adapter():
            raise BadInputError(
                f"{self.path} has no saved adapter yet ({ADAPTER}/ is missing). It is written when "
                "a run finishes or is stopped; a run that is still going can be stopped and "
                "exported."
            )
        return self


def checkpoint_step(path: str | os.PathLike | None) -> int | None:
    """The step of a ``checkpoint-<step>`` folder, or None."""
    if not path:
        return None
    name = Path(path).name
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    try:
        return int(name[len(CHECKPOINT_PREFIX) :])
    except ValueError:
        return None


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before anything loads, a run folder that cannot be created or written: a name too
    long for the file system, a parent that is a file, a read-only or foreign folder."""
    from .errors import PlanError

    folder = Path(path).expanduser()
    shown = str(folder) if len(str(folder)) <= 200 else str(folder)[:200] + "…"
    try:
        os.stat(folder)  # raises for a name the file system cannot hold, not only for a missing one
    except (FileNotFoundError, NotADirectoryError):
        pass  # looked at below
    except OSError as exc:
        raise PlanError(f"output.dir: {shown} cannot be used ({exc.strerror or exc}).", "output.dir") from None
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise PlanError(f"output.dir: {probe} is a file, so {shown} cannot be created.", "output.dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PlanError(
            f"output.dir: {probe} is not writable by you, so the run cannot be written to {shown}. Choose "
            "another folder.",
            "output.dir",
        )
