"""Training the token embeddings and the LM head: the registry of modes and who trains what.

Each mode (``full``, ``tokens``, ``lora``) is one module holding one ``Mode`` object: its label,
its checks, how PEFT trains it and what it costs in memory. ``MODES`` collects them; the plan's
``embeddings.mode`` choices, the estimate, the command line and the window all read this registry,
so a new mode is a new module plus one line here.

``decide`` is the one place that says which matrix trains in which mode: a tied matrix (one matrix
for input and output) is trained once, from the embedding side; the rows of new tokens train in
every matrix, through the row-wise mode where the matrix is not trained otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PlanError
from . import full, lora, tokens
from .base import ADAPTER, PLAIN, ROWS, MatrixCost, MatrixFacts, Mode

MODES: dict[str, Mode] = {m.name: m for m in (full.MODE, tokens.MODE, lora.MODE)}
MODE_NAMES: tuple[str, ...] = tuple(MODES)
# The mode that trains new tokens' rows in a matrix the plan does not train otherwise.
NEW_ROWS_MODE = tokens.MODE

__all__ = [
    "ADAPTER",
    "MODES",
    "MODE_NAMES",
    "PLAIN",
    "ROWS",
    "Assignment",
    "MatrixCost",
    "MatrixFacts",
    "Mode",
    "check",
    "decide",
]


@dataclass(frozen=True)
class Assignment:
    """One matrix that trains: ``role`` "embedding" (on a tied model, also the head) or "head"."""

    role: str
    mode: Mode
    new_rows_only: bool  # only the new tokens' rows train (the plan does not train this matrix)


def decide(spec, tied: bool, has_head: bool = True) -> list[Assignment]:
    """The matrices that train for the plan's ``embeddings`` section, on a tied or untied model."""
    trained = {"embedding": spec.train_embeddings or (tied and spec.train_lm_head), "head": spec.train_lm_head}
    roles = ("embedding", "head") if has_head and not tied else ("embedding",)
    out = []
    for role in roles:
        if trained[role]:
            out.append(Assignment(role, MODES[spec.mode], False))
        elif spec.adds_tokens:
            out.append(Assignment(role, NEW_ROWS_MODE, True))
    return out


def check(spec) -> None:
    """The checks of the ``embeddings`` section that depend on its mode."""
    mode = MODES[spec.mode]
    mode.check(spec)
    if spec.token_ids and not (spec.train_embeddings or spec.train_lm_head):
        raise PlanError(
            "embeddings.token_ids: rows are listed but neither embeddings.train_embeddings nor "
            "embeddings.train_lm_head is on. Tick one of them (with mode tokens).",
            "embeddings.token_ids",
        )
    if spec.token_ids and not mode.rows:
        raise PlanError(
            f"embeddings.token_ids: rows are listed, but mode is {spec.mode!r}, which trains the whole "
            "matrix. Set embeddings.mode to tokens, or clear the list.",
            "embeddings.token_ids",
        )
