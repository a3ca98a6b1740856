"""SSCR (DIAS): scribble supervision + cross pseudo supervision + consistency (docs/REFERENCE.md §6.6).

Two networks A and B of the same backbone, independently initialised, live in one ``DualNet``
module (one process group, one optimiser over both, one checkpoint; AdamW is per-parameter, so
this equals the reference's two optimisers without gradient clipping). Each branch sees its own
intensity augmentation of the same patch. With z_A, z_B the logits (softmax over all C channels):
  Ŷ_X  = argmax over channels 0..1 of z_X (limited softmax), scribble pixels copied over it
  L = pCE(z_A) + pCE(z_B)                                   (+ partial Dice when ``dice``)
    + λ1 · [CE(z_A, Ŷ_B) + CE(z_B, Ŷ_A)]                    ``pseudo: cross`` (paper, default)
      or λ1 · [CE(z_A, Ŷ_A) + CE(z_B, Ŷ_B)]                 ``pseudo: self`` (reference main script)
    + λ2 · consistency, where ``consistency: soft`` (default) is the MSE between the two vessel
      probability maps (limited softmax; it has a gradient) and ``consistency: hard`` is the
      reference's MSE between Ŷ_A and Ŷ_B (no gradient; it only shifts the logged loss).
Pseudo CE covers all pixels. Evaluation uses network A.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dias_dist.models import as_frames, vessel_probability

from .base import HEAD_CHOICES, Method, build_with_head, check_choice, check_number
from .intensity_aug import augment_intensity
from .weak_losses import limited_argmax, overwrite_with_scribbles, partial_cross_entropy, partial_soft_dice


class DualNet(nn.Module):
    """Networks A and B. ``forward(x_a, x_b)`` -> (logits_A, logits_B); ``forward(x)`` -> logits_A."""

    def __init__(self, net_a: nn.Module, net_b: nn.Module):
        super().__init__()
        self.net_a = net_a
        self.net_b = net_b
        self.input_layout = getattr(net_a, "input_layout", None)

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor | None = None):
        if x_b is None:
            return self.net_a(x_a)
        return self.net_a(x_a), self.net_b(x_b)


def sscr_terms(logits_a: torch.Tensor, logits_b: torch.Tensor, scribble_BHW: torch.Tensor, *,
               pseudo: str = "cross", consistency: str = "soft", dice: bool = False) -> dict[str, torch.Tensor]:
    """Unweighted SSCR terms from both branches' logits (B, C, H, W) and the scribble (B, H, W).

    Returns {"sup", "pseudo_a", "pseudo_b", "consistency"}; ``pseudo_a`` is the CE that trains A
    (against Ŷ_B for ``cross``, Ŷ_A for ``self``), ``pseudo_b`` the CE that trains B.
    """
    sup = partial_cross_entropy(logits_a, scribble_BHW) + partial_cross_entropy(logits_b, scribble_BHW)
    if dice:
        sup = sup + partial_soft_dice(logits_a, scribble_BHW) + partial_soft_dice(logits_b, scribble_BHW)
    label_a = overwrite_with_scribbles(limited_argmax(logits_a.detach()), scribble_BHW)
    label_b = overwrite_with_scribbles(limited_argmax(logits_b.detach()), scribble_BHW)
    teacher_of_a, teacher_of_b = (label_b, label_a) if pseudo == "cross" else (label_a, label_b)
    pseudo_a = F.cross_entropy(logits_a.float(), teacher_of_a)
    pseudo_b = F.cross_entropy(logits_b.float(), teacher_of_b)
    if consistency == "soft":
        cons = F.mse_loss(vessel_probability(logits_a), vessel_probability(logits_b))
    else:
        cons = F.mse_loss(label_a.float(), label_b.float())
    return {"sup": sup, "pseudo_a": pseudo_a, "pseudo_b": pseudo_b, "consistency": cons}


class SSCR(Method):
    """Two networks, per-branch intensity augmentation, cross pseudo supervision, consistency."""

    target_kind = "scribble"
    name = "sscr"

    def __init__(self, pseudo: str = "cross", consistency: str = "soft", lambda1: float = 1.0,
                 lambda2: float = 0.5, dice: bool = False, augment: bool = True, num_classes: int = 3):
        check_choice(self.name, "pseudo", pseudo, ("cross", "self"))
        check_choice(self.name, "consistency", consistency, ("soft", "hard"))
        check_choice(self.name, "dice", dice, (True, False))
        check_choice(self.name, "augment", augment, (True, False))
        check_choice(self.name, "num_classes", num_classes, HEAD_CHOICES)
        self.pseudo, self.consistency, self.dice, self.augment = pseudo, consistency, dice, augment
        self.lambda1 = check_number(self.name, "lambda1", lambda1)
        self.lambda2 = check_number(self.name, "lambda2", lambda2)
        self.num_classes = num_classes
        self._generator: torch.Generator | None = None

    def build_model(self, name: str, params: dict) -> nn.Module:
        net_a = build_with_head(self.name, name, params, self.num_classes)
        net_b = build_with_head(self.name, name, params, self.num_classes)  # its own random init
        return DualNet(net_a, net_b)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Intensity-augment x in either layout. The device generator is re-seeded every call from
        the global torch RNG (saved in checkpoints), so the augmentation resumes exactly."""
        if self._generator is None or self._generator.device != x.device:
            self._generator = torch.Generator(device=x.device)
        self._generator.manual_seed(int(torch.randint(0, 2**62, ())))
        with torch.autocast(x.device.type, enabled=False):  # blur and noise in fp32 under bf16 training
            frames = augment_intensity(as_frames(x).float(), self._generator).to(x.dtype)
        return frames.unsqueeze(1) if x.dim() == 5 else frames

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = batch["image"]
        x_a, x_b = (self._augment(image), self._augment(image)) if self.augment else (image, image)
        outputs = model(x_a, x_b)
        if not (isinstance(outputs, (tuple, list)) and len(outputs) == 2):
            raise ValueError("method 'sscr' needs the DualNet built by SSCR.build_model; "
                             f"the model returned {type(outputs).__name__}")
        terms = sscr_terms(*outputs, batch["target"], pseudo=self.pseudo, consistency=self.consistency,
                           dice=self.dice)
        terms["total"] = (terms["sup"] + self.lambda1 * (terms["pseudo_a"] + terms["pseudo_b"])
                          + self.lambda2 * terms["consistency"])
        return terms
