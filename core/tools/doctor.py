"""System check (``headtune doctor``, Help → System check): can this computer run what the user asks?

Before a first run people need to know about their drivers, CUDA, bitsandbytes and free memory,
so this module looks for itself rather than trusting labels: it reads the library versions, asks
torch for each GPU (name, total and free memory, compute capability, driver and CUDA versions),
runs a tiny **real** 4-bit (NF4) and 8-bit (LLM.int8) bitsandbytes matmul and one 8-bit optimizer
step on the device training would use, compares them with float32, tries bf16 there, and measures
free RAM and the free disk where the runs are written. Each problem comes with a fix the user can
apply. Qt-free (the window shows the same report), and importing it loads no heavy library:
torch and bitsandbytes are imported by ``run_checks``.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__

GiB = 1024**3
OK, INFO, WARNING, ERROR = "ok", "info", "warning", "error"

# The minimum versions Headtune supports; kept equal to pyproject.toml's dependencies (a test
# compares them), so the check and the installer agree.
REQUIREMENTS = {
    "torch": ("2.4", None),
    "transformers": ("5.0", "6"),
    "peft": ("0.18", None),
    "bitsandbytes": ("0.45", None),
    "datasets": ("3.0", None),
    "accelerate": ("1.0", None),
}
VERSION_KEYS = ("headtune", "python", "torch", "transformers", "peft", "bitsandbytes", "datasets", "accelerate")

# Tolerances of the quantised matmul against float32 on random normal data: NF4 measures about
# 0.10 relative error, LLM.int8 about 0.006 (bitsandbytes 0.50, CPU); a broken kernel is far off.
MAX_ERROR_4BIT, MAX_ERROR_8BIT = 0.25, 0.05
LOW_RAM, LOW_DISK, LOW_VRAM = 4 * GiB, 10 * GiB, 6 * GiB

TORCH_INSTALL_URL = "https://pytorch.org/get-started/locally/"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, what was found, and (for problems) the fix."""

    name: str
    status: str  # ok | info | warning | error
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    capability: str  # "8.6"
    bf16: bool


@dataclass
class Report:
    versions: dict[str, str]
    platform: str
    torch_build: str  # "cpu", "CUDA 12.4", "ROCm 6.2", or "not installed"
    gpus: list[Gpu]
    driver: str | None  # NVIDIA driver version (nvidia-smi) when known
    cuda_driver: str | None  # highest CUDA version the driver supports (from torch), when known
    device: str  # where training would run: "cuda" or "cpu"
    ram_total_bytes: int
    ram_available_bytes: int
    output_dir: str  # the folder whose disk is measured (nearest existing one)
    disk_free_bytes: int
    disk_total_bytes: int
    # CPU features that decide bitsandbytes' 4-bit CPU path, and the path Headtune uses.
    cpu: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status in (WARNING, ERROR)]

    @property
    def ok(self) -> bool:
        """No check failed outright (warnings, such as having no GPU, still leave it usable)."""
        return not any(c.status == ERROR for c in self.checks)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def summary(self) -> str:
        errors = sum(c.status == ERROR for c in self.checks)
        warnings = sum(c.status == WARNING for c in self.checks)
        where = f"GPU: {self.gpus[0].name}" if self.gpus else "No GPU: training runs on the CPU (slowly)"
        verdict = "all checks passed" if not errors and not warnings else f"{errors} error(s), {warnings} warning(s)"
        return f"{where}; {verdict}."

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["summary"] = self.summary
        return d

    def to_text(self) -> str:
        """The report as plain text: what the CLI prints and "Copy diagnostics" copies."""
        g = lambda n: f"{n / GiB:.1f} GiB"  # noqa: E731
        lines = ["Headtune system check", "", "Versions"]
        width = max(len(k) for k in self.versions)
        lines += [f"  {k:<{width}}  {v}" for k, v in self.versions.items()]
        lines.append(f"  {'platform':<{width}}  {self.platform}")
        lines += ["", "Hardware"]
        if self.gpus:
            for gpu in self.gpus:
                lines.append(
                    f"  GPU {gpu.index}: {gpu.name}, {g(gpu.total_bytes)} total, {g(gpu.free_bytes)} free, "
                    f"compute capability {gpu.capability}, bf16 {'yes' if gpu.bf16 else 'no'}"
                )
        else:
            lines.append("  GPU: none found (torch sees no GPU)")
        lines.append(
            f"  torch build: {self.torch_build}; NVIDIA driver: {self.driver or 'not found'}"
            + (f" (supports CUDA {self.cuda_driver})" if self.cuda_driver else "")
        )
        if self.cpu:
            feats = ", ".join(
                f"{name} {'yes' if self.cpu.get(key) else 'no'}"
                for key, name in (
                    ("avx2", "AVX2"),
                    ("avx512", "AVX-512"),
                    ("avx512_bf16", "AVX-512 BF16"),
                    ("amx", "AMX"),
                )
            )
            lines.append(f"  CPU: {self.cpu.get('arch', '?')}, {feats}")
            lines.append(f"  4-bit on the CPU: {self.cpu.get('path', '')}")
        lines.append(f"  RAM: {g(self.ram_available_bytes)} available of {g(self.ram_total_bytes)}")
        lines.append(f"  disk: {g(self.disk_free_bytes)} free of {g(self.disk_total_bytes)} in {self.output_dir}")
        lines += ["", "Checks"]
        for c in self.checks:
            lines.append(f"  [{c.status}] {c.name}: {c.detail}")
        if self.problems:
            lines += ["", "Problems and fixes"]
            for c in self.problems:
                lines.append(f"  - {c.name}: {c.fix or c.detail}")
        lines += ["", f"Summary: {self.summary} (checked in {self.seconds:.1f} s)"]
        return "\n".join(lines)


# -- versions --------------------------------------------------------------------------------
def _dist_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def torch_build() -> str:
    """'CUDA 12.4', 'ROCm 6.2', 'cpu', or 'not installed' (imports torch)."""
    try:
        import torch
    except Exception:
        return "not installed"
    if getattr(torch.version, "cuda", None):
        return f"CUDA {torch.version.cuda}"
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip}"
    return "cpu"


def versions() -> dict[str, str]:
    """Headtune's and Python's versions and its libraries' (from their metadata); ``torch_cuda`` is
    the CUDA version torch was built for, or 'cpu'. What ``headtune --version`` prints."""
    out = {"headtune": __version__, "python": platform.python_version()}
    for dist in VERSION_KEYS[2:]:
        out[dist] = _dist_version(dist) or "not installed"
    build = torch_build()
    out["torch_cuda"] = build.removeprefix("CUDA ") if build.startswith("CUDA ") else build
    return out


def version_lines() -> list[str]:
    """``headtune --version``: one 'name version' line each; torch's line names its CUDA or 'cpu'."""
    v = versions()
    cuda = v.pop("torch_cuda")
    lines = []
    for key, value in v.items():
        if key == "torch" and value != "not installed":
            value += f" ({'cpu' if cuda == 'cpu' else cuda if cuda.startswith('ROCm') else 'CUDA ' + cuda})"
        lines.append(f"{key} {value}")
    return lines


def _older(found: str, minimum: str) -> bool:
    try:
        from packaging.version import Version

        return Version(found) < Version(minimum)
    except Exception:  # an unparsable version is not worth a false alarm
        return False


def _check_python() -> Check:
    found = platform.python_version()
    return Check("Python", OK, f"Python {found} ({platform.python_implementation()})")


def _check_libraries(found: dict[str, str]) -> Check:
    missing, old = [], []
    for dist, (low, high) in REQUIREMENTS.items():
        version = found.get(dist, "not installed")
        if version == "not installed":
            missing.append(dist)
        elif _older(version.split("+")[0], low) or (high and not _older(version.split("+")[0], high)):
            old.append(f"{dist} {version} (needs >={low}" + (f",<{high}" if high else "") + ")")
    if missing or old:
        parts = ([f"not installed: {', '.join(missing)}"] if missing else []) + (
            [f"unsupported: {', '.join(old)}"] if old else []
        )
        names = " ".join(missing + [o.split()[0] for o in old])
        fix = (
            f"Install supported versions: pip install --upgrade {names}"
            if "torch" not in names
            else f"Install PyTorch for your system first ({TORCH_INSTALL_URL}), then: pip install --upgrade "
            f"{names.replace('torch', '').strip() or 'headtune'}"
        )
        return Check("libraries", ERROR, "; ".join(parts), fix)
    return Check("libraries", OK, ", ".join(f"{d} {found[d]}" for d in REQUIREMENTS))


# -- GPU ---------------------------------------------------------------------------------------
def nvidia_smi() -> tuple[str | None, list[str]]:
    """(driver version, GPU names) from nvidia-smi, or (None, []) when it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None, []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, []
    rows = [[p.strip() for p in line.split(",", 1)] for line in out.splitlines() if "," in line]
    return (rows[0][0] if rows else None), [r[1] for r in rows]


def _gpus(torch) -> list[Gpu]:
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        major, minor = torch.cuda.get_device_capability(i)
        with torch.cuda.device(i):
            bf16 = bool(torch.cuda.is_bf16_supported())
        out.append(Gpu(i, torch.cuda.get_device_name(i), int(total), int(free), f"{major}.{minor}", bf16))
    return out


def _cuda_driver_version(torch) -> str | None:
    try:
        v = int(torch._C._cuda_getDriverVersion())  # e.g. 12040 -> "12.4"
        return f"{v // 1000}.{(v % 1000) // 10}" if v else None
    except Exception:
        return None


def _check_gpu(build: str, gpus: list[Gpu], smi_names: list[str], driver: str | None) -> list[Check]:
    if gpus:
        return _gpu_found(build, gpus)
    return _no_gpu(build, smi_names, driver)


def _gpu_found(build: str, gpus: list[Gpu]) -> list[Check]:
    """The GPUs torch sees, and warnings about the first (the one training uses)."""
    checks = [
        Check(
            "GPU",
            OK,
            "; ".join(
                f"{g.name} ({g.total_bytes / GiB:.1f} GiB, {g.free_bytes / GiB:.1f} GiB "
                f"free, compute capability {g.capability})"
                for g in gpus
            ),
        )
    ]
    gpu = gpus[0]
    if gpu.total_bytes < LOW_VRAM:
        checks.append(
            Check(
                "GPU memory",
                WARNING,
                f"{gpu.name} has {gpu.total_bytes / GiB:.1f} GiB",
                "Small GPU: use model.quantization: 4bit (QLoRA), a small model, a short "
                "data.max_seq_len and batch size 1; `headtune estimate` shows what fits.",
            )
        )
    elif gpu.free_bytes < 0.5 * gpu.total_bytes:
        checks.append(
            Check(
                "GPU memory",
                WARNING,
                f"only {gpu.free_bytes / GiB:.1f} of {gpu.total_bytes / GiB:.1f} "
                "GiB free: other programs are using the GPU",
                "Close other programs that use the GPU (games, browsers with hardware "
                "acceleration, other training runs; nvidia-smi lists them) before training.",
            )
        )
    major = int(gpu.capability.split(".")[0])
    if major < 7 and not build.startswith("ROCm"):
        checks.append(
            Check(
                "GPU generation",
                WARNING,
                f"compute capability {gpu.capability} is older than 7.0",
                "This GPU predates Volta; recent PyTorch and bitsandbytes builds may not support "
                "it. Train on the CPU, or use a newer GPU.",
            )
        )
    return checks


def _no_gpu(build: str, smi_names: list[str], driver: str | None) -> list[Check]:
    """Why torch sees no GPU, and what to do about it."""
    if build == "not installed":
        return [Check("GPU", ERROR, "torch is not installed", f"Install PyTorch for your system: {TORCH_INSTALL_URL}")]
    if build == "cpu":
        if smi_names:
            return [
                Check(
                    "GPU",
                    WARNING,
                    f"No GPU for training: {smi_names[0]} is present, but this PyTorch is a CPU-only build",
                    f"Reinstall PyTorch with CUDA (pick the command for your system at {TORCH_INSTALL_URL}, "
                    "e.g. pip install --force-reinstall torch --index-url "
                    "https://download.pytorch.org/whl/cu124), then run headtune doctor again.",
                )
            ]
        return [
            Check(
                "GPU",
                WARNING,
                "No GPU: torch sees no GPU (this PyTorch is a CPU-only build), so training "
                "runs on the CPU, which is slow (fine for the demo and small models)",
                f"To train on an NVIDIA GPU: install its driver, then the CUDA build of PyTorch ({TORCH_INSTALL_URL}).",
            )
        ]
    # A CUDA/ROCm build that sees no device: driver missing, too old, or no GPU.
    if driver:
        return [
            Check(
                "GPU",
                ERROR,
                f"No GPU visible to PyTorch ({build} build), although the NVIDIA driver {driver} is installed",
                f"The driver may be too old for {build}: update it, or install a PyTorch build for an older "
                f"CUDA ({TORCH_INSTALL_URL}). Check CUDA_VISIBLE_DEVICES is not empty, then reboot.",
            )
        ]
    return [
        Check(
            "GPU",
            WARNING,
            f"No GPU: PyTorch is built for {build} but finds no GPU or driver",
            "Install (or update) your GPU's driver so that nvidia-smi lists the GPU; without one, training "
            "runs on the CPU.",
        )
    ]


# -- real kernels --------------------------------------------------------------------------------
def _relative_error(torch, y, ref) -> float:
    y = y.float().cpu()
    if not torch.isfinite(y).all():
        return float("inf")
    return float((y - ref).norm() / ref.norm())


def quantized_matmul_error(bits: int, device: str, packed: bool = False) -> float:
    """Relative error of a real bitsandbytes 4-bit (NF4) or 8-bit (LLM.int8) linear layer against
    float32, on ``device``; raises if bitsandbytes cannot do it (or leaves the weight unquantised).
    ``packed`` (4-bit on the CPU): the packed AVX-512 BF16 kernel that chat uses, in evaluation mode."""
    import bitsandbytes as bnb
    import torch

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 64, generator=gen)
    x = torch.randn(8, 64, generator=gen)
    ref = x @ w.T
    layer: torch.nn.Module
    if bits == 4:
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4")
        expected_dtype = torch.uint8
    else:
        layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False, threshold=0.0)
        layer.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
        expected_dtype = torch.int8
    layer = layer.to(device)  # quantises the weight
    if layer.weight.dtype != expected_dtype:
        raise RuntimeError(f"the weight stayed {layer.weight.dtype} on {device}: not quantised")
    if packed:
        from ..model.cpu4bit import allow_packed, packed_layers

        allow_packed(layer)
        layer.eval()
    with torch.no_grad():
        y = layer(x.to(device))
    if packed and not packed_layers(layer):
        raise RuntimeError("the layer did not take the packed AVX-512 BF16 path")
    return _relative_error(torch, y, ref)


def optimizer_8bit_step(device: str) -> None:
    """One real step of bitsandbytes' AdamW8bit (training.optimizer: adamw_8bit) on ``device``."""
    import bitsandbytes as bnb
    import torch

    p = torch.nn.Parameter(torch.randn(4096, device=device))
    before = p.detach().clone()
    opt = bnb.optim.AdamW8bit([p], lr=1e-2)
    p.grad = torch.randn(4096, device=device)
    opt.step()
    if not torch.isfinite(p).all() or torch.equal(p.detach(), before):
        raise RuntimeError("the step left the weights unchanged or not finite")
    if opt.state[p]["state1"].dtype != torch.uint8:
        raise RuntimeError(f"optimizer states are {opt.state[p]['state1'].dtype}, not 8-bit")


def _bnb_fix(device: str, exc: BaseException | None) -> str:
    if device == "cuda":
        return (
            "Reinstall bitsandbytes for your CUDA (pip install --upgrade --force-reinstall bitsandbytes); its "
            "wheels support NVIDIA GPUs of compute capability 5.0+ and CUDA 11.8-12.x. Without it, use "
            "model.quantization: none and training.optimizer: adamw."
        )
    return (
        "Reinstall bitsandbytes (pip install --upgrade --force-reinstall bitsandbytes; 0.45 or newer runs on "
        "CPUs). Without it, use model.quantization: none and training.optimizer: adamw."
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text[:200]}" if text else exc.__class__.__name__


def _check_bitsandbytes(device: str) -> list[Check]:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:
        detail = "not installed" if isinstance(exc, ModuleNotFoundError) else f"does not load ({_short(exc)})"
        fix = _bnb_fix(device, exc)
        return [
            Check(f"bitsandbytes {kind}", ERROR, f"bitsandbytes {detail}", fix)
            for kind in ("4-bit", "8-bit", "8-bit optimizer")
        ]
    from ..model.cpu4bit import packed_kernel_available

    checks = []
    kernels = [
        (4, False, MAX_ERROR_4BIT, "NF4 (QLoRA)", "bitsandbytes 4-bit"),
        (8, False, MAX_ERROR_8BIT, "LLM.int8", "bitsandbytes 8-bit"),
    ]
    if device == "cpu" and packed_kernel_available():
        kernels.insert(1, (4, True, MAX_ERROR_4BIT, "NF4 packed AVX-512 BF16 (chat)", "bitsandbytes 4-bit packed"))
    for bits, packed, limit, what, name in kernels:
        try:
            err = quantized_matmul_error(bits, device, packed)
        except Exception as exc:
            if os.environ.get("HEADTUNE_DEBUG"):
                traceback.print_exc(file=sys.stderr)
            checks.append(Check(name, ERROR, f"{what} matmul on {device} failed: {_short(exc)}", _bnb_fix(device, exc)))
            continue
        if err <= limit:
            checks.append(
                Check(name, OK, f"{what} matmul on {device} works ({err:.1%} off float32; expected under {limit:.0%})")
            )
        else:
            checks.append(
                Check(
                    name,
                    ERROR,
                    f"{what} matmul on {device} gives wrong results ({err:.1%} off "
                    f"float32, expected under {limit:.0%})",
                    _bnb_fix(device, None),
                )
            )
    try:
        optimizer_8bit_step(device)
        checks.append(Check("bitsandbytes 8-bit optimizer", OK, f"an AdamW8bit step on {device} works"))
    except Exception as exc:
        checks.append(
            Check(
                "bitsandbytes 8-bit optimizer",
                ERROR,
                f"an AdamW8bit step on {device} failed: {_short(exc)}",
                _bnb_fix(device, exc),
            )
        )
    return checks


def _cpu() -> dict:
    from ..model.cpu4bit import cpu_features, path_description

    return {**cpu_features(), "path": path_description()}


def _check_bf16(torch, device: str, gpus: list[Gpu]) -> Check:
    if device == "cuda" and gpus and not gpus[0].bf16:
        return Check(
            "bf16",
            WARNING,
            f"{gpus[0].name} does not support bfloat16",
            "Set model.dtype: float16 (or float32) in the plan; bfloat16 needs an Ampere (RTX 30xx) or newer GPU.",
        )
    try:
        a = torch.ones(16, 16, dtype=torch.bfloat16, device=device)
        result = float((a @ a).float().sum())
        if result != 16 * 16 * 16:
            raise RuntimeError(f"wrong result {result}")
    except Exception as exc:
        return Check(
            "bf16",
            WARNING,
            f"a bfloat16 matmul on {device} failed: {_short(exc)}",
            "Set model.dtype: float32 (CPU) or float16 (GPU) in the plan.",
        )
    if device == "cpu":
        return Check("bf16", OK, "bfloat16 works on the CPU (for CPU training model.dtype: float32 is usually faster)")
    return Check("bf16", OK, f"bfloat16 is supported on {gpus[0].name}")


# -- memory and disk --------------------------------------------------------------------------
def existing_folder(path: str | os.PathLike) -> Path:
    """``path`` or its nearest existing parent (a run folder does not exist before the run)."""
    p = Path(path).expanduser().resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_ram(total: int, available: int) -> Check:
    text = f"{available / GiB:.1f} GiB available of {total / GiB:.1f} GiB"
    if available < LOW_RAM:
        return Check(
            "RAM",
            WARNING,
            text,
            "Close other programs before training: loading a model needs RAM "
            "(about its file size, briefly), and CPU training holds it all in RAM.",
        )
    return Check("RAM", OK, text)


def _check_disk(folder: Path, free: int) -> Check:
    text = f"{free / GiB:.1f} GiB free in {folder}"
    if not os.access(folder, os.W_OK):
        return Check(
            "disk",
            ERROR,
            f"{folder} is not writable",
            "Choose an output folder you can write to (output.dir in the plan, or the Training tab).",
        )
    if free < LOW_DISK:
        return Check(
            "disk",
            WARNING,
            text,
            "Free some space or choose an output folder on a larger disk: "
            "checkpoints hold the adapter and optimizer states, and a merged "
            "export is as big as the model (about 16 GB for an 8B model in bf16).",
        )
    return Check("disk", OK, text)


# -- the whole check ----------------------------------------------------------------------------
def run_checks(output_dir: str | os.PathLike = "runs", device: str | None = None) -> Report:
    """Check this computer; ``output_dir`` is where runs are written (its disk is measured).
    ``device`` forces where bitsandbytes and bf16 are tried (default: the GPU if torch sees one)."""
    import psutil

    t0 = time.perf_counter()
    found = versions()
    build = torch_build()
    checks = [_check_python(), _check_libraries(found)]
    driver, smi_names = nvidia_smi()
    gpus: list[Gpu] = []
    cuda_driver = None
    torch: Any = None
    try:
        import torch

        if torch.cuda.is_available():
            gpus = _gpus(torch)
            cuda_driver = _cuda_driver_version(torch)
    except Exception as exc:
        if build != "not installed":
            checks.append(
                Check(
                    "GPU",
                    ERROR,
                    f"torch failed while looking for GPUs: {_short(exc)}",
                    f"Reinstall PyTorch for your system ({TORCH_INSTALL_URL}) and update the GPU driver.",
                )
            )
    if not any(c.name == "GPU" for c in checks):
        checks += _check_gpu(build, gpus, smi_names, driver)
    device = device or ("cuda" if gpus else "cpu")
    if torch is not None:
        checks += _check_bitsandbytes(device)
        checks.append(_check_bf16(torch, device, gpus))
    vm = psutil.virtual_memory()
    checks.append(_check_ram(int(vm.total), int(vm.available)))
    folder = existing_folder(output_dir)
    disk = shutil.disk_usage(folder)
    checks.append(_check_disk(folder, int(disk.free)))
    return Report(
        versions={k: v for k, v in found.items() if k != "torch_cuda"},
        platform=platform.platform(),
        torch_build=build,
        gpus=gpus,
        driver=driver,
        cuda_driver=cuda_driver,
        device=device,
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        output_dir=str(folder),
        disk_free_bytes=int(disk.free),
        disk_total_bytes=int(disk.total),
        cpu=_cpu(),
        checks=checks,
        seconds=time.perf_counter() - t0,
    )
