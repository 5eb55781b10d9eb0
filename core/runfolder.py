"""The run folder's layout: every name inside a run folder, and the questions asked of one.

A run folder (the plan's ``output.dir``) holds::

    plan.yaml              the fully resolved plan the run started with
    events.jsonl           every event of the run, one JSON object per line
    init_untrained.json    rows reset by ``embeddings.init_untrained`` (when set)
    checkpoints/           resumable checkpoints, ``checkpoint-<step>/``
      .partial/            a checkpoint being written (renamed to ``checkpoint-<step>/`` when whole)
    adapter/               the trained adapter and tokenizer (written at the end and on stop)
    error-traceback.txt    the traceback of an unexpected error (a bug), to report
    .lock                  held by the one process writing the run (its PID inside)

Training, export, chat, the window and the run list all ask this module, so the layout and the
answer to "is this a run, can it resume, can it export" are written once.

Crash safety: a checkpoint and the adapter are each written under a temporary name, sealed with a
manifest (``headtune-complete.json``: every file's size and SHA-256, written last, after the files
are flushed to disk) and renamed into place, so a kill or power cut at any moment leaves the
previous complete one and, at worst, a partial folder under a name nothing reads. The manifest
also tells a complete folder from one damaged or cut short later (a file deleted, a copy that
stopped half way).

One writer: ``RunLock`` is an OS file lock on ``.lock``, held for the life of a run (or an
export), so a second process is refused instead of interleaving writes; the OS drops the lock
when its process ends, however it ends, so a crash never leaves the folder locked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInputError, PlanError, RunFolderBusyError

PLAN = "plan.yaml"
EVENTS = "events.jsonl"
INIT_UNTRAINED = "init_untrained.json"
REFERENCE = "reference_logps.json"  # dpo: the starting model's log-probabilities of every pair
TENSORBOARD = "tensorboard"  # TensorBoard event files, when the plan asks for them (output.tensorboard)
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
ADAPTER = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_TMP = "adapter.tmp"  # the new adapter while it is written
ADAPTER_OLD = "adapter.old"  # the previous adapter while the new one takes its place
ERROR_LOG = "error-traceback.txt"
LOCK = ".lock"
STAGING = ".partial"  # inside checkpoints/: checkpoints being written or deleted
MANIFEST = "headtune-complete.json"
TRAINER_STATE = "trainer_state.json"
# A checkpoint's training state beside the weights: without it a resume would restart the
# optimizer moments, the learning-rate schedule or the data order and silently change results.
STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "matrix_optimizer.pt")


Log = Callable[[str], None]


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
    def reference_file(self) -> Path:
        return self.path / REFERENCE

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def staging_dir(self) -> Path:
        return self.checkpoints_dir / STAGING

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER

    @property
    def error_log(self) -> Path:
        return self.path / ERROR_LOG

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    # -- questions -----------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether this is a Headtune run folder (it has the plan the run started with)."""
        return self.plan_file.is_file()

    def has_adapter(self) -> bool:
        """Whether ``adapter/`` holds a complete adapter (file sizes checked against its manifest)."""
        return adapter_complete(self.adapter_dir, deep=False)

    def adapter_info(self) -> dict | None:
        """What the adapter's manifest records (step, finished, step budget), or None."""
        manifest = read_manifest(self.adapter_dir)
        return manifest if manifest is not None and self.has_adapter() else None

    def is_empty_for_a_new_run(self) -> bool:
        """Whether the folder has nothing in it but (perhaps) its lock file."""
        return not self.path.exists() or all(p.name == LOCK for p in self.path.iterdir())

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
        return any(check_checkpoint(p, deep=False).state != "partial" for p in self.checkpoints())

    def latest_checkpoint(self) -> str | None:
        """The newest complete checkpoint (file sizes checked against its manifest), or None."""
        for p in reversed(self.checkpoints()):
            if check_checkpoint(p, deep=False).state == "complete":
                return str(p)
        return None

    def resume_checkpoint(self, log: Log, allow_fresh_state: bool = False) -> str | None:
        """The checkpoint a resume starts from: the newest one that was written whole.

        Newer ones whose write was cut short (a kill, a power cut, a full disk) are reported
        through ``log`` and removed. The chosen one is checked file by file against its manifest:
        a file changed since it was written is refused; missing training state (optimizer,
        schedule, random state) is refused too unless ``allow_fresh_state``, since resuming
        without it silently changes the results. The caller holds the run's lock."""
        if self.staging_dir.exists():
            for p in sorted(self.staging_dir.iterdir()):
                # Besides cut-short writes, the staging folder holds old checkpoints whose deletion
                # was interrupted (``deleting-...``): removing those needs no word.
                if p.name.startswith(CHECKPOINT_PREFIX):
                    log(f"Removed {p.name}: its write was cut short before it was complete.")
            shutil.rmtree(self.staging_dir, ignore_errors=True)
        for p in reversed(self.checkpoints()):
            check = check_checkpoint(p, deep=True)
            if check.state == "partial":
                log(f"Skipped and removed {p.name}: {check.why}.")
                shutil.rmtree(p, ignore_errors=True)
                continue
            if check.state == "damaged":
                state = check.missing_state
                others = [f for f in check.problems if f not in state]
                if others or not allow_fresh_state:
                    raise BadInputError(check.refusal(self.checkpoints_dir))
                log(
                    f"Resuming from {p.name} without {', '.join(state)} (--resume-fresh-optimizer): the "
                    "missing state starts fresh, so the results differ from an uninterrupted run."
                )
            log(f"Resuming from {p.name} (step {check.step}), the newest complete checkpoint.")
            return str(p)
        return None

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
        """This folder, if it is a run folder with a complete saved adapter (else a ``BadInputError``)."""
        self.require_run()
        if not self.adapter_dir.exists():
            raise BadInputError(
                f"{self.path} has no saved adapter yet ({ADAPTER}/ is missing). It is written when "
                "a run finishes or is stopped; a run that is still going can be stopped and "
                "exported."
            )
        if not adapter_complete(self.adapter_dir, deep=True):
            verdict = verify(self.adapter_dir)
            detail = f" ({', '.join(verdict.problems)} missing or changed)" if verdict.problems else ""
            raise BadInputError(
                f"The adapter in {self.adapter_dir} is incomplete or damaged{detail}. Resume the run "
                f"(`headtune train --resume {self.path}`) to write it again from its last checkpoint."
            )
        return self

    # -- writing -------------------------------------------------------------------------
    def lock(self, purpose: str) -> RunLock:
        """The run's one-writer lock (not yet taken): ``with folder.lock("training"): ...``."""
        return RunLock(self, purpose)

    def lock_holder(self) -> dict | None:
        """Who holds the lock (``pid``, ``purpose``, ``since``), or None when no process does."""
        if not self.lock_file.is_file():
            return None
        try:
            fd = os.open(self.lock_file, os.O_RDWR)
        except OSError:
            return None
        try:
            _lock_fd(fd)
        except OSError:
            return _read_holder(self.lock_file)
        else:
            _unlock_fd(fd)
            return None
        finally:
            os.close(fd)

    def recover(self, log: Log | None = None) -> None:
        """Finish what a process killed mid-save left: an adapter swap cut between its two renames
        (the new adapter, else the old one, takes its place) and leftover temporary folders. The
        caller holds the lock."""
        final = self.adapter_dir
        tmp, old = final.with_name(ADAPTER_TMP), final.with_name(ADAPTER_OLD)
        if not final.exists():
            # The new adapter first: it is only sealed once it was fully written.
            for candidate in (tmp, old):
                if candidate.is_dir() and verify(candidate).complete:
                    os.replace(candidate, final)
                    _fsync_dir(self.path)
                    if log:
                        log(f"Restored {ADAPTER}/ from {candidate.name} (a save of it was interrupted).")
                    break
        for leftover in (tmp, old):
            if leftover.exists() and final.exists():
                shutil.rmtree(leftover, ignore_errors=True)


@dataclass
class Verdict:
    """A folder checked against its manifest."""

    path: Path
    manifest: dict | None  # None: the folder was never sealed (cut short, or written before manifests)
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # size or checksum differs

    @property
    def problems(self) -> list[str]:
        return self.missing + self.changed

    @property
    def complete(self) -> bool:
        return self.manifest is not None and not self.problems


@dataclass
class CheckpointCheck:
    """What a checkpoint folder is: ``complete``, ``partial`` (its write was cut short: never
    resumable) or ``damaged`` (complete once, then a file went missing or changed)."""

    path: Path
    step: int
    state: str
    why: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def missing_state(self) -> list[str]:
        return [f for f in self.problems if f in STATE_FILES or f.startswith("rng_state")]

    def refusal(self, checkpoints_dir: Path) -> str:
        state = self.missing_state
        if state and state == self.problems:
            return (
                f"{self.path.name} in {checkpoints_dir} lacks {', '.join(state)}: resuming would restart "
                "the optimizer, the learning-rate schedule or the random state, and give different "
                "results than an uninterrupted run. Resume with --resume-fresh-optimizer to continue "
                "with fresh state anyway, or delete that checkpoint to resume from an earlier one."
            )
        return (
            f"{self.path.name} in {checkpoints_dir} is damaged: {self.why}. Delete that checkpoint to "
            "resume from an earlier one."
        )


def check_checkpoint(path: Path, deep: bool = True) -> CheckpointCheck:
    """Classify one ``checkpoint-<step>`` folder; ``deep`` also compares checksums."""
    step = checkpoint_step(path) or 0
    verdict = verify(path, deep=deep)
    if verdict.manifest is not None:
        if verdict.complete:
            return CheckpointCheck(path, step, "complete")
        parts = []
        if verdict.missing:
            parts.append(f"{', '.join(verdict.missing)} missing")
        if verdict.changed:
            parts.append(f"{', '.join(verdict.changed)} changed since it was written")
        return CheckpointCheck(path, step, "damaged", "; ".join(parts), verdict.problems)
    # Written before checkpoints were sealed: the Trainer writes trainer_state.json last.
    if not (path / TRAINER_STATE).is_file():
        return CheckpointCheck(path, step, "partial", f"it has no {TRAINER_STATE} (its write was cut short)")
    missing = [f for f in STATE_FILES[:3] if not (path / f).is_file()]
    if missing:
        return CheckpointCheck(path, step, "damaged", f"{', '.join(missing)} missing", missing)
    return CheckpointCheck(path, step, "complete")


def adapter_complete(path: Path, deep: bool = True) -> bool:
    """Whether ``path`` holds a complete adapter: sealed and intact, or (written before adapters
    were sealed) its config and weights are there."""
    verdict = verify(path, deep=deep)
    if verdict.manifest is not None:
        return verdict.complete
    return (path / ADAPTER_CONFIG).is_file() and any(
        (path / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")
    )


# -- manifests ---------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable. Windows cannot open a folder (NTFS journals renames)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(folder: Path, **info) -> dict:
    """Flush every file in ``folder`` to disk, then write its manifest (sizes and SHA-256, plus
    ``info``) last: a folder with a manifest was written whole. Returns the manifest."""
    files = {}
    for f in _files(folder):
        with f.open("rb+") as fh:
            os.fsync(fh.fileno())
        files[f.relative_to(folder).as_posix()] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    manifest = {"format": 1, "written": time.time(), **info, "files": files}
    tmp = folder / (MANIFEST + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST)
    _fsync_dir(folder)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def verify(folder: Path, deep: bool = True) -> Verdict:
    """``folder`` against its manifest: sizes always, SHA-256 too when ``deep``."""
    manifest = read_manifest(folder)
    verdict = Verdict(folder, manifest)
    if manifest is None:
        return verdict
    for rel, meta in manifest["files"].items():
        f = folder / rel
        if not isinstance(meta, dict) or Path(rel).is_absolute() or ".." in Path(rel).parts:
            verdict.changed.append(rel)
        elif not f.is_file():
            verdict.missing.append(rel)
        elif f.stat().st_size != meta.get("size") or (deep and _sha256(f) != meta.get("sha256")):
            verdict.changed.append(rel)
    return verdict


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in _files(folder))


def place(tmp: Path, final: Path, old: Path) -> None:
    """Rename the sealed folder ``tmp`` to ``final``. An existing ``final`` is first renamed to
    ``old`` (which ``RunFolder.recover`` knows) and deleted once ``tmp`` is in place, so at every
    moment one complete folder exists under a known name."""
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)  # left over from a crash mid-swap
        os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
        _fsync_dir(final.parent)


# -- the one-writer lock -----------------------------------------------------------------

# On Windows the lock is one byte far past the PID text, so a refused process can still read it.
_WINDOWS_LOCK_OFFSET = 1 << 30

if sys.platform == "win32":
    import msvcrt

    def _lock_fd(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock_fd(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    # flock (not fcntl's record locks): it belongs to the open file, so another descriptor on the
    # same file in this process neither releases it nor shares it.
    def _lock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _read_holder(lock_file: Path) -> dict:
    try:
        holder = json.loads(lock_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        holder = None
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """An OS lock on the run folder's ``.lock`` file, with the holder's PID written in it.

    Held by a run from before its first write to its end, and by an export while it reads; a
    second process is refused with ``RunFolderBusyError`` naming the holder. The OS releases it
    when the process ends, so a crashed run never leaves a stale lock."""

    def __init__(self, folder: RunFolder, purpose: str):
        self.folder = folder
        self.purpose = purpose
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        path = self.folder.lock_file
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd)
        except OSError:
            os.close(fd)
            raise RunFolderBusyError(busy_message(self.folder, _read_holder(path), self.purpose)) from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "purpose": self.purpose, "since": time.time()}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            _unlock_fd(fd)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def busy_message(folder: RunFolder, holder: dict, purpose: str) -> str:
    pid = holder.get("pid")
    who = f"process {pid}" if pid else "another process"
    doing = holder.get("purpose") or "using"
    since = holder.get("since")
    when = f" since {time.strftime('%H:%M:%S', time.localtime(since))}" if isinstance(since, (int, float)) else ""
    what = f"Headtune {who} (PID {pid}) is {doing} it{when}" if pid else f"another Headtune process is {doing} it"
    if purpose == "exporting":
        return f"{folder.path} is still being written: {what}. Export it once that run has finished or been stopped."
    stop = f" or stop it (Ctrl+C in its terminal, or `kill {pid}`)" if pid else ""
    return (
        f"{folder.path} is in use: {what}. Only one process may write a run folder at a time; wait "
        f"for it to end{stop}, then try again."
    )


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
