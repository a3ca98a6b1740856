"""FR-UNet (full-resolution UNet), 2D with the T frames as input channels ("DR + 2D", Table II).

docs/REFERENCE.md §3 (FR-UNet baseline): widths [w, 2w, 4w, 8w] with w = 32; a grid of ``FRBlock``s in
which every level keeps its resolution and exchanges features with its neighbours through
ConvT/strided-conv up/down blocks; five 1x1 heads on the full-resolution nodes whose logits are
averaged (no deep supervision, no final activation). Full size: 7,378,774 parameters with 8 input
channels (the paper's 7.37 M is the 1-channel count). ``FRUNetGrid`` is shared with VSS-Net, whose
SFEM supplies levels 1-4 instead of the plain encoder here.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import FRBlock, check_frames_input, freeze_unused, init_kaiming


class FRUNetGrid(nn.Module):
    """The FR-UNet grid from level-1 features to averaged logits.

    forward(level1 (B, w, H, W), level2 (B, 2w, H/2, W/2), level3=None, level4=None) -> (B, classes, H, W)
    With ``own_encoder=True`` (FR-UNet 2D) levels 3 (B, 4w, H/4, W/4) and 4 (B, 8w, H/8, W/8) come from
    the down paths of the level-2/3 blocks; otherwise (VSS-Net) they are passed in.
    """

    def __init__(self, width: int, num_classes: int, dropout: float, updown_dropout: float, own_encoder: bool):
        super().__init__()
        w1, w2, w3, w4 = width, 2 * width, 4 * width, 8 * width
        self.own_encoder = own_encoder

        def block(c_in, c, up=False, down=False):
            return FRBlock(c_in, c, dropout, up=up, down=down, updown_dropout=updown_dropout)

        self.block1_2 = block(w1, w1, down=True)
        self.block2_2 = block(w2, w2, up=True, down=own_encoder)
        self.block1_1 = block(2 * w1, w1, down=True)
        self.block2_1 = block(2 * w2, w2, up=True, down=True)
        self.block3_1 = block(w3, w3, up=True, down=own_encoder)
        self.block10 = block(2 * w1, w1, down=True)
        self.block20 = block(3 * w2, w2, up=True, down=True)
        self.block30 = block(2 * w3, w3, up=True)
        self.block40 = block(w4, w4, up=True)
        self.block11 = block(2 * w1, w1, down=True)
        self.block21 = block(3 * w2, w2, up=True)
        self.block31 = block(3 * w3, w3, up=True)
        self.block12 = block(2 * w1, w1)
        self.block22 = block(3 * w2, w2, up=True)
        self.block13 = block(2 * w1, w1)
        self.heads = nn.ModuleList(nn.Conv2d(w1, num_classes, 1) for _ in range(5))
        # The reference defines a 5 -> classes "fuse" conv that its forward never uses (12 parameters).
        self.unused_fuse_head = freeze_unused(nn.Conv2d(5, num_classes, 1))

    def forward(self, level1, level2, level3=None, level4=None):
        cat = torch.cat
        x1_2, down1_2 = self.block1_2(level1)
        if self.own_encoder:
            x2_2, up2_2, level3 = self.block2_2(level2)
        else:
            x2_2, up2_2 = self.block2_2(level2)
        x1_1, down1_1 = self.block1_1(cat([x1_2, up2_2], 1))
        x2_1, up2_1, down2_1 = self.block2_1(cat([down1_2, x2_2], 1))
        if self.own_encoder:
            x3_1, up3_1, level4 = self.block3_1(level3)
        else:
            x3_1, up3_1 = self.block3_1(level3)
        x10, down10 = self.block10(cat([x1_1, up2_1], 1))
        x20, up20, down20 = self.block20(cat([down1_1, x2_1, up3_1], 1))
        x30, up30 = self.block30(cat([down2_1, x3_1], 1))
        _, up40 = self.block40(level4)
        x11, down11 = self.block11(cat([x10, up20], 1))
        x21, up21 = self.block21(cat([down10, x20, up30], 1))
        _, up31 = self.block31(cat([down20, x30, up40], 1))
        (x12,) = self.block12(cat([x11, up21], 1))
        _, up22 = self.block22(cat([down11, x21, up31], 1))
        (x13,) = self.block13(cat([x12, up22], 1))
        logits = [head(x) for head, x in zip(self.heads, (x1_1, x10, x11, x12, x13))]
        return torch.stack(logits).mean(0)


class FRUNet(nn.Module):
    """FR-UNet 2D. forward(x (B, num_frames, H, W) float) -> logits (B, num_classes, H, W), H, W % 8 == 0.

    ``width`` is the level-1 channel count (32 = the reference's feature_scale 2); ``dropout`` is used
    in the residual conv blocks (up/down blocks have none, as in the DIAS version). Kaiming init.
    """

    input_layout = "frames"

    def __init__(self, num_frames: int = 8, num_classes: int = 2, width: int = 32, dropout: float = 0.1):
        super().__init__()
        self.num_frames = num_frames
        self.block1_3 = FRBlock(num_frames, width, dropout, down=True)
        self.grid = FRUNetGrid(width, num_classes, dropout, updown_dropout=0.0, own_encoder=True)
        self.apply(init_kaiming)

    def forward(self, x_BTHW: torch.Tensor) -> torch.Tensor:
        check_frames_input("FRUNet", x_BTHW, self.num_frames, multiple_of=8)
        x1_3, down1_3 = self.block1_3(x_BTHW)
        return self.grid(x1_3, down1_3)
