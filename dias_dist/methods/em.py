"""EM: pCE (+ partial Dice) plus entropy minimisation over all pixels (docs/REFERENCE.md §6.2).

L = sup + weight · mean_pixels(−Σ_c p_c log(p_c + 1e-6)) / log 2, constant weight: 5 in the DIAS
reference (0.1 in WSL4MIS). The entropy is over all C channels, normalised by log 2 as the reference.
"""
from __future__ import annotations

import torch

from .base import check_number
from .pce import PCE
from .weak_losses import entropy


class EM(PCE):
    """Entropy minimisation on top of ``PCE``."""

    name = "em"

    def __init__(self, weight: float = 5.0, dice: bool = True, num_classes: int = 3):
        super().__init__(dice=dice, num_classes=num_classes)
        self.weight = check_number(self.name, "weight", weight)

    def regulariser(self, logits_BCHW: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        ent = entropy(logits_BCHW, normaliser_classes=2)
        return {"entropy": ent, "reg": self.weight * ent}
