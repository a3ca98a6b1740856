"""IPN (image projection network) baseline of Table II, a 3D->2D network (docs/REFERENCE.md §4, 6.36 M).

The sequence is first resized trilinearly along time to 32 frames (the reference resizes the whole
volume to (32, 64, 64); on the 64x64 training patches this is the same, and keeping H, W lets the
model run on other sizes). Five projection learning modules (three Conv3d(3, no bias)-LReLU(0.1),
then max-pool (2, 1, 1)) take the 32 frames to 1, widths 16..256 (64..1024 / ``feature_scale``,
default 4). Three more Conv3d(3, no bias)-LReLU layers (256 -> 64 -> 16 -> classes) and a squeeze
of the time axis give 2D logits. Reference initialisation (kaiming a=0.02).

Note: as in the reference, the last layer ends in LeakyReLU(0.1); the output is still unbounded
in both directions and is used as logits (no sigmoid/softmax is applied).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import check_sequence_input, init_kaiming
from .dr_head import scaled_channels

WIDTHS = (64, 128, 256, 512, 1024)
PROJECTED_FRAMES = 32  # 2**5: five (2, 1, 1) pools reduce it to one


def conv_lrelu(in_channels: int, out_channels: int) -> list:
    return [nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False), nn.LeakyReLU(0.1, inplace=True)]


class ProjectionModule(nn.Sequential):
    """(B, in, T, H, W) -> (B, out, T/2, H, W): three Conv3d-LReLU then max-pool over time."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            *conv_lrelu(in_channels, out_channels),
            *conv_lrelu(out_channels, out_channels),
            *conv_lrelu(out_channels, out_channels),
            nn.MaxPool3d((2, 1, 1)),
        )


class IPN(nn.Module):
    """Input x (B, 1, T, H, W) float32, T = ``num_frames`` (any). Output (B, num_classes, H, W) logits."""

    input_layout = "sequence"

    def __init__(self, num_classes: int = 2, num_frames: int = 8, feature_scale: int = 4):
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"ipn: num_frames={num_frames} must be positive")
        self.num_frames = num_frames
        c = scaled_channels("ipn", WIDTHS, feature_scale)
        self.projections = nn.Sequential(*(ProjectionModule(1 if i == 0 else c[i - 1], c[i]) for i in range(5)))
        self.head = nn.Sequential(*conv_lrelu(c[4], c[2]), *conv_lrelu(c[2], c[0]), *conv_lrelu(c[0], num_classes))
        self.apply(init_kaiming)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input("ipn", x, self.num_frames, 1)
        x = F.interpolate(x, size=(PROJECTED_FRAMES, *x.shape[3:]), mode="trilinear", align_corners=False)
        return self.head(self.projections(x)).squeeze(2)
