"""Res-UNet 2D baseline of Table II (frames as input channels), 9.37 M.

docs/REFERENCE.md §4: widths 64, 128, 256, 512 (``width`` = the first; reference feature_scale 1),
residual conv blocks, three learned downsamplings Conv2x2 stride 2 - BN - LReLU, mirrored
ConvTranspose2x2 stride 2 - BN - LReLU ups, skip concatenation, 1x1 head. Kaiming init (a=0.02).

Differences from the reference code (bugs there; this is the intended network):
- its residual block computes ``x + res`` and returns ``x``, discarding the residual sum; here the
  block returns LReLU(conv(x) + x);
- it applies the head to ``up1`` (the last up-convolution, before the last decoder block), so that
  decoder block is computed but unused; here the head takes the last decoder block's output.
Neither change adds or removes a layer: the parameter count is the reference's 9,373,442.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_frames_input, down_block, init_kaiming, up_block

LEVELS = 4


def conv_bn_lrelu(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0) -> list:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.1, inplace=True)]


class ResBlock(nn.Module):
    """(B, in, H, W) -> (B, out, H, W): optional 1x1 projection (in != out), then
    LReLU(x + [Conv3x3 (no bias)-BN-Dropout-LReLU] x 2 (x))."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.project = (nn.Sequential(*conv_bn_lrelu(in_channels, out_channels, 1))
                        if in_channels != out_channels else nn.Identity())
        layers = []
        for _ in range(2):
            layers += [nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                       nn.Dropout2d(dropout), nn.LeakyReLU(0.1, inplace=True)]
        self.conv = nn.Sequential(*layers)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):
        x = self.project(x)
        return self.act(self.conv(x) + x)


class ResUNet(nn.Module):
    """forward(x (B, num_frames, H, W) float) -> logits (B, num_classes, H, W); H, W % 8 == 0."""

    input_layout = "frames"

    def __init__(self, num_frames: int = 8, num_classes: int = 2, width: int = 64, dropout: float = 0.0):
        super().__init__()
        self.num_frames = num_frames
        c = [width * 2**i for i in range(LEVELS)]
        self.encoders = nn.ModuleList([ResBlock(num_frames, c[0], dropout)] +
                                      [ResBlock(c[i], c[i], dropout) for i in (1, 2)])
        self.downs = nn.ModuleList(down_block(c[i], 0.0) for i in range(3))
        self.center = ResBlock(c[3], c[3], dropout)
        self.ups = nn.ModuleList(up_block(c[i + 1], 0.0) for i in reversed(range(3)))
        self.decoders = nn.ModuleList(ResBlock(2 * c[i], c[i], dropout) for i in reversed(range(3)))
        self.head = nn.Conv2d(c[0], num_classes, 1)
        self.apply(init_kaiming)

    def forward(self, x_BTHW: torch.Tensor) -> torch.Tensor:
        check_frames_input("ResUNet", x_BTHW, self.num_frames, multiple_of=8)
        skips = []
        x = x_BTHW
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.center(x)
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
