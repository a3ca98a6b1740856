"""ST-UNet baseline of Table II, a 3D->2D network (docs/REFERENCE.md §4, 104.37 M).

Five encoder stages, widths 64..1024 (``width`` = the first). A stage applies a double
Conv2d(3, no bias)-InstanceNorm-ReLU to every frame (weights shared over frames, one batched call),
then a forward-only ConvGRU over the frames whose initial hidden state is the first frame's
features; its last hidden state is the stage's 2D skip. The next stage sees the per-frame features
max-pooled (1, 2, 2). Decoder: bilinear x2 up (align_corners=True, as ``UpsamplingBilinear2d``),
Conv2d 1x1 (2C -> C), concatenation with the skip, double conv; a 1x1 conv gives the logits.
PyTorch default initialisation (as the reference).

The ConvGRU is ``convgru.ConvGRU`` (batched input-to-hidden convs; the pointwise step math can be
the fused Triton kernels, chosen by ``gru_impl``); its parameter count equals the reference cell's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import check_sequence_input, double_conv
from .convgru import ConvGRU


STAGES = 5


class RecurrentStage(nn.Module):
    """x (B, T, in, H, W) -> (features (B, T, out, H, W), skip (B, out, H, W) = last GRU state)."""

    def __init__(self, in_channels: int, out_channels: int, gru_impl: str):
        super().__init__()
        self.conv = double_conv(in_channels, out_channels, bias=False, norm="instance")
        self.gru = ConvGRU(out_channels, impl=gru_impl)

    def forward(self, x_BTCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C, H, W = x_BTCHW.shape
        features = self.conv(x_BTCHW.reshape(B * T, C, H, W)).view(B, T, -1, H, W)
        hidden = self.gru(features, features[:, 0])
        return features, hidden[:, -1]


class UpStage(nn.Module):
    """deep (B, 2C, h, w), skip (B, C, 2h, 2w) -> (B, C, 2h, 2w)."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(2 * channels, channels, 1)
        self.conv = double_conv(2 * channels, channels, bias=False, norm="instance")

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.reduce(F.interpolate(deep, scale_factor=2, mode="bilinear", align_corners=True))
        return self.conv(torch.cat([skip, up], dim=1))


class STUNet(nn.Module):
    """Input x (B, 1, T, H, W) float32, T = ``num_frames``, H and W multiples of 16 and at least 32
    (InstanceNorm needs more than one pixel at the 1/16 bottleneck).
    Output (B, num_classes, H, W) logits."""

    input_layout = "sequence"

    def __init__(self, num_classes: int = 2, num_frames: int = 8, width: int = 64, gru_impl: str = "auto"):
        super().__init__()
        if num_frames < 1 or width < 1:
            raise ValueError(f"st_unet: num_frames={num_frames} and width={width} must be positive")
        self.num_frames = num_frames
        c = [width * 2**i for i in range(STAGES)]
        self.encoders = nn.ModuleList(RecurrentStage(1 if i == 0 else c[i - 1], c[i], gru_impl) for i in range(STAGES))
        self.decoders = nn.ModuleList(UpStage(c[i]) for i in reversed(range(STAGES - 1)))
        self.head = nn.Conv2d(c[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input("st_unet", x, self.num_frames, 2 ** (STAGES - 1), min_side=2**STAGES)
        features = x.transpose(1, 2)  # (B, T, 1, H, W)
        skips = []
        for i, encoder in enumerate(self.encoders):
            if i:
                B, T, C, H, W = features.shape
                features = F.max_pool2d(features.reshape(B * T, C, H, W), 2).view(B, T, C, H // 2, W // 2)
            features, skip = encoder(features)
            skips.append(skip)
        y = skips.pop()
        for decoder in self.decoders:
            y = decoder(y, skips.pop())
        return self.head(y)
