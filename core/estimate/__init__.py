"""The memory estimate: a pure function of the plan, the model's config and the target device.

``breakdown`` computes the peak of live tensors by phase and category; ``device`` adds what the
device needs beyond that and says whether it fits; ``advisor`` proposes changes when it does not.
``estimate`` puts the three together; ``plan_estimate`` reads the model's config first;
``parallel`` turns it into memory per device on several devices (DDP, FSDP) and the global batch.
"""

from __future__ import annotations

from ..model.shape import ModelShape, read_model_config
from .advisor import Advice, advisor
from .breakdown import CATEGORIES, DTYPE_BYTES, Estimate, tensor_peak
from .device import COMMON_GPUS_GIB, GiB, detect_capacity, fit_verdict, gib, parse_size
from .parallel import PerDevice, per_device

__all__ = [
    "CATEGORIES",
    "COMMON_GPUS_GIB",
    "DTYPE_BYTES",
    "Advice",
    "Estimate",
    "GiB",
    "ModelShape",
    "PerDevice",
    "detect_capacity",
    "estimate",
    "fit_verdict",
    "gib",
    "parse_size",
    "per_device",
    "plan_estimate",
    "read_model_config",
]


def estimate(
    plan, shape: ModelShape, device: str = "cuda", capacity_bytes: int | None = None, advise: bool = True
) -> Estimate:
    """Estimate peak training memory of ``plan`` on ``shape``; ``device`` is "cuda" or "cpu".

    With ``capacity_bytes`` the estimate says whether it fits and, when it does not (and
    ``advise``), which changes would make it fit."""
    est = tensor_peak(plan, shape, device)
    if capacity_bytes:
        est.capacity_bytes = int(capacity_bytes)
        est.fit = fit_verdict(est.total_bytes, capacity_bytes)
        if advise and est.fit != "fits":
            est.advice = advisor(plan, shape, device, capacity_bytes)
    return est


def plan_estimate(plan, device: str = "cuda", capacity_bytes: int | None = None) -> tuple[Estimate, ModelShape]:
    """Read the model's config for ``plan`` and estimate (no weights loaded)."""
    shape = ModelShape.from_config(read_model_config(plan.model.name_or_path))
    return estimate(plan, shape, device, capacity_bytes), shape
