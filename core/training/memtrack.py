"""Measuring the peak of live tensor memory, on CPU as on CUDA.

On CUDA the allocator counts for us (``torch.cuda.max_memory_allocated``). On the CPU nothing
does, so ``LiveTensorTracker`` is a ``TorchDispatchMode`` that sees every tensor an operator
returns, remembers each distinct storage once with its size, and notices its release through a
weak reference. Storages alive when tracking starts (parameters, frozen and quantised ones,
buffers, quantisation constants, optimizer state) are counted too, found through the garbage
collector. (``torch.distributed._tools.mem_tracker.MemTracker`` fails on frozen parameters.)

The peak it reports is what PyTorch's CUDA allocator would count for the same tensors, without
its rounding to 512-byte blocks.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from typing import TYPE_CHECKING

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

if TYPE_CHECKING:
    from .job import TrainingJob


class LiveTensorTracker(TorchDispatchMode):
    """Tracks live tensor storages; ``peak`` is the largest total seen, in bytes."""

    def __init__(self, device_type: str = "cpu"):
        super().__init__()
        self.device_type = device_type
        self._seen = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.current -= nbytes

    def register(self, t: torch.Tensor) -> None:
        if t.device.type != self.device_type or t.is_meta:
            return
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. sparse or wrapper tensors
            return
        if storage in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen[storage] = nbytes
        weakref.finalize(storage, self._release, nbytes)
        self.current += nbytes
        if self.current > self.peak:
            self.peak = self.current

    def register_alive(self) -> None:
        """Count every tensor that exists now (the model, quantisation state, optimizer state)."""
        gc.collect()
        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor):
                    self.register(obj)
            except ReferenceError:
                continue

    def reset_peak(self) -> None:
        self.peak = self.current

    def __enter__(self):
        out = super().__enter__()
        self.register_alive()
        self.reset_peak()
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self.register, out)
        return out


@contextlib.contextmanager
def cuda_peak():
    """Yields a dict that holds ``peak`` (max_memory_allocated) once the block ends."""
    result = {}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    try:
        yield result
    finally:
        torch.cuda.synchronize()
        result["peak"] = torch.cuda.max_memory_allocated()
        result["reserved_peak"] = torch.cuda.max_memory_reserved()


def run_with_peak(plan) -> tuple[dict, TrainingJob]:
    """Run ``plan`` as a ``TrainingJob`` and return ({device, peak_bytes} (and reserved_peak_bytes on
    CUDA), the finished job): the tensor peak over the training loop."""
    from .job import TrainingJob

    if torch.cuda.is_available():
        holder: dict = {}

        @contextlib.contextmanager
        def around():
            with cuda_peak() as peak:
                yield
            holder.update(peak)

        job = TrainingJob(plan, around_training=around)
        job.run()
        return dict(device="cuda", peak_bytes=holder["peak"], reserved_peak_bytes=holder["reserved_peak"]), job
    tracker = LiveTensorTracker("cpu")
    job = TrainingJob(plan, around_training=lambda: tracker)
    job.run()
    return dict(device="cpu", peak_bytes=tracker.peak), job


def measure_peak(plan, steps: int = 3) -> dict:
    """Run ``plan`` for ``steps`` real optimizer steps and return the measured tensor peak.

    The run goes to ``plan.output.dir`` like any run (use a temporary folder). On CUDA the peak
    is ``torch.cuda.max_memory_allocated``; on the CPU the live-storage tracker's peak. Evaluation
    and checkpoints are turned off so only training is measured.
    """
    import dataclasses

    from .adapters import count_parameters

    t = dataclasses.replace(plan.training, max_steps=steps, eval_every=0, save_every=0)
    plan = dataclasses.replace(plan, training=t)
    result, job = run_with_peak(plan)
    result["trainable_params"] = count_parameters(job.model)[0]
    return result
