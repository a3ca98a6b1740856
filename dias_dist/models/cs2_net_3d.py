"""CS2-Net-3D baseline of Table II, DR head (docs/REFERENCE.md §4, 23.83 M).

Widths 32, 64, 128, 256, 512 (``width`` = the first). Residual encoders (two Conv3d(3)-BN-ReLU plus
a 1x1x1 projection), first max-pool (1, 2, 2) then (2, 2, 2); at the bottleneck the affinity
attention (spatial + channel self-attention) is added to the features; decoder: ConvTranspose3d
up (level 1: (1, 2, 2), deeper: (2, 2, 2)), concatenation, two Conv3d(3)-BN-ReLU. DR head.
PyTorch default initialisation (as the reference).

``attention_fuse`` (Conv3d(2C -> C, 1) at the bottleneck) is defined but never used by the
reference; it is kept, frozen (see ``blocks.freeze_unused``), only so the parameter count equals
Table II. It takes no part in the forward pass or in training.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_sequence_input, double_conv, freeze_unused
from .dr_head import DRHead, check_num_frames


class ResEncoder3d(nn.Module):
    """(B, in, T, H, W) -> (B, out, T, H, W): ReLU(conv-BN-ReLU-conv-BN-ReLU(x) + Conv1x1(x))."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = double_conv(in_channels, out_channels, dims=3)
        self.project = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x) + self.project(x))


class SpatialAttention3d(nn.Module):
    """x (B, C, D1, D2, D3) -> same shape: x + gamma * value(x) @ softmax(A), with the N x N
    affinity A = (q k)(j k), N = D1*D2*D3; q, k, j are 1-D convs along D2, D1, D3 (C -> C/8)."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv3d(channels, channels // 8, (1, 3, 1), padding=(0, 1, 0))
        self.key = nn.Conv3d(channels, channels // 8, (3, 1, 1), padding=(1, 0, 0))
        self.judge = nn.Conv3d(channels, channels // 8, (1, 1, 3), padding=(0, 0, 1))
        self.value = nn.Conv3d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        query = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        key = self.key(x).flatten(2)  # (B, C/8, N)
        judge = self.judge(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        affinity = torch.softmax(torch.bmm(torch.bmm(query, key), torch.bmm(judge, key)), dim=-1)
        weights = torch.bmm(self.value(x).flatten(2), affinity)  # (B, C, N)
        return self.gamma * weights.view_as(x) + x


class ChannelAttention3d(nn.Module):
    """x (B, C, D1, D2, D3) -> same shape: x + gamma * softmax(max(A) - A) @ x, A = (x x^T)^2 (C x C)."""

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (B, C, N)
        gram = torch.bmm(flat, flat.transpose(1, 2))  # (B, C, C)
        affinity = torch.bmm(gram, gram)
        affinity = torch.softmax(affinity.amax(dim=-1, keepdim=True) - affinity, dim=-1)
        return self.gamma * torch.bmm(affinity, flat).view_as(x) + x


class CS2Net3D(nn.Module):
    """Input x (B, 1, T, H, W) float32, T = ``num_frames`` (a multiple of 8), H and W multiples of 16.
    Output (B, num_classes, H, W) logits."""

    input_layout = "sequence"

    def __init__(self, num_classes: int = 2, num_frames: int = 8, width: int = 32):
        super().__init__()
        check_num_frames("cs2_net_3d", num_frames, 8)
        if width < 1:
            raise ValueError(f"cs2_net_3d: width={width} must be positive")
        self.num_frames = num_frames
        c = [width * 2**i for i in range(5)]
        self.encoders = nn.ModuleList(ResEncoder3d(1 if i == 0 else c[i - 1], c[i]) for i in range(5))
        self.pools = nn.ModuleList([nn.MaxPool3d((1, 2, 2))] + [nn.MaxPool3d(2) for _ in range(3)])
        self.spatial_attention = SpatialAttention3d(c[4])
        self.channel_attention = ChannelAttention3d()
        self.attention_fuse = freeze_unused(nn.Conv3d(2 * c[4], c[4], 1))  # unused, see module docstring
        scales = [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
        self.ups = nn.ModuleList(nn.ConvTranspose3d(c[i + 1], c[i], scales[i], stride=scales[i]) for i in reversed(range(4)))
        self.decoders = nn.ModuleList(double_conv(c[i + 1], c[i], dims=3) for i in reversed(range(4)))
        self.head = DRHead(c[0], num_frames, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input("cs2_net_3d", x, self.num_frames, 16)
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < 4:
                skips.append(x)
                x = self.pools[i](x)
        attention = self.spatial_attention(x) + self.channel_attention(x) + x
        y = x + attention
        for up, dec in zip(self.ups, self.decoders):
            y = dec(torch.cat([skips.pop(), up(y)], dim=1))
        return self.head(y)
