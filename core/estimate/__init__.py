"""The memory estimate: a pure function of the plan, the model's config and the target device.

``breakdown`` computes the peak of live tensors by phase and category; ``device`` adds what the
device needs beyond that and says whether it fits; ``advisor`` proposes changes when it does not.
``estimate`` puts the three together; ``plan_estimate`` reads the model's config first.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..model.shape import ModelShape, read_model_config
from .advisor import Advice, advisor, saved_by_defaults
from .breakdown import CATEGORIES, DTYPE_BYTES, Estimate, tensor_peak
from .device import COMMON_GPUS_GIB, GiB, detect_capacity, fit_verdict, gib, parse_size
from .lengths import RARE_LONG_GAIN, DataFit, batch_seq_len, rare_long_cut, with_seq_len

__all__ = [
    "CATEGORIES",
    "DataFit",
    "COMMON_GPUS_GIB",
    "DTYPE_BYTES",
    "Advice",
    "Estimate",
    "GiB",
    "ModelShape",
    "detect_capacity",
    "estimate",
    "fit_verdict",
    "gib",
    "parse_size",
    "plan_estimate",
    "read_model_config",
]


def estimate(
    plan,
    shape: ModelShape,
    device: str = "cuda",
    capacity_bytes: int | None = None,
    advise: bool = True,
    lengths: Sequence[int] | None = None,
) -> Estimate:
    """Estimate peak training memory of ``plan`` on ``shape``; ``device`` is "cuda" or "cpu".

    With ``lengths`` (tokens per example of the plan's data, before truncation) the figure is for
    the longest batch this data forms, and ``data`` holds the worst case at ``data.max_seq_len``
    beside it. With ``capacity_bytes`` the estimate says whether it fits and, when it does not
    (and ``advise``), which changes would make it fit."""
    data = None
    if lengths:
        data = DataFit(
            examples=len(lengths),
            seq_len=batch_seq_len(plan, lengths),
            max_seq_len=plan.data.max_seq_len,
            worst_case_bytes=tensor_peak(plan, shape, device).total_bytes,
            packed=plan.data.packing,
            longest=max(lengths),
        )
        cut = rare_long_cut(plan, lengths)
        plan = with_seq_len(plan, data.seq_len)
    est = tensor_peak(plan, shape, device)
    est.saved_by_defaults = saved_by_defaults(plan, shape, device, est.total_bytes)
    if data is not None:
        if cut is not None:
            cut_total = tensor_peak(with_seq_len(plan, cut[0]), shape, device).total_bytes
            if cut_total <= est.total_bytes * (1 - RARE_LONG_GAIN):
                data.cut_at, data.cut_examples, data.cut_bytes = cut[0], cut[1], cut_total
        est.data = data
    if capacity_bytes:
        est.capacity_bytes = int(capacity_bytes)
        est.fit = fit_verdict(est.total_bytes, capacity_bytes)
        if advise and est.fit != "fits":
            est.advice = advisor(plan, shape, device, capacity_bytes)
            if data is not None and data.cut_at is not None and data.cut_bytes is not None:
                why = f"cut the {data.cut_examples} longest of {data.examples} examples at {data.cut_at} tokens"
                est.advice.append(Advice({"data.max_seq_len": data.cut_at}, data.cut_bytes, why))
                est.advice.sort(key=lambda x: (x.total_bytes > capacity_bytes, x.total_bytes))
    return est


def plan_estimate(
    plan, device: str = "cuda", capacity_bytes: int | None = None, lengths: Sequence[int] | None = None
) -> tuple[Estimate, ModelShape]:
    """Read the model's config for ``plan`` and estimate (no weights loaded)."""
    shape = ModelShape.from_config(read_model_config(plan.model.name_or_path))
    return estimate(plan, shape, device, capacity_bytes, lengths=lengths), shape
