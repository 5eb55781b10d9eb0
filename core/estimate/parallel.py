"""Memory per device when a plan runs on several devices, and the global batch.

Each process of a data-parallel run holds what a one-process run holds for its own batch (the
plan's ``batch_size`` is per device), plus:

- **DDP** (what ``headtune train`` runs with ``training.devices`` > 1): PyTorch's
  DistributedDataParallel keeps its gradient buckets, one flat buffer per ~25 MB of trainable
  parameters, the size of all trainable gradients together, allocated when the model is wrapped
  and alive to the end (``gradient_as_bucket_view`` is off, the Trainer's default). So the
  trainable gradients are counted once more, in every phase.
- **FSDP** (``training.sharding: fsdp``, as ``core.training.sharding`` runs it): weights,
  gradients and optimizer states divided by the number of devices, plus what is whole at the
  peak, which falls at the root unit's reduce-scatter at the end of backward: two decoder layers
  (the one computing and the one prefetched), the root unit's weights (everything outside the
  decoder layers: the embedding, the head, their trained copies or rows) twice, and the trainable
  gradients three times. That is what was alive at the peak of 2 CPU processes
  (``benchmarks/data_parallel.py``, storages listed by size and shape): the root's flat
  all-gather buffer beside each parameter's whole copy; the gradients unreduced, in the
  reduce-scatter's input, and once more. Activations and the loss region are per device and do
  not shrink. Not measured on GPUs (NCCL may hold fewer copies).

The single-device ``Estimate`` (``core.estimate.breakdown``) supplies the per-category bytes at
its peak phase; this module only redistributes them. Not measured on GPUs (see docs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..model.shape import ModelShape
from .breakdown import Estimate
from .device import overhead_bytes

SHARDED = ("weights_frozen", "weights_trainable", "optimizer_states", "gradients")


@dataclass
class PerDevice:
    """What one of ``devices`` processes needs, and what the run's global batch is."""

    devices: int
    global_batch: int  # examples per optimizer step, over all devices
    tokens_per_step: int  # at most: global batch x max_seq_len
    ddp_buckets_bytes: int
    ddp_total_bytes: int  # per device, with the CUDA overhead
    fsdp_total_bytes: int  # per device, with the CUDA overhead
    fsdp_gathered_bytes: int  # whole at the peak: two decoder layers, the root unit twice, the gradients 3 times

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def per_device(plan, shape: ModelShape, est: Estimate, devices: int) -> PerDevice:
    """Memory per device of ``plan`` on ``devices`` processes, from its one-device estimate ``est``."""
    n = max(1, int(devices))
    t = plan.training
    global_batch = t.batch_size * t.grad_accum * n
    bd = est.breakdown
    # DDP's buckets: every trainable gradient, in the trainable parameters' own dtype (their
    # bytes per value as the estimate counted them in weights_trainable).
    buckets = int(bd["weights_trainable"]) if n > 1 else 0
    ddp_peak = est.tensors_peak_bytes + buckets
    # FSDP: the sharded categories over n, the per-device rest as is, plus what is gathered whole:
    # two decoder layers, the root unit's weights twice, the trainable gradients three times.
    params = max(1, shape.total_params)
    weights = bd["weights_frozen"] + bd["weights_trainable"]
    per_value = weights / params
    layer = sum(i * o for i, o in shape.linear_shapes().values())
    root = max(0, weights - shape.block_linear_params * per_value)
    gathered = int(2 * layer * per_value + 2 * root + 3 * bd["gradients"]) if n > 1 else 0
    sharded = sum(bd[k] for k in SHARDED)
    fsdp_peak = int(est.tensors_peak_bytes - sharded + sharded / n + gathered)
    return PerDevice(
        devices=n,
        global_batch=global_batch,
        tokens_per_step=global_batch * plan.data.max_seq_len,
        ddp_buckets_bytes=buckets,
        ddp_total_bytes=ddp_peak + overhead_bytes(ddp_peak, est.device),
        fsdp_total_bytes=fsdp_peak + overhead_bytes(fsdp_peak, est.device),
        fsdp_gathered_bytes=gathered,
    )
