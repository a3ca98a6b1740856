"""The one seam between the training loop and a training method.

A method changes only the loss: ``losses(model, batch)`` returns a dict of named scalar losses
that includes ``"total"`` (the loop backpropagates ``total`` and logs every entry). The loop
never branches on the method's name.

Batch dict handed to ``losses`` (already on the device, image already in the model's layout):
  image   float32  (B, T, H, W) or (B, 1, T, H, W)   z-scored frames
  target  int64    (B, H, W)   dense {0,1} (label / pseudo label) or scribble {0,1,255}
  is_pseudo bool   (B,)        True for patches whose target is a pseudo label (RPST; logged as pseudo_share)
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

IGNORE_INDEX = 255  # scribble value for "not annotated"


class Method:
    """Base class. Subclasses set ``target_kind`` and implement ``losses``."""

    #: "dense" (every pixel labelled: label / pseudo) or "scribble" ({0,1,255} maps)
    target_kind: ClassVar[str] = "dense"
    #: entries of ``losses`` that are statistics, not losses: logged under their own name, not ``loss_<name>``
    statistics: ClassVar[tuple[str, ...]] = ()

    def build_model(self, name: str, params: dict) -> nn.Module:
        """Build the network(s) this method trains. Default: one registered model, 2 classes.

        Methods with several networks (SSCR) or heads return one nn.Module whose ``forward`` in
        eval mode returns the logits used for evaluation (B, C, H, W).
        """
        from dias_dist.models import build_model

        return build_model(name, **params)

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError
