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

from dias_dist.models import build_model

IGNORE_INDEX = 255  # scribble value for "not annotated"
HEAD_CHOICES = (2, 3)  # output channels a weak method's head may have (3 = the reference's head)


def check_choice(method: str, key: str, value, choices) -> None:
    """ValueError naming ``method.params.key`` when ``value`` is not one of ``choices``."""
    bool_choices = all(isinstance(c, bool) for c in choices)
    if isinstance(value, bool) != bool_choices or value not in choices:
        raise ValueError(f"method {method!r}: method.params.{key} must be one of {list(choices)}, got {value!r}")


def check_number(method: str, key: str, value, minimum: float = 0.0) -> float:
    """ValueError naming ``method.params.key`` unless ``value`` is a number >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ValueError(f"method {method!r}: method.params.{key} must be a number >= {minimum}, got {value!r}")
    return float(value)


def build_with_head(method: str, name: str, params: dict, num_classes: int) -> nn.Module:
    """Build registered model ``name`` with ``num_classes`` output channels from the method.

    ``model.params.num_classes`` may repeat the method's value but not contradict it.
    """
    given = params.get("num_classes", num_classes)
    if given != num_classes:
        raise ValueError(f"model.params.num_classes = {given!r} contradicts method {method!r} "
                         f"method.params.num_classes = {num_classes}; set only the method's")
    return build_model(name, **{**params, "num_classes": num_classes})


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
        return build_model(name, **params)

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError
