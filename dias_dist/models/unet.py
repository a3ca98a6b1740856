"""U-Net 2D baseline of Table II ("DR + 2D": the T frames are the input channels), 31.04 M.

docs/REFERENCE.md §4: widths 64..1024 (``width`` = the first), double Conv3x3(no bias)-BN-ReLU blocks,
2x2 max-pool downs, ConvTranspose2d(2x2, stride 2, C -> C/2, bias) ups (not bilinear), skip
concatenation, 1x1 output conv. PyTorch default initialisation (as the reference).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_frames_input, double_conv

LEVELS = 5


class UNet(nn.Module):
    """forward(x (B, num_frames, H, W) float) -> logits (B, num_classes, H, W); H, W % 16 == 0."""

    input_layout = "frames"

    def __init__(self, num_frames: int = 8, num_classes: int = 2, width: int = 64):
        super().__init__()
        self.num_frames = num_frames
        c = [width * 2**i for i in range(LEVELS)]
        self.encoders = nn.ModuleList(double_conv(num_frames if i == 0 else c[i - 1], c[i], bias=False) for i in range(LEVELS))
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2) for i in reversed(range(LEVELS - 1)))
        self.decoders = nn.ModuleList(double_conv(2 * c[i], c[i], bias=False) for i in reversed(range(LEVELS - 1)))
        self.head = nn.Conv2d(c[0], num_classes, 1)

    def forward(self, x_BTHW: torch.Tensor) -> torch.Tensor:
        check_frames_input("UNet", x_BTHW, self.num_frames, multiple_of=2 ** (LEVELS - 1))
        skips = []
        x = x_BTHW
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
