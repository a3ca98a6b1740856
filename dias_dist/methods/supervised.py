"""Full supervision (DIAS FSL): CE + soft Dice on the dense label, weights 1:1."""
from __future__ import annotations

import torch
from torch import nn

from dias_dist.losses import ce_dice_loss

from .base import Method


class Supervised(Method):
    """Dense supervision of the model's logits (B, C, H, W) by ``batch["target"]`` int64 (B, H, W)."""

    target_kind = "dense"

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"ce", "dice", "total"} float32 scalars."""
        return ce_dice_loss(model(batch["image"]), batch["target"])
