"""The memory estimate: a pure function of the plan, the model's config and the target device.

``breakdown`` computes the peak of live tensors by phase and category; ``device`` adds what the
device needs beyond that and says whether it fits; ``advisor`` proposes changes when it does not.
``estimate`` puts the three together; ``plan_estimate`` reads the model's config first;
``parallel`` turns it into memory per device on several devices (DDP, FSDP) and the global batch.
"""

from __future__ import annotations

from dataclasses import replace

from ..model.shape import ModelShape, read_model_config
from .advisor import Advice, advisor, saved_by_defaults
from .breakdown import CATEGORIES, DTYPE_BYTES, Estimate, tensor_peak
from .device import COMMON_GPUS_GIB, GiB, detect_capacity, fit_verdict, gib, parse_size
from .lengths import RARE_LONG_GAIN, DataFit, DataTokens, rare_long_cut
from .parallel import PerDevice, per_device

__all__ = [
    "CATEGORIES",
    "DataFit",
    "DataTokens",
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
    plan,
    shape: ModelShape,
    device: str = "cuda",
    capacity_bytes: int | None = None,
    advise: bool = True,
    data: DataTokens | None = None,
) -> Estimate:
    """Estimate peak training memory of ``plan`` on ``shape``; ``device`` is "cuda" or "cpu".

    With ``data`` (the token lengths of the plan's data) the figure is for the batches this data
    forms, and ``Estimate.data`` holds the worst case at ``data.max_seq_len`` beside it. With
    ``capacity_bytes`` the estimate says whether it fits and, when it does not (and ``advise``),
    which changes would make it fit."""
    est = tensor_peak(plan, shape, device, data)
    est.saved_by_defaults = saved_by_defaults(plan, shape, device, est.total_bytes, data)
    fit = None
    if data is not None:
        fit = DataFit(
            examples=len(data.lengths),
            seq_len=data.seq_len(plan),
            loss_tokens=data.loss_tokens(plan) * (2 if plan.training.method != "sft" else 1),  # pairs: 2 rows
            max_seq_len=plan.data.max_seq_len,
            worst_case_bytes=tensor_peak(plan, shape, device).total_bytes,
            packed=plan.data.packing,
            longest=max(data.lengths),
        )
        cut = rare_long_cut(plan, data)
        if cut is not None:
            cut_plan = replace(plan, data=replace(plan.data, max_seq_len=cut[0]))
            cut_total = tensor_peak(cut_plan, shape, device, data).total_bytes
            if cut_total <= est.total_bytes * (1 - RARE_LONG_GAIN):
                fit.cut_at, fit.cut_examples, fit.cut_bytes = cut[0], cut[1], cut_total
        est.data = fit
    if capacity_bytes:
        est.capacity_bytes = int(capacity_bytes)
        est.fit = fit_verdict(est.total_bytes, capacity_bytes)
        if advise and est.fit != "fits":
            est.advice = advisor(plan, shape, device, capacity_bytes, data)
            if fit is not None and fit.cut_at is not None and fit.cut_bytes is not None:
                why = f"cut the {fit.cut_examples} longest of {fit.examples} examples at {fit.cut_at} tokens"
                est.advice.append(Advice({"data.max_seq_len": fit.cut_at}, fit.cut_bytes, why))
                est.advice.sort(key=lambda x: (x.total_bytes > capacity_bytes, x.total_bytes))
    return est


def plan_estimate(
    plan, device: str = "cuda", capacity_bytes: int | None = None, data: DataTokens | None = None
) -> tuple[Estimate, ModelShape]:
    """Read the model's config for ``plan`` and estimate (no weights loaded)."""
    shape = ModelShape.from_config(read_model_config(plan.model.name_or_path))
    return estimate(plan, shape, device, capacity_bytes, data=data), shape
