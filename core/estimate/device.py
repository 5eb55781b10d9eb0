"""The target device: its capacity, the overhead beyond live tensors, and the fit verdict."""

from __future__ import annotations

import math

from ..errors import PlanError

GiB = 1024**3
COMMON_GPUS_GIB = (8, 12, 16, 24)


# CUDA context + cuBLAS/cuDNN workspaces, and the caching allocator's slack over the tensor peak.
CUDA_CONTEXT_BYTES = 500 * 1024**2
ALLOCATOR_SLACK = 0.08


def overhead_bytes(tensors_peak: int, device: str) -> int:
    """What the device needs beyond live tensors (none on the CPU: RSS is not the budget there)."""
    return int(CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * tensors_peak) if device.startswith("cuda") else 0


def fit_verdict(total: int, capacity: int) -> str:
    if total > capacity:
        return "no"
    return "tight" if total > 0.9 * capacity else "fits"


def detect_capacity(device: str) -> tuple[int | None, str]:
    """(bytes, description) of the target's memory: the GPU's total, or this computer's RAM."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None, "no CUDA GPU detected"
        try:
            free, total = torch.cuda.mem_get_info()
        except RuntimeError as exc:  # a GPU torch sees but cannot query: a driver problem, not "no GPU"
            return None, f"the GPU's memory could not be read ({exc}); `headtune doctor` checks the driver"
        return int(total), f"{torch.cuda.get_device_name()} ({total / GiB:.1f} GiB)"
    import psutil

    total = psutil.virtual_memory().total
    return int(total), f"this computer's RAM ({total / GiB:.1f} GiB)"


def gib(n: float) -> float:
    return n / GiB


def parse_size(text: str) -> int:
    """'12GiB', '12 GB', '12g', '12000MiB' or plain bytes -> bytes (GB taken as GiB, like GPU specs)."""
    s = text.strip().lower().replace(" ", "")
    units = {
        "tib": 1024**4,
        "tb": 1024**4,
        "t": 1024**4,
        "gib": GiB,
        "gb": GiB,
        "g": GiB,
        "mib": 1024**2,
        "mb": 1024**2,
        "m": 1024**2,
        "b": 1,
        "": 1,
    }
    for unit in sorted(units, key=len, reverse=True):
        if s.endswith(unit):
            number = s[: len(s) - len(unit)] if unit else s
            try:
                value = float(number)
            except ValueError:
                break
            if value <= 0 or not math.isfinite(value):
                break
            return int(value * units[unit])
    raise PlanError(f"--gpu-memory {text!r}: expected a size such as 12GiB, 8GB or 24000MiB.")
