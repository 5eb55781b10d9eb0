"""Whether a loaded model keeps the rows of a padding-free batch apart.

A padding-free batch (``core.data.examples.FlatCollator``) is one sequence whose positions restart
at 0 on each row. transformers' attention turns those positions into a block-diagonal causal mask
(sdpa, eager) or per-row kernels (flash attention), but only for architectures that build their
mask through ``masking_utils`` and only without a cache. Rather than trusting a list of
architectures, the job asks the model itself: two short rows laid end to end must give the second
row the logits it gets alone. A model that lets the rows see each other fails by far more than
rounding, so the comparison is against how far off the rows would be if they did see each other.
"""

from __future__ import annotations


def honours_row_positions(model) -> bool:
    """True when ``model`` (use_cache off) attends within each row of a padding-free batch."""
    import torch

    vocab = model.get_input_embeddings().weight.shape[0]
    first = [(7 * i + 3) % vocab for i in range(1, 6)]
    second = [(11 * i + 5) % vocab for i in range(1, 5)]
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([first + second], device=device)
    positions = torch.tensor([list(range(len(first))) + list(range(len(second)))], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([second], device=device), use_cache=False).logits[0].float()
            flat = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, len(first) :].float()
            # The rows seeing each other (one ordinary sequence): how far off a mixed-up batch is.
            mixed = model(input_ids=ids, use_cache=False).logits[0, len(first) :].float()
    finally:
        model.train(was_training)
    error = (flat - alone).abs().max().item()
    mixed_error = (mixed - alone).abs().max().item()
    return error <= 0.05 * mixed_error
