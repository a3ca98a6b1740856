"""VSS-Net: sequence feature extraction (SFEM) + FR-UNet decoder, exactly as docs/REFERENCE.md §3.

SFEM, with widths [w, 2w, 4w, 8w] (w = 32 full size) and InstanceNorm (no affine), LReLU(0.1),
Dropout2d:
1. ``inc``: a weight-shared per-frame residual conv block (1x1 conv 1 -> w with bias, then
   conv3x3-IN-drop-LReLU-conv3x3-IN-drop, add, LReLU), all frames in one batched call.
2. ``en1``: ``BiConvGRU(w, w)`` at full resolution; ``en2..en4``: ``BiConvGRU`` whose weight-shared
   2x2 stride-2 conv takes [raw frame resized and copied to C_in channels | features].
   Each stage: forward ConvGRU from the first frame's features, backward ConvGRU from the last
   frame's, y_t = tanh(conv3x3([h_f,t ; h_b,t])), skip = max over time of y.
3. The four skips (w@H, 2w@H/2, 4w@H/4, 8w@H/8) feed the FR-UNet grid (BatchNorm, dropout 0.2 also
   in up/down), whose five 1x1 heads are averaged. No final activation. Kaiming init (a=0.02).

Full size: 18,515,318 parameters (the released code; the paper's 18.69 M adds four unused 1x1
convs of an older version). Of these, the frozen copies of layers the reference builds but never
runs are counted (``blocks.freeze_unused``).

``frames`` selects the input frames (the paper's Table VI ablation): ``all`` (the paper's main
model), ``first``, ``last``, ``first_last`` (frames 0 and T-1; this is the reference code's
released default, ``input_reduce=[0,7]``), ``mean`` (temporal mean) or ``min`` (MinIP); the last two
reduce the sequence to one frame.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import ResidualConv, check_sequence_input, init_kaiming
from .convgru import IMPL_CHOICES, INIT_CHOICES, BiConvGRU, ConvGRU
from .fr_unet import FRUNetGrid

FRAME_CHOICES = ("all", "first", "last", "first_last", "mean", "min")


def select_frames(x_B1THW: torch.Tensor, frames: str) -> torch.Tensor:
    """(B, 1, T, H, W) -> (B, 1, T', H, W) with T' = T ('all'), 2 ('first_last') or 1 (the others)."""
    if frames == "all":
        return x_B1THW
    if frames == "first":
        return x_B1THW[:, :, :1]
    if frames == "last":
        return x_B1THW[:, :, -1:]
    if frames == "first_last":
        return x_B1THW[:, :, [0, -1]]
    if frames == "mean":
        return x_B1THW.mean(dim=2, keepdim=True)
    if frames == "min":
        return x_B1THW.amin(dim=2, keepdim=True)
    raise ValueError(f"VSSNet: unknown frames option {frames!r}; valid: {', '.join(FRAME_CHOICES)}")


class FrameStem(nn.Module):
    """SFEM ``inc``: (B, T, 1, H, W) -> (B, T, w, H, W), one weight-shared residual block per frame."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.project = nn.Conv2d(1, width, 1)
        self.conv = ResidualConv(width, dropout, norm="instance")

    def forward(self, x_BT1HW):
        B, T, _, H, W = x_BT1HW.shape
        y = self.conv(self.project(x_BT1HW.reshape(B * T, 1, H, W)))
        return y.view(B, T, -1, H, W)


class VSSNet(nn.Module):
    """VSS-Net. forward(x (B, 1, num_frames, H, W) float) -> logits (B, num_classes, H, W); H, W % 8 == 0.

    Args: ``frames`` (see module docstring), ``width`` base channels (32 = reference feature_scale 2;
    4 or 8 for tests), ``dropout`` (0.2 everywhere), ``gru_impl`` ('auto' | 'torch' | 'triton', see
    ``convgru``), ``gru_init`` ('unsplit': the eight GRUs start with the reference cell's Kaiming std,
    fan-in 18C; 'split': Kaiming per split conv, fan-in 9C, std x sqrt(2)).
    """

    input_layout = "sequence"

    def __init__(self, num_frames: int = 8, num_classes: int = 2, frames: str = "all", width: int = 32,
                 dropout: float = 0.2, gru_impl: str = "auto", gru_init: str = "unsplit"):
        super().__init__()
        if frames not in FRAME_CHOICES:
            raise ValueError(f"VSSNet: unknown frames option {frames!r}; valid: {', '.join(FRAME_CHOICES)}")
        if gru_impl not in IMPL_CHOICES:
            raise ValueError(f"VSSNet: unknown gru_impl {gru_impl!r}; valid: {', '.join(IMPL_CHOICES)}")
        if gru_init not in INIT_CHOICES:
            raise ValueError(f"VSSNet: unknown gru_init {gru_init!r}; valid: {', '.join(INIT_CHOICES)}")
        self.num_frames = num_frames
        self.frames = frames
        w = width
        self.inc = FrameStem(w, dropout)
        self.en1 = BiConvGRU(w, w, downsample=False, dropout=dropout, impl=gru_impl, gru_init=gru_init)
        self.en2 = BiConvGRU(w, 2 * w, dropout=dropout, impl=gru_impl, gru_init=gru_init)
        self.en3 = BiConvGRU(2 * w, 4 * w, dropout=dropout, impl=gru_impl, gru_init=gru_init)
        self.en4 = BiConvGRU(4 * w, 8 * w, dropout=dropout, impl=gru_impl, gru_init=gru_init)
        self.decoder = FRUNetGrid(w, num_classes, dropout, updown_dropout=dropout, own_encoder=False)
        self.apply(init_kaiming)
        if gru_init == "unsplit":  # apply() saw the split convs; redo the GRUs with the reference's fan-in
            for module in self.modules():
                if isinstance(module, ConvGRU):
                    module.reset_parameters(init_kaiming)

    def forward(self, x_B1THW: torch.Tensor) -> torch.Tensor:
        check_sequence_input("VSSNet", x_B1THW, self.num_frames, 8)
        raw_BT1HW = select_frames(x_B1THW, self.frames).transpose(1, 2)
        x, skip1 = self.en1(self.inc(raw_BT1HW))
        x, skip2 = self.en2(x, raw_BT1HW)
        x, skip3 = self.en3(x, raw_BT1HW)
        _, skip4 = self.en4(x, raw_BT1HW)
        return self.decoder(skip1, skip2, skip3, skip4)
