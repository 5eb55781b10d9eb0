"""``lora``: a low-rank update of the matrix (LoRA on ``embed_tokens`` / ``lm_head``)."""

from __future__ import annotations

from .base import ADAPTER, MatrixCost, MatrixFacts


class LoraMode:
    name = "lora"
    label = "LoRA on the matrix"
    help = "lora (a low-rank update)"
    rows = False

    def check(self, spec) -> None:
        pass

    def configure(self, peft_setup, leaf: str, rows: list[int]) -> None:
        peft_setup.lora_targets.append(leaf)

    def cost(self, m: MatrixFacts) -> MatrixCost:
        factors = m.rank * (m.vocab + m.hidden)
        # PEFT ties a tied model's head LoRA to the embedding's through a second Parameter on the
        # same storage: one copy of the values and of the optimizer states, two gradients in backward.
        return MatrixCost(adapter=factors, shadow=factors if m.tied else 0, head_path=ADAPTER)


MODE = LoraMode()
