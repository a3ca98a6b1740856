"""UNet++-3D (nested U-Net) baseline of Table II, DR heads (docs/REFERENCE.md §4, 26.17 M).

Widths 32..512 (64..1024 / ``feature_scale``, default 2). Encoder nodes X_i0 are double
Conv3d(3)-BN-ReLU; decoder nodes X_ij (j >= 1) take ConvTranspose3d(X_(i+1)(j-1)) concatenated with
X_i0..X_i(j-1) and apply a double Conv3d(3)-ReLU (no norm, as the reference). The first max-pool
and the level-0 up-convolutions are (1, 2, 2), the others (2, 2, 2). Deep supervision: the output
is the average of four DR heads on X_01..X_04. Reference initialisation (kaiming a=0.02).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_sequence_input, double_conv, init_kaiming
from .dr_head import DRHead, check_num_frames, scaled_channels

WIDTHS = (64, 128, 256, 512, 1024)


class NestedUp3d(nn.Module):
    """Decoder node: up-convolve the deeper node, concatenate ``num_skips`` same-level nodes."""

    def __init__(self, deep_channels: int, out_channels: int, num_skips: int, scale):
        super().__init__()
        self.up = nn.ConvTranspose3d(deep_channels, out_channels, scale, stride=scale)
        self.conv = double_conv(out_channels * (num_skips + 1), out_channels, norm=None, dims=3)

    def forward(self, deep: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(torch.cat([self.up(deep), *skips], dim=1))


class UNetNested3D(nn.Module):
    """Input x (B, 1, T, H, W) float32, T = ``num_frames`` (a multiple of 8), H and W multiples of 16.
    Output (B, num_classes, H, W) logits (mean of the four DR heads)."""

    input_layout = "sequence"

    def __init__(self, num_classes: int = 2, num_frames: int = 8, feature_scale: int = 2):
        super().__init__()
        check_num_frames("unet_nested_3d", num_frames, 8)
        self.num_frames = num_frames
        c = scaled_channels("unet_nested_3d", WIDTHS, feature_scale)
        self.encoders = nn.ModuleList(double_conv(1 if i == 0 else c[i - 1], c[i], dims=3) for i in range(5))
        self.pools = nn.ModuleList([nn.MaxPool3d((1, 2, 2))] + [nn.MaxPool3d(2) for _ in range(3)])
        # decoders[(i, j)] builds X_ij from X_(i+1)(j-1) and X_i0..X_i(j-1)
        self.decoders = nn.ModuleDict()
        for j in range(1, 5):
            for i in range(5 - j):
                scale = (1, 2, 2) if i == 0 else (2, 2, 2)
                self.decoders[f"{i}{j}"] = NestedUp3d(c[i + 1], c[i], j, scale)
        self.heads = nn.ModuleList(DRHead(c[0], num_frames, num_classes) for _ in range(4))
        self.apply(init_kaiming)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input("unet_nested_3d", x, self.num_frames, 16)
        nodes: dict[tuple[int, int], torch.Tensor] = {(0, 0): self.encoders[0](x)}
        for i in range(1, 5):
            nodes[(i, 0)] = self.encoders[i](self.pools[i - 1](nodes[(i - 1, 0)]))
        for j in range(1, 5):
            for i in range(5 - j):
                skips = [nodes[(i, k)] for k in range(j)]
                nodes[(i, j)] = self.decoders[f"{i}{j}"](nodes[(i + 1, j - 1)], skips)
        return sum(head(nodes[(0, j)]) for j, head in zip(range(1, 5), self.heads)) / 4
