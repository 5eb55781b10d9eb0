"""The peak for the dataset's real token lengths, beside the worst case at ``data.max_seq_len``.

Each batch is padded to its longest row (``core.data.examples.Collator``), so the batch that sets
the peak holds the longest example the run trains on: ``batch_size`` rows of that length. The loss
computes logits only for labelled (trained) tokens, so its share of the peak follows the most
labelled tokens a batch can hold. Packed data fills sequences up to ``max_seq_len``, so its
sequences get the worst case. When a few long examples set the peak, a shorter ``max_seq_len`` that
cuts only them is proposed, with the peak it would give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

# A max_seq_len that cuts at most this share of the examples (and at least one) is proposed when
# it lowers the peak by at least RARE_LONG_GAIN.
RARE_LONG_SHARE = 0.01
RARE_LONG_GAIN = 0.05


@dataclass(frozen=True)
class DataTokens:
    """Tokens per example of a plan's data (before truncation), and labelled tokens per example."""

    lengths: tuple[int, ...]
    trained: tuple[int, ...] | None = None  # None: every token is labelled (the worst case)
    first: tuple[int, ...] | None = None  # position of each example's first labelled token

    @classmethod
    def of(
        cls, lengths: Sequence[int], trained: Sequence[int] | None = None, first: Sequence[int] | None = None
    ) -> DataTokens | None:
        """None when there are no lengths (the estimate then takes the worst case)."""
        if not lengths:
            return None

        def ints(xs):
            return tuple(int(n) for n in xs) if xs is not None else None

        return cls(ints(lengths), ints(trained), ints(first))

    def seq_len(self, plan) -> int:
        """Tokens in the longest row of any batch the run forms."""
        S = plan.data.max_seq_len
        return S if plan.data.packing else min(S, max(self.lengths))

    def loss_tokens(self, plan) -> int:
        """The most labelled tokens a micro-batch can send through the loss (each row's first
        label is dropped by the shift)."""
        S, B = self.seq_len(plan), plan.training.batch_size
        if plan.data.packing or self.trained is None:
            return B * (S - 1)
        # A row cut at S keeps at most S - (its first labelled position) labelled tokens: exact for
        # one reply at the end, an upper bound with several turns.
        first = self.first or (1,) * len(self.trained)
        kept = (min(t, S - max(1, f)) for t, f in zip(self.trained, first))
        most = sorted((max(0, k) for k in kept), reverse=True)[:B]
        return max(1, sum(most))


@dataclass
class DataFit:
    """What the dataset's token lengths mean for the peak (bytes are totals, overhead included)."""

    examples: int  # examples measured
    seq_len: int  # tokens in the longest row of any batch the run forms (<= max_seq_len)
    loss_tokens: int  # the most labelled tokens in one micro-batch
    max_seq_len: int
    worst_case_bytes: int  # total at max_seq_len, every token labelled
    packed: bool = False
    longest: int = 0  # tokens of the longest example before truncation
    cut_at: int | None = None  # a max_seq_len that cuts only a few long examples ...
    cut_examples: int = 0  # ... this many ...
    cut_bytes: int | None = None  # ... and the total it would give


def rare_long_cut(plan, data: DataTokens) -> tuple[int, int] | None:
    """(max_seq_len, examples cut) that would cut only the longest ``RARE_LONG_SHARE`` of the
    examples, or None when that would not shorten the longest batch."""
    S = plan.data.max_seq_len
    capped = sorted(min(n, S) for n in data.lengths)
    if plan.data.packing or len(capped) < 2:
        return None
    allowed = max(1, math.floor(len(capped) * RARE_LONG_SHARE))
    cut_at = capped[-allowed - 1]
    if cut_at >= capped[-1] or cut_at < 2:
        return None
    return cut_at, sum(1 for n in capped if n > cut_at)
