"""Rows of the embedding or head that look untrained, and resetting them to the mean of the others.

Base models ship rows that were never or barely trained (Llama 3's reserved and some special
tokens among them): their norms sit far below a typical row, or many of them are identical. The
token-health view reports them; ``embeddings.init_untrained: mean`` resets them before training
(and again when a trained run is reloaded, so the adapter meets the rows it was trained on).
"""

from __future__ import annotations

# A row is "far below typical" when its L2 norm is under this share of the median row norm.
NORM_RATIO = 0.1


# Rows are "identical" when they agree to this share of a typical row norm (compared through a
# few random projections, so a 128k x 4096 matrix is checked without pairwise distances).
DUPLICATE_TOLERANCE = 1e-4


PROJECTIONS = 8


def untrained_rows(weight) -> dict[int, list[str]]:
    """Row ids of ``weight`` (vocab x hidden) that look untrained, with the reasons."""
    import torch

    w = weight.detach().float()
    norms = w.norm(dim=1)
    typical = float(norms.median())
    flagged: dict[int, list[str]] = {}
    if typical == 0.0:
        return {i: ["the whole matrix is zero"] for i in range(w.shape[0])}
    for i in torch.nonzero(norms < NORM_RATIO * typical).flatten().tolist():
        flagged.setdefault(i, []).append(f"norm {float(norms[i]):.3g}, typical {typical:.3g}")
    gen = torch.Generator().manual_seed(0)
    proj = torch.randn(w.shape[1], PROJECTIONS, generator=gen) / w.shape[1] ** 0.5
    keys = torch.round((w @ proj) / (typical * DUPLICATE_TOLERANCE)).to(torch.int64)
    _, inverse, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    for i in torch.nonzero(counts[inverse] > 1).flatten().tolist():
        n = int(counts[inverse[i]])
        flagged.setdefault(i, []).append(f"identical to {n - 1} other row{'s' if n > 2 else ''}")
    return flagged


def init_untrained_mean(model) -> list[int]:
    """Set every untrained-looking row (embedding, and head when untied) to the mean of the rows
    not flagged. Returns the ids changed (the union over both matrices)."""
    import torch

    changed: set[int] = set()
    layers = [model.get_input_embeddings(), model.get_output_embeddings()]
    seen = set()
    with torch.no_grad():
        for layer in layers:
            if layer is None or id(layer.weight) in seen:
                continue
            seen.add(id(layer.weight))
            w = layer.weight
            ids = sorted(untrained_rows(w))
            if not ids or len(ids) == w.shape[0]:
                continue
            keep = torch.ones(w.shape[0], dtype=torch.bool)
            keep[ids] = False
            w[ids] = w[keep].float().mean(dim=0, keepdim=True).to(w.dtype).expand(len(ids), -1)
            changed.update(ids)
    return sorted(changed)
