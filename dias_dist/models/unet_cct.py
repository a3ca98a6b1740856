"""UNet_CCT: the dual-decoder U-Net of DMPLS (docs/REFERENCE.md §6.5), frames as channels.

Shared encoder with widths 16, 32, 64, 128, 256 (``width`` = the first) and per-level dropout
0.05, 0.1, 0.2, 0.3, 0.5: each level is Conv2d(3)-BN-LeakyReLU-Dropout-Conv2d(3)-BN-LeakyReLU
(max-pool before levels 2-5). Two decoders of the same design (Conv2d 1x1 to the skip's width,
bilinear x2 upsampling with align_corners=True, concatenation with the skip, the same double conv
without dropout, a 3x3 output conv): the main
decoder sees the clean encoder features, the auxiliary decoder sees ``dropout2d(p=0.5)`` of every
encoder feature. 2,447,492 parameters (2.45 M) with 8 frames and 2 classes.

Up-sampling note: the reference's params dict says ``bilinear: False`` (transposed convs), but its
decoder never passes that flag to ``UpBlock``, whose default is ``bilinear=True``; the network that
actually ran (and the 2.45 M count) uses 1x1 conv + bilinear upsampling, as here. Transposed convs
would give 2,708,612 parameters.

Forward contract (what ``methods/dmpls.py`` relies on):
- training mode (``model.train()``): returns the tuple ``(main_logits, aux_logits)``, both
  (B, num_classes, H, W);
- eval mode: returns ``main_logits`` (B, num_classes, H, W) only (the test uses the main decoder),
  so the evaluation code treats it like every other model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import check_frames_input

ENCODER_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)
AUX_FEATURE_DROPOUT = 0.5


class ConvBlock(nn.Sequential):
    """(B, in, H, W) -> (B, out, H, W): Conv-BN-LeakyReLU-Dropout-Conv-BN-LeakyReLU (convs with bias)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
        )


class Decoder(nn.Module):
    """Encoder features [x0 .. x4] (widths c0..c4, each level half the size) -> (B, classes, H, W)."""

    def __init__(self, channels: list[int], num_classes: int):
        super().__init__()
        levels = range(len(channels) - 1)
        self.reduce = nn.ModuleList(nn.Conv2d(channels[i + 1], channels[i], 1) for i in reversed(levels))
        self.convs = nn.ModuleList(ConvBlock(2 * channels[i], channels[i], 0.0) for i in reversed(levels))
        self.out_conv = nn.Conv2d(channels[0], num_classes, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        y = features[-1]
        for reduce, conv, skip in zip(self.reduce, self.convs, reversed(features[:-1])):
            up = F.interpolate(reduce(y), scale_factor=2, mode="bilinear", align_corners=True)
            y = conv(torch.cat([skip, up], dim=1))
        return self.out_conv(y)


class UNetCCT(nn.Module):
    """Input x (B, T, H, W) float32 (frames as channels), T = ``num_frames``, H and W multiples of 16.
    Output: (main, aux) logits in training mode, main logits in eval mode (see module docstring)."""

    input_layout = "frames"

    def __init__(self, num_classes: int = 2, num_frames: int = 8, width: int = 16):
        super().__init__()
        if num_frames < 1 or width < 1:
            raise ValueError(f"unet_cct: num_frames={num_frames} and width={width} must be positive")
        self.num_frames = num_frames
        c = [width * 2**i for i in range(len(ENCODER_DROPOUT))]
        self.encoders = nn.ModuleList(
            ConvBlock(num_frames if i == 0 else c[i - 1], c[i], p) for i, p in enumerate(ENCODER_DROPOUT)
        )
        self.main_decoder = Decoder(c, num_classes)
        self.aux_decoder = Decoder(c, num_classes)

    def forward(self, x: torch.Tensor):
        check_frames_input("unet_cct", x, self.num_frames, 2 ** (len(ENCODER_DROPOUT) - 1))
        features = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(F.max_pool2d(x, 2) if i else x)
            features.append(x)
        main = self.main_decoder(features)
        if not self.training:
            return main
        aux = self.aux_decoder([F.dropout2d(f, AUX_FEATURE_DROPOUT, training=True) for f in features])
        return main, aux
