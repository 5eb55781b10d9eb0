"""What an embeddings mode is: its name and label, its checks, its PEFT setup and its memory terms.

A mode decides how one matrix (the token embedding, the LM head, or a tied matrix that is both)
is trained. Each mode is one module with one ``Mode`` object; the registry in ``embeddings``
collects them, and the plan's choices, the estimate, the command line and the window read them
from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# How a trained matrix enters the loss when it is the head; the estimate models each path once.
PLAIN = "plain"  # one dense weight (frozen, or a full trainable copy)
ADAPTER = "adapter"  # the frozen weight plus a low-rank update: a second output of batch x seq x vocab
ROWS = "rows"  # selected trainable rows merged into the weight on every forward


@dataclass(frozen=True)
class MatrixFacts:
    """One matrix as the estimate sees it."""

    vocab: int
    hidden: int
    rank: int  # the plan's LoRA rank
    rows: int  # rows a row-wise mode trains in this matrix
    tied: bool  # the matrix is both the embedding and the head

    @property
    def values(self) -> int:
        return self.vocab * self.hidden


@dataclass(frozen=True)
class MatrixCost:
    """What a mode keeps for one matrix, in values (the estimate turns values into bytes).

    ``full_copy``: values of a trainable copy of the whole matrix, stored like the trained matrices
    (``memory.matrix_dtype``), with a gradient and matrix optimizer states of the same size.
    ``drops_frozen``: the frozen original may be dropped (``memory.frozen_copy: false``).
    ``adapter``: fp32 trainable values (LoRA factors, row deltas), with fp32 gradients and Adam states.
    ``shadow``: fp32 values whose gradient exists twice during backward (PEFT's tied LoRA shares
    storage between two parameters; their gradients are summed into one before the step). ``frozen_rows``: values of original rows kept beside their deltas.
    """

    full_copy: int = 0
    drops_frozen: bool = False
    adapter: int = 0
    shadow: int = 0
    frozen_rows: int = 0
    head_path: str = PLAIN


class Mode(Protocol):
    """One way to train a matrix. ``rows`` modes train listed rows only (and take ``token_ids``)."""

    name: str
    label: str
    help: str
    rows: bool

    def check(self, spec) -> None:
        """Raise ``PlanError`` when ``spec`` (the plan's ``embeddings`` section) cannot run in this mode."""

    def configure(self, peft_setup, leaf: str, rows: list[int]) -> None:
        """Record in ``peft_setup`` (``EmbeddingSetup``) how PEFT trains the module ``leaf``."""

    def cost(self, m: MatrixFacts) -> MatrixCost:
        """The values this mode keeps for the matrix ``m``."""
