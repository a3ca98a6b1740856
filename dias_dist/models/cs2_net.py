"""CS2-Net (CSNet) 2D baseline of Table II (frames as input channels), 8.93 M.

docs/REFERENCE.md §4: widths 32..512 (``width`` = the first). Residual encoders
(ReLU(BN(conv3x3)) x 2 + conv1x1 shortcut, ReLU), 2x2 max-pool downs, an affinity attention at the
bottleneck (spatial self-attention with 1x3 / 3x1 query/key projections to C/8 + channel attention,
each scaled by a learned gamma that starts at 0), output bottleneck + attention, ConvTranspose2d
(2x2, s2) ups, double Conv3x3-BN-ReLU decoders, 1x1 head. PyTorch default init (as the reference).
The reference also defines a 1x1 ``attention_fuse`` conv (2C -> C at the bottleneck) that its
forward does not use; it is kept frozen (``blocks.freeze_unused``) so the count matches 8,927,236.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_frames_input, double_conv, freeze_unused

LEVELS = 5


class ResEncoder(nn.Module):
    """(B, in, H, W) -> (B, out, H, W): ReLU(ReLU(BN(conv3x3(ReLU(BN(conv3x3 x))))) + conv1x1 x)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = double_conv(in_channels, out_channels)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class SpatialAttention(nn.Module):
    """(B, C, H, W) -> same: x + gamma * (value attended by softmax(query^T key) over the H*W positions)."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Sequential(nn.Conv2d(channels, channels // 8, (1, 3), padding=(0, 1)),
                                   nn.BatchNorm2d(channels // 8), nn.ReLU(inplace=True))
        self.key = nn.Sequential(nn.Conv2d(channels, channels // 8, (3, 1), padding=(1, 0)),
                                 nn.BatchNorm2d(channels // 8), nn.ReLU(inplace=True))
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, C, H, W = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)  # (B, HW, C/8)
        key = self.key(x).flatten(2)  # (B, C/8, HW)
        affinity = torch.softmax(query @ key, dim=-1)  # (B, HW, HW)
        attended = self.value(x).flatten(2) @ affinity.transpose(1, 2)  # (B, C, HW)
        return x + self.gamma * attended.view(B, C, H, W)


class ChannelAttention(nn.Module):
    """(B, C, H, W) -> same: x + gamma * (channels re-mixed by softmax(max(A) - A), A = X X^T)."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, C, H, W = x.shape
        flat = x.flatten(2)  # (B, C, HW)
        affinity = flat @ flat.transpose(1, 2)  # (B, C, C)
        affinity = torch.softmax(affinity.amax(-1, keepdim=True) - affinity, dim=-1)
        return x + self.gamma * (affinity @ flat).view(B, C, H, W)


class CS2Net(nn.Module):
    """forward(x (B, num_frames, H, W) float) -> logits (B, num_classes, H, W); H, W % 16 == 0."""

    input_layout = "frames"

    def __init__(self, num_frames: int = 8, num_classes: int = 2, width: int = 32):
        super().__init__()
        self.num_frames = num_frames
        c = [width * 2**i for i in range(LEVELS)]
        self.encoders = nn.ModuleList(ResEncoder(num_frames if i == 0 else c[i - 1], c[i]) for i in range(LEVELS))
        self.pool = nn.MaxPool2d(2)
        self.spatial_attention = SpatialAttention(c[-1])
        self.channel_attention = ChannelAttention()
        self.unused_attention_fuse = freeze_unused(nn.Conv2d(2 * c[-1], c[-1], 1))
        levels = list(reversed(range(LEVELS - 1)))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2) for i in levels)
        self.decoders = nn.ModuleList(double_conv(2 * c[i], c[i]) for i in levels)
        self.head = nn.Conv2d(c[0], num_classes, 1)

    def forward(self, x_BTHW: torch.Tensor) -> torch.Tensor:
        check_frames_input("CS2Net", x_BTHW, self.num_frames, multiple_of=2 ** (LEVELS - 1))
        skips = []
        x = x_BTHW
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        x = x + self.spatial_attention(x) + self.channel_attention(x)
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)
