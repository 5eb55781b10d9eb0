"""``full``: a trainable copy of the whole matrix (PEFT ``modules_to_save``)."""

from __future__ import annotations

from .base import PLAIN, MatrixCost, MatrixFacts


class FullMode:
    name = "full"
    label = "Full matrix"
    help = "full (a trainable copy of the whole matrix)"
    rows = False

    def check(self, spec) -> None:
        pass

    def configure(self, peft_setup, leaf: str, rows: list[int]) -> None:
        peft_setup.modules_to_save.append(leaf)

    def cost(self, m: MatrixFacts) -> MatrixCost:
        return MatrixCost(full_copy=m.values, drops_frozen=True, head_path=PLAIN)


MODE = FullMode()
