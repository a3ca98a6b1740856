"""IVM: pCE (+ partial Dice) plus the reference's inter/intra-class intensity term (docs/REFERENCE.md §6.4).

L = sup + weight · (inter − intra), weight 0.01 constant (DIAS). The intensity image is the
minimum-intensity projection of the frames (min over T, the intended quantity); ``intensity: argmin``
reproduces the reference, which uses the index of the darkest frame (0..T−1) as a float map.
"""
from __future__ import annotations

import torch

from .base import check_choice, check_number
from .pce import PCE
from .weak_losses import INTENSITY_CHOICES, intensity_image, inter_intra_class_term


class IVM(PCE):
    """Inter/intra-class intensity regularisation on top of ``PCE``."""

    name = "ivm"

    def __init__(self, weight: float = 0.01, intensity: str = "minip", dice: bool = True, num_classes: int = 3):
        super().__init__(dice=dice, num_classes=num_classes)
        self.weight = check_number(self.name, "weight", weight)
        check_choice(self.name, "intensity", intensity, INTENSITY_CHOICES)
        self.intensity = intensity

    def regulariser(self, logits_BCHW: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        term = inter_intra_class_term(logits_BCHW, intensity_image(batch["image"], self.intensity))
        return {"inter_intra": term, "reg": self.weight * term}
