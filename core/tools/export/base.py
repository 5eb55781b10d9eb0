"""What an export format is: a name and label, whether it merges the model, and how it writes.

Each format is one module holding one ``Format`` object; ``FORMATS`` in the package collects them,
and the command line's choices and the window's Export dialog read that registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ...plan import Plan

Progress = Callable[[float, str], None]


@dataclass
class ExportJob:
    """One export under way: everything a format needs to write into ``tmp``."""

    run: Path  # the run folder
    plan: Plan  # the run's plan
    tmp: Path  # the hidden temporary folder renamed into place when the export succeeds
    dtype: str  # weights dtype of a merge
    gguf_type: str  # GGUF weights type
    report: Progress
    notes: list[str] = field(default_factory=list)


class Format(Protocol):
    name: str
    label: str  # as the window's Export dialog shows it
    merges: bool  # loads the base model and merges the adapter (RAM checked before)

    def default_dtype(self, gguf_type: str) -> str:
        """The merge dtype when the user chose none."""

    def extra_disk_bytes(self, params: int, gguf_type: str) -> int:
        """Disk needed beyond the merged model's own bytes."""

    def write(self, job: ExportJob) -> str:
        """Write the export into ``job.tmp``; returns the one-line description for the model card."""
