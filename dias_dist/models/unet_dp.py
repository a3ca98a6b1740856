"""UNet_DP: SSCR's default backbone (DIAS-CODE.md §6, METHODS.md §1, §6), frames as channels.

A U-Net with widths 64..1024 (``width`` = the first), double Conv2d(3, no bias)-BN-ReLU blocks
with Dropout(``dropout``, default 0.2) after the first conv's ReLU in every block, max-pool downs,
ConvTranspose2d(2, stride 2, C -> C/2) ups, a 1x1 output conv. PyTorch default initialisation.
31.04 M parameters with 8 frames and 2 classes (31,040,643 with the weak methods' 3 classes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dr_head import check_frames_input

LEVELS = 5


class DropoutDoubleConv(nn.Sequential):
    """(B, in, H, W) -> (B, out, H, W): Conv-BN-ReLU-Dropout-Conv-BN-ReLU, convs without bias."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpConcat(nn.Module):
    """deep (B, 2C, h, w), skip (B, C, 2h, 2w) -> (B, C, 2h, 2w): ConvT(2C -> C), cat, double conv."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.up = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2)
        self.conv = DropoutDoubleConv(2 * channels, channels, dropout)

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
            DropoutDoubleConv(num_frames if i == 0 else c[i - 1], c[i], dropout) for i in range(LEVELS)
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
