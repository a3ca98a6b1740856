"""RLoss: pCE (+ partial Dice) plus the gated CRF loss (docs/REFERENCE.md §6.3).

L = sup + weight · GatedCRF(softmax over all C), radius 5, Potts compatibility, normalised by B·H·W.
Kernels: the DIAS reference's spatial-only ``[{weight: 0.1, xy: 6}]`` by default; WSL4MIS's
``[{weight: 1, xy: 6, intensity: 0.1}]`` adds an intensity term, computed on the minimum-intensity
projection of the input frames (min over T).
"""
from __future__ import annotations

import torch

from .base import check_number
from .pce import PCE
from .weak_losses import SPATIAL_ONLY_KERNELS, check_kernels, gated_crf_loss, intensity_image


class RLoss(PCE):
    """Gated CRF regularisation on top of ``PCE``."""

    name = "rloss"

    def __init__(self, weight: float = 0.1, kernels: list | None = None, radius: int = 5,
                 dice: bool = True, num_classes: int = 3):
        super().__init__(dice=dice, num_classes=num_classes)
        self.weight = check_number(self.name, "weight", weight)
        self.kernels = check_kernels(list(SPATIAL_ONLY_KERNELS) if kernels is None else kernels,
                                     where=f"method {self.name!r}: method.params.kernels")
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
            raise ValueError(f"method {self.name!r}: method.params.radius must be an int >= 1, got {radius!r}")
        self.radius = radius
        self.uses_intensity = any("intensity" in k for k in self.kernels)

    def regulariser(self, logits_BCHW: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        minip_BHW = intensity_image(batch["image"], "minip") if self.uses_intensity else None
        crf = gated_crf_loss(logits_BCHW, self.kernels, self.radius, minip_BHW, checked=True)
        return {"gated_crf": crf, "reg": self.weight * crf}
