"""``tokens``: only selected rows train (PEFT ``trainable_token_indices``).

The rows are ``embeddings.token_ids`` plus new tokens. PEFT keeps an fp32 delta and the original
of each selected row, and every forward merges them into the full matrix.
"""

from __future__ import annotations

from ..errors import PlanError
from .base import ROWS, MatrixCost, MatrixFacts


class TokensMode:
    name = "tokens"
    label = "Selected token rows only"
    help = "tokens (only the rows in token_ids and of new tokens)"
    rows = True

    def check(self, spec) -> None:
        if (spec.train_embeddings or spec.train_lm_head) and not (spec.token_ids or spec.adds_tokens):
            raise PlanError(
                "embeddings.token_ids: tokens mode trains only listed rows, but none are listed. Add "
                "token ids here or strings to embeddings.new_tokens, or choose mode full or lora.",
                "embeddings.token_ids",
            )

    def configure(self, peft_setup, leaf: str, rows: list[int]) -> None:
        peft_setup.token_indices[leaf] = list(rows)

    def cost(self, m: MatrixFacts) -> MatrixCost:
        return MatrixCost(adapter=m.rows * m.hidden, frozen_rows=m.rows * m.hidden, head_path=ROWS)


MODE = TokensMode()
