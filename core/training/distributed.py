"""One plan on several processes: what the ranks of a data-parallel run must agree on.

Under ``torch.distributed.run`` (started by ``headtune train`` itself, by ``torchrun`` or by
``accelerate launch``) every process runs the same job on its share of each global batch; the
Trainer wraps the model in DistributedDataParallel, which averages the gradients. Three things
the Trainer does not agree on by itself are agreed here:

- **refusals**: a plan refused on one rank (a run folder that is not empty, which only the main
  process checks; a dataset one machine cannot read) is refused on every rank, with the same
  message and exit code, instead of leaving the others waiting in a collective forever;
- **stops**: a stop request (the window's Stop, Ctrl+C, SIGTERM) may reach one rank only; the
  flag is all-reduced at every step boundary, so all ranks stop after the same step and write one
  checkpoint;
- **sums**: the validation loss is summed over tokens on each rank and the sums added up, so
  ``eval_loss`` is the same number whatever the number of processes.

Outside a launcher (``WORLD_SIZE`` unset or 1) every function here is a no-op.
"""

from __future__ import annotations

import os

# What Accelerate's launcher sets for a sharded (FSDP) or DeepSpeed configuration. FSDP is the
# plan's (training.sharding: fsdp, core.training.sharding), not the launcher's.
SHARDED_LAUNCH_ENV = {
    "ACCELERATE_USE_FSDP": "FSDP (fully sharded data parallel)",
    "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
}


def check_launcher() -> None:
    """Refuse a launcher configured for sharded training through Accelerate (the Trainer would
    shard the model its own way, beside ``training.sharding``, which is what Headtune runs)."""
    from ..errors import BadInputError

    for var, what in SHARDED_LAUNCH_ENV.items():
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes"):
            raise BadInputError(
                f"The launcher asks for {what} ({var} is set), which Headtune does not take from a launcher: "
                "its plan says how the processes hold the model. Launch without it (accelerate launch with "
                "distributed_type MULTI_GPU, or torchrun) and set training.sharding: fsdp in the plan for "
                "fully sharded training, or let `headtune train` start the processes (training.devices)."
            )


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """Whether this process is one rank of several and the process group is up."""
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def join() -> None:
    """Join the process group now, before any check, so that the ranks can agree on a refusal.
    Accelerate's process state is the one the Trainer then reuses (gloo on CPUs, NCCL on GPUs)."""
    if world_size() <= 1:
        return
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())


def _device():
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (a collective: every rank calls it)."""
    if not active():
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums of ``values`` over the ranks, in float64 (a collective)."""
    if not active():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def agree(error: BaseException | None) -> None:
    """Every rank calls this at the same point with the error it met (or None). When any rank
    failed, every rank raises: the rank's own error where it has one, else the first failed
    rank's error again (same type, message and exit code), so a refusal exits alike everywhere."""
    if not active():
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    from ..errors import BadInputError, HeadtuneError, RunError

    mine = None
    if error is not None:
        mine = (type(error).__name__, str(error), getattr(error, "exit_code", 1), isinstance(error, HeadtuneError))
    outcomes: list = [None] * world_size()
    dist.all_gather_object(outcomes, mine)
    if error is not None:
        raise error
    failed = [(r, o) for r, o in enumerate(outcomes) if o is not None]
    if not failed:
        return
    r, (name, message, code, typed) = failed[0]
    if not typed:
        raise RunError(f"Process {r} of {world_size()} failed while starting: {name}: {message}")
    # The same message and exit code as on the rank that met it (2 for bad input).
    raise BadInputError(message) if code == BadInputError.exit_code else RunError(message)


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def from_main(value):
    """The main process's ``value`` on every rank (a collective; any picklable value)."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` says another process of the run is gone (killed, out of memory, its
    machine unreachable): a collective failed rather than this process's own work."""
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return any(s in text for s in ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL"))
