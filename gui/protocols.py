"""What each ``headtune`` child says on stdout, as typed events for the ``Supervisor``.

Every failure is one ``events.Failed`` line (``{"type": "failed", ...}``), whichever command
printed it. The rest is per command: training's events, export progress and its result, the
system check's and token health's report (one JSON document), and chat's token stream. The
reports are rebuilt here into the core's own dataclasses, so the panels show them exactly as
they showed reports computed in this process.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headtune.core import events as ev

from .supervisor import FAILURE, PROGRESS, RESULT, ChildProtocol, exit_description, headtune_command


# -- training ---------------------------------------------------------------------------------
class TrainingProtocol(ChildProtocol):
    """``headtune train --events-json``: the run's events; Finished/Stopped end it."""

    what = "training"
    stop_line = "stop"
    keep_stdin = True
    lower_priority = True

    def decode(self, data):
        event = ev.event_from_dict(data)
        if isinstance(event, ev.Failed):
            return FAILURE, event
        return (RESULT if isinstance(event, (ev.Finished, ev.Stopped)) else PROGRESS), event

    def text_line(self, line):
        return ev.Log(message=line.rstrip())  # a library printing to stdout: keep it in the log

    def unexpected_end(self, code, tail, cancelled):
        last = "\n".join(tail)
        return ev.Failed(
            message=f"The training process ended unexpectedly ({exit_description(code)})."
            + (f" Its last output:\n{last}" if last else "")
            + "\nThe last checkpoint, if any, is kept; Resume continues from it.",
            error_type="ProcessError",
        )


def train_args(plan_file: str | None, resume_dir: str | None) -> list[str]:
    if resume_dir:
        return headtune_command(["train", "--events-json", "--resume", resume_dir])
    return headtune_command(["train", "--events-json", plan_file])


# -- export -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportProgressed:
    fraction: float
    message: str


@dataclass(frozen=True)
class ExportDone:
    path: str
    format: str
    seconds: float
    peak_rss_bytes: int
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


class ExportProtocol(ChildProtocol):
    """``headtune export --progress-json``: progress lines, then the result or a failure."""

    what = "export"

    def __init__(self, out: str):
        self.out = Path(out).expanduser().resolve()  # as the export resolves it (its temp folder is beside)

    def decode(self, data):
        if "progress" in data:
            return PROGRESS, ExportProgressed(float(data["progress"]), str(data.get("message", "")))
        if "path" in data:
            return RESULT, ExportDone(
                path=data["path"],
                format=data["format"],
                seconds=float(data["seconds"]),
                peak_rss_bytes=int(data["peak_rss_bytes"]),
                files=tuple(data.get("files", ())),
                notes=tuple(data.get("notes", ())),
            )
        return super().decode(data)

    def ended(self, code, succeeded):
        if not succeeded:
            # Killed (cancel, or out of memory) before it could clean up: remove its temporary folder.
            for partial in self.out.parent.glob(f".{self.out.name}.partial-*"):
                shutil.rmtree(partial, ignore_errors=True)

    def unexpected_end(self, code, tail, cancelled):
        if cancelled:
            return ev.Failed(message="Export cancelled; nothing was written.", error_type="Cancelled")
        last = "\n".join(tail)
        return ev.Failed(
            message=f"The export process ended unexpectedly ({exit_description(code)}); nothing was "
            "written." + (f" Its last output:\n{last}" if last else ""),
            error_type="ProcessError",
        )


# -- system check -----------------------------------------------------------------------------
def report_from_dict(d: dict[str, Any]):
    """A ``doctor.Report`` from ``headtune doctor --json``."""
    from headtune.core.tools.doctor import Check, Gpu, Report

    fields = {k: v for k, v in d.items() if k not in ("ok", "summary", "gpus", "checks")}
    return Report(
        **fields, gpus=[Gpu(**g) for g in d.get("gpus", [])], checks=[Check(**c) for c in d.get("checks", [])]
    )


class DoctorProtocol(ChildProtocol):
    """``headtune doctor --json``: one report (exit code 1 only says a check failed)."""

    what = "system check"
    document = True

    def decode(self, data):
        if "checks" in data:
            return RESULT, report_from_dict(data)
        return super().decode(data)


def doctor_args(output_dir: str) -> list[str]:
    return headtune_command(["doctor", "--json", "--output", output_dir])


# -- token health -----------------------------------------------------------------------------
def health_from_dict(d: dict[str, Any]):
    """A ``health.HealthReport`` from ``headtune inspect --json`` (JSON keys are strings)."""
    from headtune.core.tools.health import FlaggedRow, HealthReport, NewToken, TemplateReport

    ints = lambda m: {int(k): v for k, v in (m or {}).items()}  # noqa: E731
    template = TemplateReport(**d["template"]) if d.get("template") else None
    return HealthReport(
        model=d["model"],
        vocab=d["vocab"],
        tied=d["tied"],
        flagged=[FlaggedRow(**r) for r in d["flagged"]],
        template_counts=ints(d["template_counts"]),
        data_counts=ints(d["data_counts"]),
        data_trained_counts=ints(d["data_trained_counts"]),
        verdict=d["verdict"],
        recommendation=d["recommendation"],
        template=template,
        new_tokens=[NewToken(**t) for t in d.get("new_tokens", [])],
    )


class HealthProtocol(ChildProtocol):
    """``headtune inspect MODEL --json``: one token-health report."""

    what = "token health check"
    document = True

    def decode(self, data):
        if "flagged" in data:
            return RESULT, health_from_dict(data)
        return super().decode(data)


def inspect_args(model: str, data_spec=None, new_tokens=(), vocab_tokens=()) -> list[str]:
    """The command line of a token-health check; with the plan's added tokens, counted as training
    adds them."""
    args = ["inspect", model, "--json"]
    if data_spec is not None:
        args += [
            "--data",
            data_spec.path,
            "--format",
            data_spec.format,
            "--chat-template",
            str(data_spec.chat_template),
            "--max-seq-len",
            str(data_spec.max_seq_len),
        ]
    for key, tokens in (("new_tokens", new_tokens), ("vocab_tokens", vocab_tokens)):
        if tokens:
            args += ["--set", f"embeddings.{key}={json.dumps(list(tokens))}"]
    return headtune_command(args)


# -- chat -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatLoaded:
    run_dir: str


@dataclass(frozen=True)
class ChatPiece:
    tuned: bool
    text: str


@dataclass(frozen=True)
class ChatAnswered:
    stopped: bool


class ChatProtocol(ChildProtocol):
    """``headtune chat RUN --json-lines``: requests on stdin, token events on stdout; the model
    stays loaded until stdin closes."""

    what = "chat"
    keep_stdin = True

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def decode(self, data):
        kind = data.get("type")
        if kind == "loaded":
            return PROGRESS, ChatLoaded(self.run_dir)
        if kind == "piece":
            return PROGRESS, ChatPiece(bool(data["tuned"]), str(data["text"]))
        if kind == "answered":
            return PROGRESS, ChatAnswered(bool(data.get("stopped", False)))
        return super().decode(data)


def chat_args(run_dir: str) -> list[str]:
    return headtune_command(["chat", run_dir, "--json-lines"])


# -- download ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DownloadStarted:
    repo_id: str
    total: int
    files: tuple[tuple[str, int], ...]
    cache_dir: str
    gated: bool = False


class DownloadProtocol(ChildProtocol):
    """``headtune download MODEL --progress-json``: the plan, progress, then how it ended.

    Pause is the stop line (the partial file is kept); cancel is ``{"stop": "cancel"}``."""

    what = "download"
    stop_line = "pause"
    keep_stdin = True

    def decode(self, data):
        from headtune.core.tools.download import DownloadResult, Progress

        kind = data.get("type")
        if kind == "download_started":
            return PROGRESS, DownloadStarted(
                data["repo_id"],
                int(data["total"]),
                tuple((str(n), int(s)) for n, s in data["files"]),
                data["cache_dir"],
                bool(data.get("gated")),
            )
        if kind == "progress":
            return PROGRESS, Progress(**data)
        if kind == "download_ended":
            return RESULT, DownloadResult(**data)
        return super().decode(data)

    def unexpected_end(self, code, tail, cancelled):
        if cancelled:
            return ev.Failed(message="Download stopped.", error_type="Cancelled")
        return super().unexpected_end(code, tail, cancelled)


def download_args(repo_id: str) -> list[str]:
    return headtune_command(["download", repo_id, "--progress-json"])
