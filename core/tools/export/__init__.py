"""Exporting a finished (or stopped) run: the registry of formats and the atomic export around them.

Formats (one module each, collected in ``FORMATS``): ``adapter`` (the PEFT adapter), ``merged``
(safetensors with the adapter merged) and ``gguf`` (llama.cpp's conversion, with an Ollama
Modelfile). Adding a format is one module with a ``FORMAT`` object plus its entry here; the command
line's choices and the window's Export dialog read the registry.

Every export carries a model card (``README.md``) and the loss curve (``loss.png``). Exports are
atomic: everything is written into a hidden temporary folder next to the destination, which is
renamed into place at the end; a failure removes it and leaves any existing destination as it
was. Peak memory is bounded by one copy of the model in the export dtype (merging happens in
place, layer by layer; the GGUF converter reads the merged shards lazily), and is checked
against free RAM before anything loads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ... import runfolder
from ...errors import BadInputError, HeadtuneError, RunFolderBusyError
from ...model.weights import check_folder
from ...runfolder import RunFolder
from ...training.trained import run_plan
from . import adapter, gguf, merged
from .base import ExportJob, Format, Progress
from .card import loss_curve_png, model_card
from .merge import ExportError

FORMATS: dict[str, Format] = {f.name: f for f in (adapter.FORMAT, merged.FORMAT, gguf.FORMAT)}
DTYPES = ("bfloat16", "float16", "float32")
GGUF_TYPES = gguf.TYPES
_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

__all__ = [
    "DTYPES",
    "FORMATS",
    "GGUF_TYPES",
    "ExportError",
    "ExportResult",
    "check_run",
    "default_dtype",
    "export_run",
    "result_json",
]


@dataclass
class ExportResult:
    path: str
    format: str
    seconds: float
    peak_rss_bytes: int
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak`` is the highest seen."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


# -- checks before anything heavy ---------------------------------------------------------


def check_run(run_dir: str | Path) -> Path:
    """The run folder, if it holds a plan and a complete saved adapter (else a BadInputError saying why)."""
    folder = RunFolder(run_dir).require_adapter()
    check_folder(folder.adapter_dir, "adapter file")
    return folder.path


def _check_destination(out: Path, run: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise BadInputError(
            f"{out} already exists. Choose another destination, or overwrite it "
            "(--overwrite, or the Overwrite box in the window)."
        )
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out} exists and is a file, not a folder; exports are folders.")
    if out.is_dir() and any(out.iterdir()) and not ((out / runfolder.PLAN).is_file() and (out / "README.md").is_file()):
        raise BadInputError(
            f"{out} is a folder that is not a Headtune export; overwriting would delete what is in "
            "it. Choose a new folder name."
        )
    if out == run or run.is_relative_to(out) or out.is_relative_to(RunFolder(run).adapter_dir):
        raise BadInputError(
            f"{out} would replace the run itself; choose a destination outside {RunFolder(run).adapter_dir}."
        )


def _make_temp(out: Path) -> Path:
    """The hidden folder this export writes into (named with this process's id), after removing
    those of earlier exports to ``out`` whose process is gone (killed, or the computer went down)."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(out)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise BadInputError(
            f"Cannot write to {parent} ({exc.strerror or exc}). Choose a folder you can write to."
        ) from None


def _remove_stale_partials(out: Path) -> list[Path]:
    import psutil

    removed = []
    prefix = f".{out.name}.partial-"
    for p in out.parent.glob(prefix + "*"):
        pid = p.name[len(prefix) :].split("-", 1)[0]
        if p.is_dir() and not (pid.isdigit() and psutil.pid_exists(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _model_bytes(plan, dtype: str) -> int:
    """Bytes of the whole model in ``dtype``, from its config alone."""
    from ...model.shape import ModelShape, read_model_config

    shape = ModelShape.from_config(read_model_config(plan.model.name_or_path))
    vocab = max(shape.vocab, plan.embeddings.added_count + shape.vocab)
    params = shape.total_params + (vocab - shape.vocab) * shape.hidden * (1 if shape.tied else 2)
    return params * _BYTES[dtype]


def _check_resources(plan, fmt: Format, dtype: str, gguf_type: str, parent: Path) -> int:
    """Refuse before loading when RAM or disk cannot hold the export; returns the model's bytes."""
    import psutil

    if not fmt.merges:
        return 0
    need = _model_bytes(plan, dtype)
    avail = psutil.virtual_memory().available
    if need * 1.15 > avail:
        raise BadInputError(
            f"Merging needs about {need / 2**30:.1f} GiB of free RAM (the model in {dtype}), and "
            f"{avail / 2**30:.1f} GiB is free. Close other programs, or export the adapter instead "
            "(it needs no merge)."
        )
    disk = need + fmt.extra_disk_bytes(need // _BYTES[dtype], gguf_type)
    free = shutil.disk_usage(parent).free
    if disk > free:
        raise BadInputError(
            f"The export needs about {disk / 2**30:.1f} GiB of disk in {parent} and "
            f"{free / 2**30:.1f} GiB is free. Free some space or choose another folder."
        )
    return need


# -- the export -----------------------------------------------------------------------------


def default_dtype(fmt: str, gguf_type: str) -> str:
    return FORMATS[fmt].default_dtype(gguf_type)


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    dtype: str | None = None,
    gguf_type: str = "q8_0",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``run_dir`` as ``fmt`` into the folder ``out`` (atomically). See the module docstring."""
    if fmt not in FORMATS:
        raise BadInputError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if gguf_type not in GGUF_TYPES:
        raise BadInputError(f"Unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}.")
    dtype = dtype or default_dtype(fmt, gguf_type)
    if dtype not in DTYPES:
        raise BadInputError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    run = RunFolder(run_dir).require_run().path.resolve()
    # An export reads the adapter while holding the run's lock: a run still writing it is refused,
    # and no resume can start rewriting it half way through the export.
    lock = RunFolder(run).lock("exporting")
    try:
        lock.acquire()
    except RunFolderBusyError:
        raise
    except OSError:
        pass  # a folder this user cannot write (read-only media) has no writer to wait for either
    try:
        if lock.held:
            RunFolder(run).recover()  # an adapter save cut between its two renames is finished first
        check_run(run)
        return _export_locked(run, fmt, out, dtype, gguf_type, overwrite, progress)
    finally:
        lock.release()


def _export_locked(run, fmt, out, dtype, gguf_type, overwrite, progress) -> ExportResult:
    out = Path(out).expanduser().resolve()
    _check_destination(out, run, overwrite)
    t0 = time.perf_counter()
    job = ExportJob(
        run=run,
        plan=run_plan(run),
        tmp=_make_temp(out),
        dtype=dtype,
        gguf_type=gguf_type,
        report=progress or (lambda f, m: None),
    )
    try:
        with PeakRSS() as rss:
            _check_resources(job.plan, FORMATS[fmt], dtype, gguf_type, out.parent)
            detail = FORMATS[fmt].write(job)
            job.report(0.95, "Writing the model card")
            job.plan.save(job.tmp / runfolder.PLAN)
            has_curve = loss_curve_png(run, job.tmp / "loss.png")
            (job.tmp / "README.md").write_text(model_card(run, job.plan, fmt, detail, has_curve), encoding="utf-8")
            _replace(job.tmp, out)
    except BaseException as exc:
        shutil.rmtree(job.tmp, ignore_errors=True)
        err = _export_error(exc, out)
        if err is exc:
            raise
        raise err from None
    job.report(1.0, f"Exported to {out}")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return ExportResult(
        path=str(out),
        format=fmt,
        seconds=time.perf_counter() - t0,
        peak_rss_bytes=rss.peak,
        files=files,
        notes=job.notes,
    )


def _export_error(exc: BaseException, out: Path) -> BaseException:
    """The error a failed export reports: ours as they are, out of memory and disk errors explained."""
    if isinstance(exc, HeadtuneError):
        return exc
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("not enough memory" in str(exc) or "DefaultCPUAllocator" in str(exc))
    ):
        return ExportError(
            "The computer ran out of memory during the export; nothing was written. Close "
            "other programs, or export the adapter (no merge needed)."
        )
    if isinstance(exc, OSError):
        return ExportError(f"The export could not be written ({exc}); nothing was left at {out}.")
    return exc


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; an existing ``out`` is removed only once ``tmp`` is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def result_json(result: ExportResult) -> str:
    return json.dumps(result.to_dict())
