"""Downloading a hub model into the Hugging Face cache, with progress, pause, cancel and resume.

``headtune download MODEL`` (and the window, through it in a child process) fetches what
training loads: the top-level files of the repository, with safetensors weights preferred over
other weight formats. Before a byte is fetched it checks that the hub can be reached, that the
model is not gated for this user (a gated model says how to accept its licence and log in) and
that the cache's disk has room.

Files are fetched with ``huggingface_hub``'s own HTTP client (``http_get``) into
``blobs/<etag>.incomplete`` in the cache, then renamed to the blob and linked into the snapshot
by ``hf_hub_download`` (which finds the blob and only writes the cache's bookkeeping). The
partial file has a fixed name, so a paused download continues where it stopped (an HTTP
``Range`` request); ``hf_hub_download`` on its own writes a per-process temporary file and
starts over. Pause keeps the partial file; cancel deletes it, so nothing half-written remains.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HeadtuneError, ModelError

# Progress is reported, and pause/cancel honoured, once per chunk.
CHUNK_BYTES = 1024 * 1024
# Room kept free on the cache's disk beyond the files themselves.
DISK_HEADROOM = 256 * 1024**2
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pth", "*.pt", "*.h5", "*.msgpack", "*.ckpt", "*.gguf", "*.onnx")
PAUSE, CANCEL = "pause", "cancel"


class DownloadError(HeadtuneError):
    """A download could not start or finish (no network, no disk room, the hub refused)."""


class DownloadStopped(HeadtuneError):
    """Raised inside the download when pause or cancel was asked for."""

    def __init__(self, how: str):
        super().__init__(f"download {how}d")
        self.how = how


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int


@dataclass
class DownloadPlan:
    """What a download of ``repo_id`` will fetch, and where."""

    repo_id: str
    commit: str
    files: list[RemoteFile]
    cache_dir: str
    gated: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Progress:
    """One progress report: the whole download and the file being fetched."""

    repo_id: str
    file: str
    file_bytes: int
    file_total: int
    bytes: int
    total: int
    speed: float  # bytes per second, over the last few seconds
    eta_s: float | None
    files_done: int
    files_total: int
    type: str = "progress"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DownloadResult:
    repo_id: str
    path: str  # the snapshot folder (what from_pretrained reads)
    bytes: int  # fetched by this run
    total: int
    seconds: float
    outcome: str = "downloaded"  # "downloaded" | "paused" | "cancelled"
    partial_files: list[str] = field(default_factory=list)
    type: str = "download_ended"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Control:
    """Pause or cancel, asked from any thread; the download checks it once per chunk."""

    def __init__(self) -> None:
        self.state: str | None = None
        self.event = threading.Event()
        self.finished = False  # set once the download has returned

    def request(self, how: str) -> None:
        if self.state != CANCEL:  # cancel wins over an earlier pause
            self.state = how
        self.event.set()


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _network_error(repo_id: str, exc: BaseException) -> DownloadError:
    return DownloadError(
        f"Downloading {repo_id} needs a network connection, and the hub ({endpoint()}) could not be reached "
        f"({type(exc).__name__}). Connect to the internet and try again; the model list and the memory "
        "estimate keep working offline."
    )


def gated_message(repo_id: str, logged_in: bool) -> str:
    page = f"{endpoint()}/{repo_id}"
    who = (
        "The access token saved on this computer has no access to it yet."
        if logged_in
        else "You are not logged in to the hub on this computer."
    )
    return (
        f"The model {repo_id} is gated: its authors ask you to accept their licence first. {who} "
        f"1) Open {page}, log in and accept the licence (some authors approve requests by hand). "
        f"2) Create a read access token at {endpoint()}/settings/tokens and give it to Headtune: Log in… "
        "in the window's Model tab, or `hf auth login` in a terminal. 3) Download again."
    )


def _is_network_error(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(
        names
        & {
            "ConnectError",
            "ConnectTimeout",
            "ReadTimeout",
            "TimeoutException",
            "NetworkError",
            "OfflineModeIsEnabled",
            "LocalEntryNotFoundError",
            "RemoteProtocolError",
            "ConnectionError",
        }
    )


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(out) < 10:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _hub_failure(repo_id: str, exc: BaseException) -> HeadtuneError:
    """A hub exception as a user-facing error (gated, not found, no network, refused)."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, HeadtuneError):
        return exc
    if isinstance(exc, GatedRepoError):
        return ModelError(gated_message(repo_id, get_token() is not None))
    if isinstance(exc, RepositoryNotFoundError):
        return ModelError(
            f"The model {repo_id} was not found on the hub ({endpoint()}). Check the id (owner/name); if it is "
            "private, log in with an access token that can read it."
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelError(f"The model {repo_id} has no such revision on the hub.")
    if _is_network_error(exc):
        return _network_error(repo_id, exc)
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            return ModelError(gated_message(repo_id, get_token() is not None))
        return DownloadError(f"The hub answered {status} for {repo_id}: {str(exc).splitlines()[0]}")
    return DownloadError(f"Could not download {repo_id}: {type(exc).__name__}: {exc}")


def wanted_files(names: list[str]) -> list[str]:
    """The files training loads: top-level ones, with safetensors weights preferred (a repository
    often also carries .bin/.pth copies, or an ``original/`` folder of the same weights)."""
    top = [n for n in names if "/" not in n and n != ".gitattributes"]
    has_safetensors = any(n.endswith(".safetensors") for n in top)
    out = []
    for n in top:
        is_weight = any(fnmatch.fnmatch(n, p) for p in WEIGHT_PATTERNS)
        if not is_weight:
            out.append(n)
        elif has_safetensors and n.endswith(".safetensors"):
            out.append(n)
        elif not has_safetensors and fnmatch.fnmatch(n, "pytorch_model*.bin"):
            out.append(n)
    return out


def plan_download(repo_id: str, revision: str | None = None) -> DownloadPlan:
    """Ask the hub what to fetch; raises a clear error when offline, gated, or not found."""
    if offline():
        raise DownloadError(
            f"Downloading {repo_id} needs a network connection, but Hugging Face's offline mode is on "
            "(HF_HUB_OFFLINE). Unset it and connect to the internet; the model list and the memory estimate "
            "keep working offline."
        )
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    from ..model.sources import hub_cache_dir

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
        names = [s.rfilename for s in info.siblings or []]
        files = [
            RemoteFile(s.rfilename, int(s.size or 0)) for s in info.siblings or [] if s.rfilename in wanted_files(names)
        ]
        if not any(f.name == "config.json" for f in files):
            raise ModelError(
                f"The model {repo_id} has no config.json at the top of its repository, so it is not a "
                "transformers model Headtune can train (a GGUF-only repository? download the .gguf file "
                "and choose it instead)."
            )
        commit = str(info.sha or revision or "main")
        # Gating shows on the files, not on the model's page: ask for one of them now.
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=commit))
    except Exception as exc:
        raise _hub_failure(repo_id, exc) from None
    return DownloadPlan(repo_id, commit, files, str(hub_cache_dir()), gated=bool(getattr(info, "gated", False)))


def _storage(plan: DownloadPlan) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return Path(plan.cache_dir) / repo_folder_name(repo_id=plan.repo_id, repo_type="model")


def partial_files(repo_id: str) -> list[Path]:
    """Partial files a paused download left for this model (resumed by the next download)."""
    from huggingface_hub.file_download import repo_folder_name

    from ..model.sources import hub_cache_dir

    blobs = hub_cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model") / "blobs"
    return sorted(p for p in blobs.glob("*.incomplete") if p.is_file()) if blobs.is_dir() else []


def check_disk(plan: DownloadPlan, already: int) -> None:
    """Refuse to start when the cache's disk lacks room for what is left to fetch."""
    need = max(0, plan.total_bytes - already)
    where = Path(plan.cache_dir)
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need + DISK_HEADROOM > free:
        raise DownloadError(
            f"Not enough disk space to download {plan.repo_id}: it needs {need / 1e9:.2f} GB more (plus "
            f"{DISK_HEADROOM / 1e9:.2f} GB to spare) in the Hugging Face cache at {where}, and only "
            f"{free / 1e9:.2f} GB is free there. Free some space, or point the cache at a larger disk "
            "(the HF_HOME or HF_HUB_CACHE environment variable)."
        )


class _Meter:
    """Bytes so far, speed over a sliding window, and when to report next."""

    def __init__(self, plan: DownloadPlan, report: Callable[[Progress], None], every_s: float):
        self.plan, self.report, self.every_s = plan, report, every_s
        self.done = 0  # bytes of the whole download on disk (whole files and partial ones)
        self.fetched = 0  # bytes this run fetched
        self.samples: list[tuple[float, int]] = []
        self.last = 0.0
        self.file, self.file_bytes, self.file_total, self.files_done = "", 0, 0, 0

    def add(self, n: int, force: bool = False) -> None:
        self.done += n
        self.file_bytes += n
        self.fetched += n
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.emit(now)

    def emit(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.last = now
        self.samples = [(t, b) for t, b in self.samples if now - t <= 5.0] + [(now, self.fetched)]
        t0, b0 = self.samples[0]
        speed = (self.fetched - b0) / (now - t0) if now > t0 else 0.0
        left = max(0, self.plan.total_bytes - self.done)
        self.report(
            Progress(
                repo_id=self.plan.repo_id,
                file=self.file,
                file_bytes=self.file_bytes,
                file_total=self.file_total,
                bytes=self.done,
                total=self.plan.total_bytes,
                speed=speed,
                eta_s=left / speed if speed > 0 else None,
                files_done=self.files_done,
                files_total=len(self.plan.files),
            )
        )


class _Writer:
    """The partial file as ``http_get`` sees it: counts bytes and stops when asked."""

    def __init__(self, fh, meter: _Meter, control: Control):
        self.fh, self.meter, self.control = fh, meter, control

    def write(self, data: bytes) -> int:
        if self.control.state is not None:
            raise DownloadStopped(self.control.state)
        n = self.fh.write(data)
        self.meter.add(len(data))
        return n

    def seek(self, *args):
        return self.fh.seek(*args)

    def tell(self) -> int:
        return self.fh.tell()

    def truncate(self, *args):  # the server ignored the Range: start the file over
        self.meter.done -= self.meter.file_bytes
        self.meter.file_bytes = 0
        return self.fh.truncate(*args)


def download(
    repo_id: str,
    report: Callable[[Any], None] = lambda _e: None,
    control: Control | None = None,
    revision: str | None = None,
    every_s: float = 0.25,
) -> DownloadResult:
    """Fetch ``repo_id`` into the cache; ``report`` gets a ``DownloadPlan`` first, then ``Progress``.

    Returns a result whose ``outcome`` says whether it finished, was paused (partial files kept,
    resumed next time) or cancelled (partial files deleted)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars

    control = control or Control()
    plan = plan_download(repo_id, revision)
    storage = _storage(plan)
    already = _bytes_on_disk(plan, storage)
    check_disk(plan, already)
    report(plan)
    constants.DOWNLOAD_CHUNK_SIZE = CHUNK_BYTES  # read per call: finer progress, prompt pause/cancel
    disable_progress_bars()  # the progress is ours to show
    meter = _Meter(plan, report, every_s)
    meter.done = already
    started = time.monotonic()
    try:
        for f in plan.files:
            meter.file, meter.file_total, meter.file_bytes = f.name, f.size, 0
            _fetch(plan, f, storage, meter, control)
            meter.files_done += 1
            meter.emit()
        # Files were fetched by commit; record which commit the asked-for revision (main) names, so
        # loaders that ask for the revision find this snapshot, offline too.
        from huggingface_hub import hf_hub_download

        hf_hub_download(repo_id, "config.json", revision=revision or "main")
        snapshot = storage / "snapshots" / plan.commit
        return DownloadResult(repo_id, str(snapshot), meter.fetched, plan.total_bytes, time.monotonic() - started)
    except DownloadStopped as stop:
        meter.emit()
        return _stopped(plan, storage, stop.how, meter, started)
    except HeadtuneError:
        raise
    except Exception as exc:
        raise _hub_failure(repo_id, exc) from None


def _stopped(plan: DownloadPlan, storage: Path, how: str, meter: _Meter, started: float) -> DownloadResult:
    left = sorted((storage / "blobs").glob("*.incomplete")) if (storage / "blobs").is_dir() else []
    if how == CANCEL:
        for p in left:
            p.unlink(missing_ok=True)
        left = []
    return DownloadResult(
        plan.repo_id,
        "",
        meter.fetched,
        plan.total_bytes,
        time.monotonic() - started,
        outcome="paused" if how == PAUSE else "cancelled",
        partial_files=[str(p) for p in left],
    )


def _bytes_on_disk(plan: DownloadPlan, storage: Path) -> int:
    """Bytes already there: files of this revision in the snapshot, and partial files."""
    snapshot = storage / "snapshots" / plan.commit
    done = sum(f.size for f in plan.files if (snapshot / f.name).exists())
    blobs = storage / "blobs"
    if blobs.is_dir():
        done += sum(p.stat().st_size for p in blobs.glob("*.incomplete"))
    return done


def _fetch(plan: DownloadPlan, f: RemoteFile, storage: Path, meter: _Meter, control: Control) -> None:
    """One file into the cache, resuming a partial one."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    if control.state is not None:
        raise DownloadStopped(control.state)
    if (storage / "snapshots" / plan.commit / f.name).exists():
        return
    meta = get_hf_file_metadata(hf_hub_url(plan.repo_id, f.name, revision=plan.commit))
    blob = storage / "blobs" / str(meta.etag)
    if not blob.exists():
        blob.parent.mkdir(parents=True, exist_ok=True)
        partial = blob.with_name(blob.name + ".incomplete")
        resume = partial.stat().st_size if partial.exists() else 0  # already counted in meter.done
        meter.file_bytes = resume
        meter.emit()
        with partial.open("ab") as fh:
            http_get(
                str(meta.location),
                _Writer(fh, meter, control),  # type: ignore[arg-type]
                resume_size=resume,
                headers=build_hf_headers(),
                expected_size=meta.size,
            )
        os.replace(partial, blob)
    # The blob is in place: hf_hub_download links it into the snapshot and records the revision.
    hf_hub_download(plan.repo_id, f.name, revision=plan.commit)


def save_token(token: str) -> str:
    """Check an access token with the hub and store it where ``huggingface_hub`` keeps it (the
    ``token`` file under HF_HOME, as ``hf auth login`` does); returns the user's name."""
    token = token.strip()
    if not token:
        raise ModelError("Paste an access token (it starts with hf_); create one at huggingface.co/settings/tokens.")
    from huggingface_hub import login, whoami

    try:
        login(token=token, add_to_git_credential=False, skip_if_logged_in=False)
        return str(whoami(token)["name"])
    except ValueError as exc:
        raise ModelError(f"The token cannot be used: {exc}") from None
    except Exception as exc:
        if _is_network_error(exc):
            raise DownloadError(
                f"Checking the token needs a network connection, and the hub ({endpoint()}) could not be reached."
            ) from None
        raise ModelError(
            f"The hub refused this access token ({str(exc).splitlines()[0]}). Check that you copied it whole, "
            "or create a new read token at huggingface.co/settings/tokens."
        ) from None


def token_path() -> str:
    from huggingface_hub import constants

    return str(constants.HF_TOKEN_PATH)
