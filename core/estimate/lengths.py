"""The peak for the dataset's real token lengths, beside the worst case at ``data.max_seq_len``.

Each batch is padded to its longest row (``core.data.examples.Collator``), so the batch that sets
the peak holds the longest example the run trains on: ``batch_size`` rows of that length. Packed
data fills sequences up to ``max_seq_len``, so it gets the worst case. When a few long examples set
the peak, a shorter ``max_seq_len`` that cuts only them is proposed, with the peak it would give.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

# A max_seq_len that cuts at most this share of the examples (and at least one) is proposed when
# it lowers the peak by at least RARE_LONG_GAIN.
RARE_LONG_SHARE = 0.01
RARE_LONG_GAIN = 0.05


@dataclass
class DataFit:
    """What the dataset's token lengths mean for the peak (bytes are totals, overhead included)."""

    examples: int  # examples measured
    seq_len: int  # tokens in the longest row of any batch the run forms (<= max_seq_len)
    max_seq_len: int
    worst_case_bytes: int  # total at max_seq_len
    packed: bool = False
    longest: int = 0  # tokens of the longest example before truncation
    cut_at: int | None = None  # a max_seq_len that cuts only a few long examples ...
    cut_examples: int = 0  # ... this many ...
    cut_bytes: int | None = None  # ... and the total it would give


def batch_seq_len(plan, lengths: Sequence[int]) -> int:
    """Tokens in the longest row of any batch the run forms from examples of these lengths."""
    S = plan.data.max_seq_len
    if plan.data.packing or not lengths:
        return S
    return min(S, max(lengths))


def with_seq_len(plan, seq_len: int):
    """A copy of ``plan`` whose batches are ``seq_len`` tokens long."""
    return replace(plan, data=replace(plan.data, max_seq_len=int(seq_len)))


def rare_long_cut(plan, lengths: Sequence[int]) -> tuple[int, int] | None:
    """(max_seq_len, examples cut) that would cut only the longest ``RARE_LONG_SHARE`` of the
    examples, or None when that would not shorten the longest batch."""
    S = plan.data.max_seq_len
    capped = sorted(min(n, S) for n in lengths)
    if plan.data.packing or len(capped) < 2:
        return None
    allowed = max(1, math.floor(len(capped) * RARE_LONG_SHARE))
    cut_at = capped[-allowed - 1]
    if cut_at >= capped[-1] or cut_at < 1:
        return None
    return cut_at, sum(1 for n in capped if n > cut_at)
