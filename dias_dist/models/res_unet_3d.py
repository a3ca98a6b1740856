"""Res-UNet-3D baseline of Table II (docs/REFERENCE.md §4, 26.38 M with ``feature_scale=1``).

Widths 64, 128, 256, 512 divided by ``feature_scale`` (the reference's code default 2 gives 6.60 M;
Table II used 1, our default). Three learned downsamplings Conv3d(k2, s2)-BN-LReLU in all three
dimensions (T must be a multiple of 8), mirrored ConvTranspose3d(k2, s2)-BN-LReLU ups, residual
conv blocks, DR head at full resolution. Reference initialisation (kaiming a=0.02).

Difference from the reference (a bug there): its residual block computes ``x + res`` and then
returns ``x``, i.e. the residual sum is discarded. Here the block returns LReLU(x + res), the
intended network. The parameter count is identical (the bug drops no layer).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_sequence_input, init_kaiming
from .dr_head import DRHead, check_num_frames, scaled_channels

WIDTHS = (64, 128, 256, 512)


def conv_bn_lrelu(in_channels: int, out_channels: int, kernel, stride=1, padding: int = 0) -> list:
    """[Conv3d (no bias) - BN - LReLU(0.1)]; ``kernel`` and ``stride`` are ints or (T, H, W) tuples."""
    return [
        nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(0.1, inplace=True),
    ]


class ResConv3d(nn.Module):
    """(B, in, T, H, W) -> (B, out, T, H, W): optional 1x1 projection (in != out), then
    LReLU(x + [Conv3d(3)-BN-Drop-LReLU] x 2 (x)). Dropout3d with ``dropout`` (0 = none)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.project = (
            nn.Sequential(*conv_bn_lrelu(in_channels, out_channels, 1)) if in_channels != out_channels else nn.Identity()
        )
        layers = []
        for _ in range(2):
            layers += [
                nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm3d(out_channels),
                nn.Dropout3d(dropout),
                nn.LeakyReLU(0.1, inplace=True),
            ]
        self.conv = nn.Sequential(*layers)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        return self.act(self.conv(x) + x)


def up_bn_lrelu(in_channels: int, out_channels: int, scale) -> nn.Sequential:
    """ConvTranspose3d(kernel = stride = ``scale``, no bias)-BN-LReLU."""
    return nn.Sequential(
        nn.ConvTranspose3d(in_channels, out_channels, scale, stride=scale, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(0.1),
    )


class ResUNet3D(nn.Module):
    """Input x (B, 1, T, H, W) float32, T = ``num_frames`` (a multiple of 8), H and W multiples of 8.
    Output (B, num_classes, H, W) logits."""

    input_layout = "sequence"

    def __init__(self, num_classes: int = 2, num_frames: int = 8, feature_scale: int = 1, dropout: float = 0.0):
        super().__init__()
        check_num_frames("res_unet_3d", num_frames, 8)
        self.num_frames = num_frames
        c = scaled_channels("res_unet_3d", WIDTHS, feature_scale)
        self.enc = nn.ModuleList([ResConv3d(1, c[0], dropout)] + [ResConv3d(c[i], c[i], dropout) for i in (1, 2)])
        self.downs = nn.ModuleList(nn.Sequential(*conv_bn_lrelu(c[i], c[i + 1], 2, stride=2)) for i in range(3))
        self.center = ResConv3d(c[3], c[3], dropout)
        self.ups = nn.ModuleList(up_bn_lrelu(c[i + 1], c[i], 2) for i in reversed(range(3)))
        self.dec = nn.ModuleList(ResConv3d(2 * c[i], c[i], dropout) for i in reversed(range(3)))
        self.head = DRHead(c[0], num_frames, num_classes)
        self.apply(init_kaiming)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input("res_unet_3d", x, self.num_frames, 8)
        skips = []
        for enc, down in zip(self.enc, self.downs):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.center(x)
        for up, dec in zip(self.ups, self.dec):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
