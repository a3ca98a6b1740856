"""UNet-3D baseline of Table II: the sequence as a volume, DR head (docs/REFERENCE.md §4, 90.27 M).

Encoder widths 64, 128, 256, 512, 1024 (``width`` scales them); each level is a double
Conv3d(3, no bias)-BN-ReLU. The first max-pool is (1, 2, 2) so the top level keeps all T frames,
the next three are (2, 2, 2); transposed convolutions mirror the pools. The full-resolution
decoder output goes through the DR head. PyTorch default initialisation (as the reference).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_sequence_input, double_conv
from .dr_head import DRHead, check_num_frames

FIRST_POOL = (1, 2, 2)
DEEP_POOL = (2, 2, 2)


class UpConcat3d(nn.Module):
    """ConvTranspose3d(in -> in/2, kernel = stride = ``scale``), concatenate the skip, double conv (Conv3d, no bias)."""

    def __init__(self, in_channels: int, out_channels: int, scale: tuple[int, int, int]):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, in_channels // 2, kernel_size=scale, stride=scale)
        self.conv = double_conv(in_channels, out_channels, bias=False, dims=3)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(deep)], dim=1))


class UNet3D(nn.Module):
    """3D U-Net with the DR head.

    Input x (B, 1, T, H, W) float32, T = ``num_frames`` (a multiple of 8), H and W multiples of 16.
    Output (B, num_classes, H, W) logits.
    """

    input_layout = "sequence"

    def __init__(self, num_classes: int = 2, num_frames: int = 8, width: int = 64):
        super().__init__()
        check_num_frames("unet_3d", num_frames, 8)
        self.num_frames = num_frames
        c = [width * 2**i for i in range(5)]
        self.inc = double_conv(1, c[0], bias=False, dims=3)
        pools = [FIRST_POOL, DEEP_POOL, DEEP_POOL, DEEP_POOL]
        self.pools = nn.ModuleList(nn.MaxPool3d(p) for p in pools)
        self.downs = nn.ModuleList(double_conv(c[i], c[i + 1], bias=False, dims=3) for i in range(4))
        self.ups = nn.ModuleList(UpConcat3d(c[i + 1], c[i], pools[i]) for i in reversed(range(4)))
        self.head = DRHead(c[0], num_frames, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input("unet_3d", x, self.num_frames, 16)
        skips = [self.inc(x)]
        for pool, down in zip(self.pools, self.downs):
            skips.append(down(pool(skips[-1])))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)
