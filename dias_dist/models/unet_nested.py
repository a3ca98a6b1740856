"""UNet++ (nested U-Net) 2D baseline of Table II (frames as input channels), 9.05 M.

docs/REFERENCE.md §4: widths 32..512 (``width`` = the first; reference feature_scale 2). Encoder nodes
X_i0 are double Conv3x3(bias)-BN-ReLU after a 2x2 max-pool; decoder nodes X_ij (j >= 1) take
ConvTranspose2d(2x2, s2)(X_(i+1)(j-1)) concatenated with X_i0..X_i(j-1) and apply a double
Conv3x3(bias)-ReLU without norm (BN in the encoder only). Deep supervision: the output is the
average of four 1x1 heads on X_01..X_04 (one loss on the average). Kaiming init (a=0.02).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_frames_input, double_conv, init_kaiming

LEVELS = 5


class NestedNode(nn.Module):
    """Decoder node X_ij: deep (B, 2C, h, w) and j same-level nodes (B, C, 2h, 2w) -> (B, C, 2h, 2w)."""

    def __init__(self, channels: int, num_skips: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2)
        self.conv = double_conv(channels * (num_skips + 1), channels, norm=None)

    def forward(self, deep, skips):
        return self.conv(torch.cat([self.up(deep), *skips], dim=1))


class UNetNested(nn.Module):
    """forward(x (B, num_frames, H, W) float) -> logits (B, num_classes, H, W) (mean of 4 heads); H, W % 16 == 0."""

    input_layout = "frames"

    def __init__(self, num_frames: int = 8, num_classes: int = 2, width: int = 32):
        super().__init__()
        self.num_frames = num_frames
        c = [width * 2**i for i in range(LEVELS)]
        self.encoders = nn.ModuleList(
            double_conv(num_frames if i == 0 else c[i - 1], c[i]) for i in range(LEVELS))
        self.pool = nn.MaxPool2d(2)
        self.nodes = nn.ModuleDict(
            {f"{i}{j}": NestedNode(c[i], j) for j in range(1, LEVELS) for i in range(LEVELS - j)})
        self.heads = nn.ModuleList(nn.Conv2d(c[0], num_classes, 1) for _ in range(LEVELS - 1))
        self.apply(init_kaiming)

    def forward(self, x_BTHW: torch.Tensor) -> torch.Tensor:
        check_frames_input("UNetNested", x_BTHW, self.num_frames, multiple_of=2 ** (LEVELS - 1))
        x = {(0, 0): self.encoders[0](x_BTHW)}
        for i in range(1, LEVELS):
            x[(i, 0)] = self.encoders[i](self.pool(x[(i - 1, 0)]))
        for j in range(1, LEVELS):
            for i in range(LEVELS - j):
                x[(i, j)] = self.nodes[f"{i}{j}"](x[(i + 1, j - 1)], [x[(i, k)] for k in range(j)])
        return torch.stack([head(x[(0, j)]) for j, head in enumerate(self.heads, start=1)]).mean(0)
