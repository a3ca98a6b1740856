"""UNet_DP: SSCR's default backbone (docs/REFERENCE.md §6.6), frames as channels.

A U-Net with widths 64..1024 (``width`` = the first), double Conv2d(3, no bias)-BN-ReLU blocks
with Dropout(``dropout``, default 0.2) after the first conv's ReLU in every block, max-pool downs,
ConvTranspose2d(2, stride 2, C -> C/2) ups, a 1x1 output conv. PyTorch default initialisation.
31.04 M parameters with 8 frames and 2 classes (31,040,643 with the weak methods' 3 classes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import check_frames_input, double_conv

LEVELS = 5


class UpConcat(nn.Module):
    """deep (B, 2C, h, w), skip (B, C, 2h, 2w) -> (B, C, 2h, 2w): ConvT(2C -> C), cat, double conv."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.up = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2)
        self.conv = double_conv(2 * channels, channels, bias=False, dropout=dropout)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(deep)], dim=1))


class UNetDP(nn.Module):
    """Input x (B, T, H, W) float32 (frames as channels), T = ``num_frames``, H and W multiples of 16.
    Output (B, num_classes, H, W) logits."""

    input_layout = "frames"

    def __init__(self, num_classes: int = 2, num_frames: int = 8, width: int = 64, dropout: float = 0.2):
        super().__init__()
        if num_frames < 1 or width < 1:
            raise ValueError(f"unet_dp: num_frames={num_frames} and width={width} must be positive")
        self.num_frames = num_frames
        c = [width * 2**i for i in range(LEVELS)]
        self.encoders = nn.ModuleList(
            double_conv(num_frames if i == 0 else c[i - 1], c[i], bias=False, dropout=dropout) for i in range(LEVELS)
        )
        self.decoders = nn.ModuleList(UpConcat(c[i], dropout) for i in reversed(range(LEVELS - 1)))
        self.head = nn.Conv2d(c[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_frames_input("unet_dp", x, self.num_frames, 2 ** (LEVELS - 1))
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        y = skips.pop()
        for decoder in self.decoders:
            y = decoder(y, skips.pop())
        return self.head(y)
