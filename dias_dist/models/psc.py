"""PSC baseline of Table II, a 3D->2D network (docs/REFERENCE.md §4, 6.43 M).

Widths 32, 64, 128, 256 (64..512 / ``feature_scale``, default 2). Residual Conv3d blocks, learned
downsamplings Conv3d(k2, s2) in all dimensions; every skip is average-pooled over all of its frames
(8, 4, 2 frames at levels 1-3), the bottleneck has T/8 = 1 frame, and the decoder upsamples only
in space (ConvTranspose3d (1, 2, 2)); a Conv3d(32 -> classes, 1) head and a squeeze of the time
axis give 2D logits. Needs exactly 8 frames. Reference initialisation (kaiming a=0.02).

Differences from the reference (bugs there): (1) its head is applied to ``up1``, the upsampled
features before the last decoder block, so that block (``deconv1``) is computed but never used;
here the head is applied to the last decoder block's output, the intended network. (2) Its
residual block discards the residual sum (returns ``x`` instead of LReLU(x + res)); here the sum
is kept. Neither changes the parameter count (``deconv1`` is counted in the reference too).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_sequence_input, init_kaiming
from .dr_head import scaled_channels
from .res_unet_3d import ResConv3d, conv_bn_lrelu, up_bn_lrelu

WIDTHS = (64, 128, 256, 512)
PSC_FRAMES = 8  # three k2s2 downs take 8 frames to 1 at the bottleneck


class PSC(nn.Module):
    """Input x (B, 1, 8, H, W) float32, H and W multiples of 8. Output (B, num_classes, H, W) logits."""

    input_layout = "sequence"

    def __init__(self, num_classes: int = 2, num_frames: int = PSC_FRAMES, feature_scale: int = 2):
        super().__init__()
        if num_frames != PSC_FRAMES:
            raise ValueError(f"psc: num_frames={num_frames} is not supported; the network needs exactly {PSC_FRAMES}")
        self.num_frames = num_frames
        c = scaled_channels("psc", WIDTHS, feature_scale)
        self.enc = nn.ModuleList([ResConv3d(1, c[0])] + [ResConv3d(c[i], c[i]) for i in (1, 2)])
        self.downs = nn.ModuleList(nn.Sequential(*conv_bn_lrelu(c[i], c[i + 1], 2, stride=2)) for i in range(3))
        self.center = ResConv3d(c[3], c[3])
        self.ups = nn.ModuleList(up_bn_lrelu(c[i + 1], c[i], (1, 2, 2)) for i in reversed(range(3)))
        self.dec = nn.ModuleList(ResConv3d(2 * c[i], c[i]) for i in reversed(range(3)))
        self.head = nn.Conv3d(c[0], num_classes, 1)
        self.apply(init_kaiming)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input("psc", x, self.num_frames, 8)
        skips = []
        for enc, down in zip(self.enc, self.downs):
            x = enc(x)
            skips.append(x.mean(dim=2, keepdim=True))  # temporal average pooling over all frames
            x = down(x)
        x = self.center(x)
        for up, dec in zip(self.ups, self.dec):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x).squeeze(2)
