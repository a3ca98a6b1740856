"""The DR ("dimension reduction") head of the 3D baselines and helpers shared by the 3D models.

DR head (docs/REFERENCE.md §4, ``models/d3/DRM.py`` in the reference): at the full-resolution decoder
output (B, C, T, H, W) a ``Conv3d(C -> 1, k=1)`` mixes channels, the channel axis is squeezed to
(B, T, H, W), and a ``Conv2d(T -> num_classes, k=1)`` mixes the frames into 2D logits.

Also here: the 3D models' constructor helpers ``check_num_frames`` and ``scaled_channels``. The
input checks, the reference initialisation and ``freeze_unused`` are in ``blocks``.
"""
from __future__ import annotations

import torch
from torch import nn


class DRHead(nn.Module):
    """(B, C, T, H, W) float -> (B, num_classes, H, W) logits; ``T`` must equal ``num_frames``."""

    def __init__(self, in_channels: int, num_frames: int, num_classes: int):
        super().__init__()
        self.num_frames = num_frames
        self.channel_mix = nn.Conv3d(in_channels, 1, kernel_size=1)
        self.frame_mix = nn.Conv2d(num_frames, num_classes, kernel_size=1)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        assert x_BCTHW.shape[2] == self.num_frames, (tuple(x_BCTHW.shape), self.num_frames)
        x_BTHW = self.channel_mix(x_BCTHW).squeeze(1)
        return self.frame_mix(x_BTHW)


def check_num_frames(model_name: str, num_frames: int, multiple: int) -> None:
    """Constructor check: ``num_frames`` must be a positive multiple of ``multiple``."""
    if num_frames < 1 or num_frames % multiple:
        raise ValueError(f"{model_name}: num_frames={num_frames} must be a positive multiple of {multiple}")


def scaled_channels(model_name: str, base: tuple[int, ...], divisor: int) -> list[int]:
    """``base`` channel widths divided by ``divisor`` (the reference's ``feature_scale``)."""
    if divisor < 1 or any(c % divisor for c in base):
        raise ValueError(f"{model_name}: feature_scale={divisor} must divide every width of {base}")
    return [c // divisor for c in base]
