"""DMPLS (Luo et al. 2022): dual-decoder network with dynamically mixed pseudo labels (docs/REFERENCE.md §6.5).

The model (``unet_cct``) returns (main, aux) logits in training mode and the main decoder's logits
in eval mode. Per iteration, with p = softmax over all C channels and one β ~ U(0, 1) + 1e-10:
  sup = 0.5 · (pCE(main) + pCE(aux))
  PL  = argmax over channels 0..1 of (β · p_main + (1 − β) · p_aux), detached (no gradient)
  pls = 0.5 · (pDLoss(p_main, PL) + pDLoss(p_aux, PL)) over all pixels
  total = sup + weight · pls, weight 0.5 (constant).
β is drawn from the global torch RNG, which the checkpoint saves, so resumed runs draw the same βs.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import HEAD_CHOICES, Method, build_with_head, check_choice, check_number
from .weak_losses import partial_cross_entropy, pseudo_label_dice

BETA_EPS = 1e-10


def mixed_pseudo_label(probs_main_BCHW: torch.Tensor, probs_aux_BCHW: torch.Tensor, beta: float) -> torch.Tensor:
    """Hard label (B, H, W) int64: argmax over channels 0..1 of β·p_main + (1 − β)·p_aux, no gradient."""
    with torch.no_grad():
        mixed_BCHW = beta * probs_main_BCHW[:, :2] + (1.0 - beta) * probs_aux_BCHW[:, :2]
        return mixed_BCHW.argmax(dim=1)


class DMPLS(Method):
    """Dual-decoder scribble supervision with dynamically mixed pseudo labels."""

    target_kind = "scribble"
    name = "dmpls"
    statistics = ("beta",)  # the mixing weight drawn this step, logged as ``beta``

    def __init__(self, weight: float = 0.5, num_classes: int = 2):
        self.weight = check_number(self.name, "weight", weight)
        check_choice(self.name, "num_classes", num_classes, HEAD_CHOICES)
        self.num_classes = num_classes

    def build_model(self, name: str, params: dict) -> nn.Module:
        return build_with_head(self.name, name, params, self.num_classes)

    def draw_beta(self) -> float:
        """One mixing weight for the whole iteration (every pixel and sample of the batch)."""
        return float(torch.rand(())) + BETA_EPS

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = model(batch["image"])
        if not (isinstance(outputs, (tuple, list)) and len(outputs) == 2):
            raise ValueError("method 'dmpls' needs a dual-decoder model (model.name: unet_cct) whose training "
                             f"forward returns (main, aux) logits; got {type(outputs).__name__}")
        main_BCHW, aux_BCHW = outputs
        scribble_BHW = batch["target"]
        sup = 0.5 * (partial_cross_entropy(main_BCHW, scribble_BHW) + partial_cross_entropy(aux_BCHW, scribble_BHW))
        probs_main = torch.softmax(main_BCHW.float(), dim=1)
        probs_aux = torch.softmax(aux_BCHW.float(), dim=1)
        beta = self.draw_beta()
        pseudo_BHW = mixed_pseudo_label(probs_main, probs_aux, beta)
        pls = 0.5 * (pseudo_label_dice(probs_main, pseudo_BHW) + pseudo_label_dice(probs_aux, pseudo_BHW))
        return {"sup": sup, "pls": pls, "beta": sup.new_tensor(beta), "total": sup + self.weight * pls}
