"""Dense segmentation losses: cross-entropy + soft Dice exactly as the DIAS reference.

DIAS uses nnU-Net's ``DC_and_CE_loss({}, {})`` (docs/REFERENCE.md §1): softmax over all
channels, batch Dice (sums over batch and space), background excluded, smooth 1e-5, the Dice term
is ``-dc`` (range [-1, 0], not 1 - dc), CE and Dice weighted 1:1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_SMOOTH = 1e-5


def soft_dice_term(logits_BCHW: torch.Tensor, target_BHW: torch.Tensor, smooth: float = DICE_SMOOTH,
                   mask_BHW: torch.Tensor | None = None) -> torch.Tensor:
    """-mean over foreground channels c>=1 of the batch soft Dice; float32 scalar.

    logits_BCHW: float (B, C, H, W); target_BHW: int64 (B, H, W) with values in [0, C).
    mask_BHW: optional (B, H, W) bool/float; tp/fp/fn then sum over the masked pixels only (the
    partial Dice of scribble supervision, ``dias_dist.methods.weak_losses.partial_soft_dice``).
    """
    probs = torch.softmax(logits_BCHW.float(), dim=1)
    onehot = F.one_hot(target_BHW, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    if mask_BHW is None:
        tp = (probs * onehot).sum(dims)
        fp = (probs * (1 - onehot)).sum(dims)
        fn = ((1 - probs) * onehot).sum(dims)
    else:
        mask = mask_BHW.unsqueeze(1).to(probs.dtype)
        tp = (mask * probs * onehot).sum(dims)
        fp = (mask * probs * (1 - onehot)).sum(dims)
        fn = (mask * (1 - probs) * onehot).sum(dims)
    dc = (2 * tp + smooth) / (2 * tp + fp + fn + smooth + 1e-8)
    return -dc[1:].mean()


def ce_dice_loss(logits_BCHW: torch.Tensor, target_BHW: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"ce", "dice", "total"} float32 scalars for dense targets (B, H, W) int64 in [0, C)."""
    if logits_BCHW.dim() != 4 or target_BHW.shape != (logits_BCHW.shape[0], *logits_BCHW.shape[2:]):
        raise ValueError(f"ce_dice_loss: logits {tuple(logits_BCHW.shape)} and target "
                         f"{tuple(target_BHW.shape)} must be (B, C, H, W) and (B, H, W)")
    ce = F.cross_entropy(logits_BCHW.float(), target_BHW)
    dice = soft_dice_term(logits_BCHW, target_BHW)
    return {"ce": ce, "dice": dice, "total": ce + dice}
