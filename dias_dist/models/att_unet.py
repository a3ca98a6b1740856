"""Attention U-Net 2D baseline of Table II (frames as input channels), 8.73 M.

docs/REFERENCE.md §4: widths 32..512 (``width`` = the first; reference scale_factor 2), double
Conv3x3(bias)-BN-ReLU blocks, 2x2 max-pool downs, ups by nearest 2x upsampling + Conv3x3-BN-ReLU,
and an additive attention gate on every skip: psi = sigmoid(BN(conv1x1(ReLU(BN(W_g g) + BN(W_x x)))))
with F_int = C/2, skip x multiplied by psi before concatenation. 1x1 head. PyTorch default init.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_frames_input, double_conv

LEVELS = 5


def up_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(B, in, h, w) -> (B, out, 2h, 2w): nearest upsampling, Conv3x3 (bias) - BN - ReLU."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2), nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
    )


class AttentionGate(nn.Module):
    """gate g (B, C, H, W), skip x (B, C, H, W) -> x * psi, psi (B, 1, H, W) in (0, 1)."""

    def __init__(self, channels: int, inter_channels: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Conv2d(channels, inter_channels, 1), nn.BatchNorm2d(inter_channels))
        self.skip = nn.Sequential(nn.Conv2d(channels, inter_channels, 1), nn.BatchNorm2d(inter_channels))
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g, x):
        return x * self.psi(self.relu(self.gate(g) + self.skip(x)))


class AttUNet(nn.Module):
    """forward(x (B, num_frames, H, W) float) -> logits (B, num_classes, H, W); H, W % 16 == 0."""

    input_layout = "frames"

    def __init__(self, num_frames: int = 8, num_classes: int = 2, width: int = 32):
        super().__init__()
        self.num_frames = num_frames
        c = [width * 2**i for i in range(LEVELS)]
        self.encoders = nn.ModuleList(double_conv(num_frames if i == 0 else c[i - 1], c[i]) for i in range(LEVELS))
        self.pool = nn.MaxPool2d(2)
        levels = list(reversed(range(LEVELS - 1)))
        self.ups = nn.ModuleList(up_conv(c[i + 1], c[i]) for i in levels)
        self.gates = nn.ModuleList(AttentionGate(c[i], c[i] // 2) for i in levels)
        self.decoders = nn.ModuleList(double_conv(2 * c[i], c[i]) for i in levels)
        self.head = nn.Conv2d(c[0], num_classes, 1)

    def forward(self, x_BTHW: torch.Tensor) -> torch.Tensor:
        check_frames_input("AttUNet", x_BTHW, self.num_frames, multiple_of=2 ** (LEVELS - 1))
        skips = []
        x = x_BTHW
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, gate, decoder in zip(self.ups, self.gates, self.decoders):
            g = up(x)
            skip = skips.pop()
            x = decoder(torch.cat([gate(g, skip), g], dim=1))
        return self.head(x)
