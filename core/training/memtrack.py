"""Measuring the peak of live tensor memory, on CPU as on CUDA.

On CUDA the allocator counts for us (``torch.cuda.max_memory_allocated``). On the CPU nothing
does, so ``LiveTensorTracker`` is a ``TorchDispatchMode`` that sees every tensor an operator
returns, remembers each distinct storage once with its size, and notices its release through a
weak reference. Storages alive when tracking starts (parameters, frozen and quantised ones,
buffers, quantisation constants, optimizer state) are counted too, found through the garbage
collector. (``torch.distributed._tools.mem_tracker.MemTracker`` fails on frozen parameters.)
FSDP frees and re-gathers its units by resizing their storages in place, which no operator
shows; the tracker follows those resizes too, so a sharded run's peak is what is really alive.

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

    def register(self, t: torch.Tensor) -> None:
        if t.device.type != self.device_type or t.is_meta:
            return
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # e.g. sparse or wrapper tensors
            return
        if storage in self._seen:
            return
        box = [storage.nbytes()]  # its size now (FSDP resizes storages in place, see _resized)
        self._seen[storage] = box
        weakref.finalize(storage, self._release_box, box)
        self._grow(box[0])

    def _release_box(self, box: list[int]) -> None:
        self.current -= box[0]

    def _grow(self, nbytes: int) -> None:
        self.current += nbytes
        if self.current > self.peak:
            self.peak = self.current

    def _resized(self, storage) -> None:
        """A tracked storage changed size in place (FSDP frees a gathered unit with
        ``storage.resize_(0)`` and gathers it again into the same storage; no operator shows it)."""
        box = self._seen.get(storage)
        if box is not None and box[0] != storage.nbytes():
            before, box[0] = box[0], storage.nbytes()
            self._grow(box[0] - before)

    @contextlib.contextmanager
    def _fsdp_resizes(self):
        """Let FSDP2's in-place storage frees and re-allocations reach the count."""
        try:
            from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group
        except ImportError:
            yield
            return
        alloc, free = _fsdp_param.alloc_storage, _fsdp_param.free_storage

        def watched(original):
            def resize(tensor) -> None:
                original(tensor)
                self._resized(tensor.untyped_storage())

            return resize

        _fsdp_param.alloc_storage = _fsdp_param_group.alloc_storage = watched(alloc)
        _fsdp_param.free_storage = watched(free)
        try:
            yield
        finally:
            _fsdp_param.alloc_storage = _fsdp_param_group.alloc_storage = alloc
            _fsdp_param.free_storage = free

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
        self._patches = contextlib.ExitStack()
        self._patches.enter_context(self._fsdp_resizes())
        out = super().__enter__()
        self.register_alive()
        self.reset_peak()
        return out

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._patches.close()

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
