"""MAA-Net 2D baseline of Table II (frames as input channels), 5.80 M.

docs/REFERENCE.md §4: widths 32, 64, 128, 256 (``width`` = the first; reference feature_scale 2),
dropout 0.1, decoders with channel-position attention (CPAM) and a multi-scale aggregation head
(MAS). Structure (from the lab's public MAA-Net code; re-implemented):
- stem: Conv1x1 (no bias) - BN - LReLU, T -> w; three encoder levels: residual conv block
  ([Conv3x3-BN-Drop-LReLU] x 2) then Conv2x2 s2 - BN - LReLU down (C -> 2C);
- middle (8w, H/8) and decoders (4w, 2w, w): [1x1 fuse of cat(up, skip) - BN - LReLU] - residual
  conv block - CPAM - ConvT2x2 s2 up (C -> C/2);
- CPAM(C): f = ReLU(BN(conv3x3 x)); f + g1 * channel_attention(f) + g2 * position_attention(f), then
  BN - conv3x3 - BN - ReLU. Position attention: softmax(q^T k) over H*W with 1x1 q, k (C/8) and v.
  Channel attention: affinity of 2x2-stride-2-conv q and k (C x C), softmax(max - A), applied to a
  1x1 v. g1, g2 start at 0;
- MAS head: x = conv3x3(middle); x = g3 * up(x) + dec3; conv3x3; g2 * up + dec2; conv3x3;
  g1 * up + dec1; conv3x3 - BN - LReLU - Drop - 1x1 conv to the classes (g's start at 0).
Kaiming init (a=0.02).

Differences from the reference code: its conv block computes ``x + res`` and returns ``x`` (the
residual sum is discarded); here the block returns LReLU(conv(x) + x), the intended network, as
for Res-UNet. Layers the reference builds but never uses (the channel attention's
gamma, one up block in MAS) are kept frozen (``blocks.freeze_unused``) for the parameter count.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_frames_input, down_block, freeze_unused, init_kaiming, up_block

LEVELS = 4


def conv_bn_act(in_channels: int, out_channels: int, kernel: int, act: nn.Module, stride: int = 1,
                padding: int = 0, dropout: float | None = None) -> nn.Sequential:
    """Conv (no bias) - BN - [Dropout2d] - act."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
              nn.BatchNorm2d(out_channels)]
    if dropout is not None:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers, act)


class ResidualBlock(nn.Module):
    """(B, C, H, W) -> same: LReLU(x + [Conv3x3-BN-Drop-LReLU] x 2 (x))."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_act(channels, channels, 3, nn.LeakyReLU(0.1, inplace=True), padding=1, dropout=dropout),
            conv_bn_act(channels, channels, 3, nn.LeakyReLU(0.1, inplace=True), padding=1, dropout=dropout),
        )
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + x)


class PositionAttention(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): v re-mixed over positions by softmax(q^T k), q, k: C/8 (1x1 convs)."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        affinity = torch.softmax(self.query(x).flatten(2).transpose(1, 2) @ self.key(x).flatten(2), dim=-1)
        return (self.value(x).flatten(2) @ affinity.transpose(1, 2)).view(B, C, H, W)


class ChannelAttention(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): v's channels re-mixed by softmax(max(A) - A), A = q k^T (C x C)
    from 2x2 stride-2 convs q and k."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, channels, 2, stride=2)
        self.key = nn.Conv2d(channels, channels, 2, stride=2)
        self.value = nn.Conv2d(channels, channels, 1)
        self.unused_gamma = freeze_unused(nn.Parameter(torch.zeros(1)))

    def forward(self, x):
        B, C, H, W = x.shape
        affinity = self.query(x).flatten(2) @ self.key(x).flatten(2).transpose(1, 2)
        affinity = torch.softmax(affinity.amax(-1, keepdim=True) - affinity, dim=-1)
        return (affinity @ self.value(x).flatten(2)).view(B, C, H, W)


class CPAM(nn.Module):
    """Channel-position attention, (B, C, H, W) -> same (see the module docstring)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma_channel = nn.Parameter(torch.zeros(1))
        self.gamma_position = nn.Parameter(torch.zeros(1))
        self.position = PositionAttention(channels)
        self.channel = ChannelAttention(channels)
        self.project = conv_bn_act(channels, channels, 3, nn.ReLU(), padding=1)
        self.out = nn.Sequential(nn.BatchNorm2d(channels), conv_bn_act(channels, channels, 3, nn.ReLU(), padding=1))

    def forward(self, x):
        f = self.project(x)
        return self.out(f + self.gamma_channel * self.channel(f) + self.gamma_position * self.position(f))


class DecoderLevel(nn.Module):
    """x (B, k*C, H, W) -> (output (B, C, H, W), up (B, C/2, 2H, 2W) or None): [1x1 fuse] - residual
    block - CPAM - [up]. ``num_inputs`` = k feature maps concatenated on input (1 = no fuse)."""

    def __init__(self, channels: int, num_inputs: int, dropout: float, up: bool = True):
        super().__init__()
        self.fuse = None
        if num_inputs > 1:
            self.fuse = nn.Sequential(nn.Conv2d(num_inputs * channels, channels, 1), nn.BatchNorm2d(channels),
                                      nn.LeakyReLU(0.1, inplace=True))
        self.conv = ResidualBlock(channels, dropout)
        self.cpam = CPAM(channels)
        self.up = up_block(channels, 0.0) if up else None

    def forward(self, x):
        if self.fuse is not None:
            x = self.fuse(x)
        out = self.cpam(self.conv(x))
        return out, (self.up(out) if self.up is not None else None)


class MASHead(nn.Module):
    """Multi-scale aggregation: features (8w @ H/8, 4w @ H/4, 2w @ H/2, w @ H) -> logits (B, classes, H, W)."""

    def __init__(self, width: int, num_classes: int, dropout: float):
        super().__init__()
        c = [width * 2**i for i in range(LEVELS)]
        lrelu = nn.LeakyReLU(0.1, inplace=True)
        self.gammas = nn.Parameter(torch.zeros(3))  # reference: gamma3, gamma2, gamma1 (one scalar each)
        self.convs = nn.ModuleList(conv_bn_act(c[i], c[i], 3, lrelu, padding=1, dropout=dropout) for i in (3, 2, 1))
        self.ups = nn.ModuleList(up_block(c[i], 0.0) for i in (3, 2, 1))
        self.unused_up = freeze_unused(up_block(c[2], 0.0))
        self.classify = nn.Sequential(
            conv_bn_act(c[0], c[0], 3, nn.LeakyReLU(0.1, inplace=True), padding=1),
            nn.Dropout2d(dropout),
            nn.Conv2d(c[0], num_classes, 1),
        )

    def forward(self, deepest, *shallower):
        x = deepest
        for conv, up, gamma, skip in zip(self.convs, self.ups, self.gammas, shallower):
            x = up(conv(x)) * gamma + skip
        return self.classify(x)


class MAANet(nn.Module):
    """forward(x (B, num_frames, H, W) float) -> logits (B, num_classes, H, W); H, W % 8 == 0."""

    input_layout = "frames"

    def __init__(self, num_frames: int = 8, num_classes: int = 2, width: int = 32, dropout: float = 0.1):
        super().__init__()
        if width < 8:
            raise ValueError(f"MAANet: width={width} must be >= 8 (position attention projects to width/8 channels)")
        self.num_frames = num_frames
        c = [width * 2**i for i in range(LEVELS)]
        self.stem = conv_bn_act(num_frames, c[0], 1, nn.LeakyReLU(0.1, inplace=True))
        self.encoders = nn.ModuleList(ResidualBlock(c[i], dropout) for i in range(3))
        self.downs = nn.ModuleList(down_block(c[i], 0.0) for i in range(3))
        self.middle = DecoderLevel(c[3], 1, dropout)
        self.decoders = nn.ModuleList(DecoderLevel(c[i], 2, dropout, up=i > 0) for i in (2, 1, 0))
        self.head = MASHead(width, num_classes, dropout)
        self.apply(init_kaiming)

    def forward(self, x_BTHW: torch.Tensor) -> torch.Tensor:
        check_frames_input("MAANet", x_BTHW, self.num_frames, multiple_of=2 ** (LEVELS - 1))
        x = self.stem(x_BTHW)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        middle, up = self.middle(x)
        outputs = [middle]
        for decoder in self.decoders:
            out, up = decoder(torch.cat([up, skips.pop()], dim=1))
            outputs.append(out)
        return self.head(*outputs)
