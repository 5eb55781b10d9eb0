"""Fully sharded training (FSDP, ``training.sharding: fsdp``): each process holds a share of the model.

PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) splits every parameter along its first
dimension over the processes. The units gathered whole for a moment are:

- each **decoder layer** (its frozen weights and its LoRA factors): gathered for its forward, freed
  after it, gathered again for its backward (and its recomputation under gradient checkpointing),
  then its gradients are reduce-scattered, so each process keeps only its share;
- the **root**: everything else, i.e. the embedding, the LM head, the final norm and what the
  embeddings mode trains on them (PEFT ``modules_to_save`` copies, trainable token rows, LoRA on
  them). The root is gathered when the model's forward starts and stays gathered until the end of
  backward (FSDP2 does not free the root after forward). That is what the chunked loss needs: it
  applies the head outside the model's forward, reading the head's weight directly, which within
  that span is the whole matrix, and its gradient joins the root's reduce-scatter at the end of
  backward. A tied embedding and head are one parameter, so they are in one unit by construction.

The adapter is saved from whole tensors: every trainable parameter and every root parameter is
gathered (a collective: every process calls ``gathered_state_dict``), then the main process writes
it with PEFT's own ``save_pretrained``, so the adapter folder is the same as a one-process run's.
Checkpoints hold the same gathered adapter and the optimizer state gathered whole, keyed by
parameter name (``optimizer.pt``); a resume loads the adapter weights before sharding and scatters
the optimizer state back into the shards, on any number of processes.

4-bit (QLoRA) models shard like the others: the packed 4-bit weights are split as bytes and
gathered whole, and bitsandbytes finds their quantization state again (tested on CPU processes
against one process). Refused before anything loads (``core.plan.checks``): 8-bit (LLM.int8)
models (a gathered weight loses the scales bitsandbytes keeps on it: the layer fails) and the
bitsandbytes optimizers (their kernels step plain tensors, not shards). 8-bit optimizer states for
the matrices fall back to 32-bit (``core.plan.memory_options``).
"""

from __future__ import annotations

from ..errors import ShardingError
from . import distributed


def wanted(plan) -> bool:
    """Whether this process shards: the plan asks for FSDP and there are several processes."""
    return plan.training.sharding == "fsdp" and distributed.world_size() > 1


def decoder_layers(model) -> list:
    """The repeated blocks of a (PEFT-wrapped) transformers model: modules whose class the model
    names in ``_no_split_modules`` (the decoder layer classes), outermost first."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    layers: list = []
    for m in model.modules():
        if type(m).__name__ in names and not any(m is not o and _contains(o, m) for o in layers):
            layers.append(m)
    return layers


def _contains(outer, inner) -> bool:
    return any(inner is m for m in outer.modules())


def shard(model, device: str) -> int:
    """Shard ``model`` in place over the processes of the run (decoder layers, then the root);
    returns the number of layer units. Parameters become ``DTensor`` shards."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from .adapters import aliased_parameters

    if aliased_parameters(model):
        raise ShardingError(
            "training.sharding: fsdp cannot shard LoRA on the embeddings and head of a model that ties them: "
            "the head's LoRA factors are the embedding's, over the same memory, which FSDP would split into "
            "two parameters that train apart. Use embeddings.mode full or tokens, or training.sharding: none "
            "(data parallel trains it)."
        )
    layers = decoder_layers(model)
    if not layers:
        raise ShardingError(
            f"training.sharding: fsdp found no decoder layers to shard in this model ({type(model).__name__}): "
            "it does not name its layer class (_no_split_modules). Train it with training.sharding: none."
        )
    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (dist.get_world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(layers)


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _layer_prefixes(model) -> tuple[str, ...]:
    from torch.distributed.fsdp import FSDPModule

    return tuple(f"{name}." for name, m in model.named_modules() if name and isinstance(m, FSDPModule))


def gathered_state_dict(model) -> dict:
    """Whole tensors (on the CPU) of every trainable parameter and of every parameter and buffer
    outside the decoder layers: a superset of what PEFT saves in an adapter (LoRA factors,
    ``modules_to_save`` copies, token rows, and the embedding when the vocabulary grew). A
    collective: every process calls it and gets the same dictionary."""
    from torch.distributed.tensor import DTensor

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    in_layers = _layer_prefixes(model)
    out: dict = {}
    done: dict[int, object] = {}
    for key, value in model.state_dict().items():
        if key not in trainable and key.startswith(in_layers):
            continue
        if id(value) in done:  # a tied parameter under two names: gathered once
            out[key] = done[id(value)]
            continue
        whole = value.full_tensor() if isinstance(value, DTensor) else value
        out[key] = done[id(value)] = whole.detach().to("cpu", copy=True)
    return out


def gathered_optimizer_state(model, optimizer) -> dict:
    """The optimizer's state gathered whole, on the CPU, keyed by parameter name (a collective: every
    process calls it; the main process gets the values and writes them)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Scatter a state from ``gathered_optimizer_state`` back into the shards (every process calls
    it with the whole state)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def load_adapter_weights(model, checkpoint) -> None:
    """Load the adapter weights of ``checkpoint`` into the (not yet sharded) PEFT ``model``, as the
    Trainer's resume would (it cannot once the parameters are shards)."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    set_peft_model_state_dict(model, load_peft_weights(str(checkpoint), device="cpu"))
