"""pCE: partial cross-entropy on the scribbled pixels (+ the reference's partial Dice term).

The DIAS "pCE" baseline (``wsl_train_pcedice.py``) is pCE + partial soft Dice with weights 1:1
(docs/REFERENCE.md §6.1); ``dice: false`` gives the plain pCE of the paper's name.
EM, RLoss and IVM add one regulariser to this loss and subclass ``PCE``.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import HEAD_CHOICES, Method, build_with_head, check_choice
from .weak_losses import partial_cross_entropy, partial_soft_dice


class PCE(Method):
    """Partial CE over annotated pixels (+ partial Dice when ``dice``); heads of ``num_classes``
    channels (3 = the reference's head, evaluated with the limited softmax over channels 0..1)."""

    target_kind = "scribble"
    name = "pce"

    def __init__(self, dice: bool = True, num_classes: int = 3):
        check_choice(self.name, "dice", dice, (True, False))
        check_choice(self.name, "num_classes", num_classes, HEAD_CHOICES)
        self.dice = dice
        self.num_classes = num_classes

    def build_model(self, name: str, params: dict) -> nn.Module:
        return build_with_head(self.name, name, params, self.num_classes)

    def scribble_losses(self, logits_BCHW: torch.Tensor, scribble_BHW: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"pce", ["pdice"], "sup"}: the scribble-supervised part shared by pCE, EM, RLoss and IVM."""
        out = {"pce": partial_cross_entropy(logits_BCHW, scribble_BHW)}
        out["sup"] = out["pce"]
        if self.dice:
            out["pdice"] = partial_soft_dice(logits_BCHW, scribble_BHW)
            out["sup"] = out["pce"] + out["pdice"]
        return out

    def regulariser(self, logits_BCHW: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """Extra terms added to ``sup``; must include "reg" (already weighted). pCE has none."""
        return {}

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits_BCHW = model(batch["image"])
        out = self.scribble_losses(logits_BCHW, batch["target"])
        out.update(self.regulariser(logits_BCHW, batch))
        out["total"] = out["sup"] + out["reg"] if "reg" in out else out["sup"]
        return out
