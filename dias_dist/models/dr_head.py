"""The DR ("dimension reduction") head of the 3D baselines and helpers shared by the 3D models.

DR head (DIAS-CODE.md §4, ``models/d3/DRM.py`` in the reference): at the full-resolution decoder
output (B, C, T, H, W) a ``Conv3d(C -> 1, k=1)`` mixes channels, the channel axis is squeezed to
(B, T, H, W), and a ``Conv2d(T -> num_classes, k=1)`` mixes the frames into 2D logits.

Also here: the input checks every 3D / 3D->2D / 2D-backbone model uses (a wrong layout, frame count
or spatial size is a ``ValueError`` naming the model and the shapes), the reference initialisation
(``kaiming_normal_(a=0.02)``, zero bias) and ``freeze_unused``, which keeps layers that the reference
defines but never calls (so the parameter count equals Table II) out of training.
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


def check_sequence_input(
    model_name: str, x: torch.Tensor, num_frames: int, spatial_multiple: int, min_side: int = 1
) -> None:
    """Raise ValueError unless ``x`` is (B, 1, num_frames, H, W) with H, W multiples of
    ``spatial_multiple`` and at least ``min_side``."""
    if x.dim() != 5 or x.shape[1] != 1:
        raise ValueError(
            f"{model_name} takes the sequence layout (B, 1, T, H, W) with T={num_frames}; "
            f"got a tensor of shape {tuple(x.shape)}"
        )
    _check_frames_and_size(model_name, tuple(x.shape), x.shape[2], x.shape[3:], num_frames, spatial_multiple, min_side)


def check_frames_input(
    model_name: str, x: torch.Tensor, num_frames: int, spatial_multiple: int, min_side: int = 1
) -> None:
    """Raise ValueError unless ``x`` is (B, num_frames, H, W) (frames as channels) with H, W
    multiples of ``spatial_multiple`` and at least ``min_side``."""
    if x.dim() != 4:
        raise ValueError(
            f"{model_name} takes the frames layout (B, T, H, W) with T={num_frames}; "
            f"got a tensor of shape {tuple(x.shape)}"
        )
    _check_frames_and_size(model_name, tuple(x.shape), x.shape[1], x.shape[2:], num_frames, spatial_multiple, min_side)


def _check_frames_and_size(model_name, shape, frames, spatial, num_frames, spatial_multiple, min_side) -> None:
    if frames != num_frames:
        raise ValueError(
            f"{model_name} is configured for num_frames={num_frames} but got {frames} frames "
            f"(input shape {shape})"
        )
    height, width = int(spatial[0]), int(spatial[1])
    if height % spatial_multiple or width % spatial_multiple or min(height, width) < min_side:
        raise ValueError(
            f"{model_name} needs H and W that are multiples of {spatial_multiple} and at least {min_side}; "
            f"got input shape {shape}"
        )


def check_num_frames(model_name: str, num_frames: int, multiple: int) -> None:
    """Constructor check: ``num_frames`` must be a positive multiple of ``multiple``."""
    if num_frames < 1 or num_frames % multiple:
        raise ValueError(f"{model_name}: num_frames={num_frames} must be a positive multiple of {multiple}")


def scaled_channels(model_name: str, base: tuple[int, ...], divisor: int) -> list[int]:
    """``base`` channel widths divided by ``divisor`` (the reference's ``feature_scale``)."""
    if divisor < 1 or any(c % divisor for c in base):
        raise ValueError(f"{model_name}: feature_scale={divisor} must divide every width of {base}")
    return [c // divisor for c in base]
