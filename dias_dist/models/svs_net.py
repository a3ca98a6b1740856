"""SVS-Net baseline of Table II, a 3D->2D network (docs/REFERENCE.md §4, 8.48 M).

Seven encoder stages, widths 8..512 (``width`` = the first): stage 1 a Conv3d(1x1x1), stages 2-7 a
spatial (1, 2, 2)-strided Conv3d-BN-ReLU (Dropout3d 0.5 before it on stages 6-7); stages 1-6 end
in a Conv3d(3) ("post conv"). Each stage's features are collapsed over time by a Conv3d(T, 1, 1)
skip. Decoders: bilinear x2 upsampling, Conv2d(3)-BN-ReLU, a channel attention block
(sigmoid(1x1(ReLU(1x1(global max pool(cat[skip, up]))))) * skip + up), Conv2d(3); a final 1x1
conv gives the logits. Six halvings: H and W must be multiples of 64. PyTorch default init.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import check_sequence_input

STAGES = 7
SPATIAL = (1, 2, 2)


class EncoderStage(nn.Module):
    """Stage 1: Conv3d(1x1x1). Later stages: [Dropout3d] Conv3d((1,2,2) stride) -BN-ReLU.
    Optionally followed by a Conv3d(3) post conv. (B, in, T, H, W) -> (B, out, T, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, first: bool, dropout: float, post_conv: bool):
        super().__init__()
        if first:
            layers = [nn.Conv3d(in_channels, out_channels, 1)]
        else:
            layers = [nn.Dropout3d(dropout)] if dropout else []
            layers += [
                nn.Conv3d(in_channels, out_channels, SPATIAL, stride=SPATIAL, bias=False),
                nn.BatchNorm3d(out_channels),
                nn.ReLU(inplace=True),
            ]
        if post_conv:
            layers.append(nn.Conv3d(out_channels, out_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ChannelAttention(nn.Module):
    """skip, up (B, C, H, W) -> skip * sigmoid(conv(relu(conv(maxpool(cat[skip, up]))))) + up."""

    def __init__(self, channels: int):
        super().__init__()
        self.squeeze = nn.Conv2d(2 * channels, channels, 1)
        self.excite = nn.Conv2d(channels, channels, 1)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        pooled = torch.amax(torch.cat([skip, up], dim=1), dim=(2, 3), keepdim=True)
        return skip * torch.sigmoid(self.excite(torch.relu(self.squeeze(pooled)))) + up


class DecoderStage(nn.Module):
    """deep (B, in, h, w), skip (B, out, 2h, 2w) -> (B, out, 2h, 2w)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.attention = ChannelAttention(out_channels)
        self.conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up_conv(F.interpolate(deep, scale_factor=2, mode="bilinear", align_corners=False))
        return self.conv(self.attention(skip, up))


class SVSNet(nn.Module):
    """Input x (B, 1, T, H, W) float32, T = ``num_frames``, H and W multiples of 64.
    Output (B, num_classes, H, W) logits."""

    input_layout = "sequence"

    def __init__(self, num_classes: int = 2, num_frames: int = 8, width: int = 8):
        super().__init__()
        if num_frames < 1 or width < 1:
            raise ValueError(f"svs_net: num_frames={num_frames} and width={width} must be positive")
        self.num_frames = num_frames
        c = [width * 2**i for i in range(STAGES)]
        self.encoders = nn.ModuleList(
            EncoderStage(
                1 if i == 0 else c[i - 1],
                c[i],
                first=i == 0,
                dropout=0.5 if i >= 5 else 0.0,
                post_conv=i < STAGES - 1,
            )
            for i in range(STAGES)
        )
        self.skips = nn.ModuleList(nn.Conv3d(ch, ch, (num_frames, 1, 1)) for ch in c)
        self.decoders = nn.ModuleList(DecoderStage(c[i + 1], c[i]) for i in reversed(range(STAGES - 1)))
        self.head = nn.Conv2d(c[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input("svs_net", x, self.num_frames, 2 ** (STAGES - 1))
        collapsed = []
        for encoder, skip in zip(self.encoders, self.skips):
            x = encoder(x)
            collapsed.append(skip(x).squeeze(2))
        y = collapsed.pop()
        for decoder in self.decoders:
            y = decoder(y, collapsed.pop())
        return self.head(y)
