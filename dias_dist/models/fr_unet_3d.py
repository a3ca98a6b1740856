"""FR-UNet-3D baseline of Table II, five DR heads (docs/REFERENCE.md §4, 20.57 M).

The FR-UNet grid (full-resolution and multi-scale horizontal/vertical paths) in 3D. Widths 32, 64,
128, 256 (64..512 / ``feature_scale``; the reference's code default 4 gives 5.15 M, Table II used
2, our default). Every down/up sampling is (1, 2, 2), so all levels keep T frames. A block is: an
optional ``feature_fuse`` (1x1 + 3x3 + dilated 3x3 Conv3d summed, BN) when its input width differs
from its own, a residual conv block (Conv3d-BN-Dropout3d-LReLU x2 + identity, LReLU), and
optional ConvTranspose3d up (C -> C/2) / Conv3d down (C -> 2C) branches (-BN-LReLU). The output
is the mean of five DR heads on the full-resolution nodes. Reference initialisation (kaiming a=0.02).

Frozen reference-only layers: the reference builds a ``feature_fuse`` in every block, also where
the input width equals the block's (block1_2, block2_2, block3_1, block40) and the fuse is skipped,
and an unused ``Conv3d(5, classes, 1)``. Those layers are kept frozen (``blocks.freeze_unused``)
only so the parameter count equals Table II; they take no part in the forward pass or training.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import check_sequence_input, freeze_unused, init_kaiming
from .dr_head import DRHead, scaled_channels
from .res_unet_3d import conv_bn_lrelu, up_bn_lrelu

WIDTHS = (64, 128, 256, 512)
SPATIAL = (1, 2, 2)


class FeatureFuse3d(nn.Module):
    """(B, in, T, H, W) -> (B, out, T, H, W): BN(Conv1x1(x) + Conv3x3(x) + dilated Conv3x3(x))."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 1, bias=False)
        self.conv3 = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv3_dilated = nn.Conv3d(in_channels, out_channels, 3, padding=2, dilation=2, bias=False)
        self.norm = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv1(x) + self.conv3(x) + self.conv3_dilated(x))


class GridBlock3d(nn.Module):
    """One FR-UNet node. Returns (x, up or None, down or None), x (B, C, T, H, W),
    up (B, C/2, T, 2H, 2W), down (B, 2C, T, H/2, W/2)."""

    def __init__(self, in_channels: int, channels: int, dropout: float, up: bool = False, down: bool = False):
        super().__init__()
        self.fuse = FeatureFuse3d(in_channels, channels)
        if in_channels == channels:
            freeze_unused(self.fuse)  # reference-only: built but skipped (see module docstring)
        self.needs_fuse = in_channels != channels
        layers = []
        for _ in range(2):
            layers += [
                nn.Conv3d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm3d(channels),
                nn.Dropout3d(dropout),
                nn.LeakyReLU(0.1, inplace=True),
            ]
        self.conv = nn.Sequential(*layers)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.up = up_bn_lrelu(channels, channels // 2, SPATIAL) if up else None
        self.down = nn.Sequential(*conv_bn_lrelu(channels, channels * 2, SPATIAL, stride=SPATIAL)) if down else None

    def forward(self, x: torch.Tensor):
        if self.needs_fuse:
            x = self.fuse(x)
        x = self.act(self.conv(x) + x)
        return x, self.up(x) if self.up is not None else None, self.down(x) if self.down is not None else None


class FRUNet3D(nn.Module):
    """Input x (B, 1, T, H, W) float32, T = ``num_frames`` (any), H and W multiples of 8.
    Output (B, num_classes, H, W) logits (mean of five DR heads)."""

    input_layout = "sequence"

    def __init__(self, num_classes: int = 2, num_frames: int = 8, feature_scale: int = 2, dropout: float = 0.2):
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"fr_unet_3d: num_frames={num_frames} must be positive")
        self.num_frames = num_frames
        c = scaled_channels("fr_unet_3d", WIDTHS, feature_scale)

        def block(cin, cout, up=False, down=False):
            return GridBlock3d(cin, cout, dropout, up=up, down=down)

        self.block1_3 = block(1, c[0], down=True)
        self.block1_2 = block(c[0], c[0], down=True)
        self.block1_1 = block(2 * c[0], c[0], down=True)
        self.block10 = block(2 * c[0], c[0], down=True)
        self.block11 = block(2 * c[0], c[0], down=True)
        self.block12 = block(2 * c[0], c[0])
        self.block13 = block(2 * c[0], c[0])
        self.block2_2 = block(c[1], c[1], up=True, down=True)
        self.block2_1 = block(2 * c[1], c[1], up=True, down=True)
        self.block20 = block(3 * c[1], c[1], up=True, down=True)
        self.block21 = block(3 * c[1], c[1], up=True)
        self.block22 = block(3 * c[1], c[1], up=True)
        self.block3_1 = block(c[2], c[2], up=True, down=True)
        self.block30 = block(2 * c[2], c[2], up=True)
        self.block31 = block(3 * c[2], c[2], up=True)
        self.block40 = block(c[3], c[3], up=True)
        self.heads = nn.ModuleList(DRHead(c[0], num_frames, num_classes) for _ in range(5))
        self.unused_fuse = freeze_unused(nn.Conv3d(5, num_classes, 1))  # reference-only, see docstring
        self.apply(init_kaiming)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input("fr_unet_3d", x, self.num_frames, 8)
        cat = torch.cat
        x1_3, _, down1_3 = self.block1_3(x)
        x1_2, _, down1_2 = self.block1_2(x1_3)
        x2_2, up2_2, down2_2 = self.block2_2(down1_3)
        x1_1, _, down1_1 = self.block1_1(cat([x1_2, up2_2], dim=1))
        x2_1, up2_1, down2_1 = self.block2_1(cat([down1_2, x2_2], dim=1))
        x3_1, up3_1, down3_1 = self.block3_1(down2_2)
        x10, _, down10 = self.block10(cat([x1_1, up2_1], dim=1))
        x20, up20, down20 = self.block20(cat([down1_1, x2_1, up3_1], dim=1))
        x30, up30, _ = self.block30(cat([down2_1, x3_1], dim=1))
        _, up40, _ = self.block40(down3_1)
        x11, _, down11 = self.block11(cat([x10, up20], dim=1))
        x21, up21, _ = self.block21(cat([down10, x20, up30], dim=1))
        _, up31, _ = self.block31(cat([down20, x30, up40], dim=1))
        x12, _, _ = self.block12(cat([x11, up21], dim=1))
        _, up22, _ = self.block22(cat([down11, x21, up31], dim=1))
        x13, _, _ = self.block13(cat([x12, up22], dim=1))
        nodes = (x1_1, x10, x11, x12, x13)
        return sum(head(node) for head, node in zip(self.heads, nodes)) / len(nodes)
