"""Attention-UNet-3D baseline of Table II, DR head (docs/REFERENCE.md §4, 23.60 M).

Widths 32..512 (64..1024 / ``feature_scale``, default 2); double Conv3d(3)-BN-ReLU blocks; first
max-pool (1, 2, 2), then (2, 2, 2). A 1x1x1 gating signal from the bottleneck drives additive grid
attention gates ("concatenation" mode, theta sub-sampling (2, 2, 2)) on the skips of levels 2-4;
the level-1 skip is not gated. Decoder: ConvTranspose3d up, concatenation, double conv. DR head.
Initialisation as the reference: kaiming_normal_(fan_in) on conv weights, BN weight ~ N(1, 0.02).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import check_sequence_input, double_conv
from .dr_head import DRHead, check_num_frames, scaled_channels

WIDTHS = (64, 128, 256, 512, 1024)


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, padding: int) -> list:
    return [nn.Conv3d(in_channels, out_channels, kernel, padding=padding), nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True)]


class GridAttentionGate3d(nn.Module):
    """Additive attention gate: x (B, C, T, H, W) gated by g (B, G, t, h, w) -> (B, C, T, H, W).

    a = sigmoid(psi(relu(theta(x) + up(phi(g))))) at the theta resolution (x sub-sampled by
    ``sub_sample``), trilinearly upsampled to x; output W(a * x) with W = Conv1x1-BN."""

    def __init__(self, in_channels: int, gating_channels: int, inter_channels: int, sub_sample=(2, 2, 2)):
        super().__init__()
        self.theta = nn.Conv3d(in_channels, inter_channels, sub_sample, stride=sub_sample, bias=False)
        self.phi = nn.Conv3d(gating_channels, inter_channels, 1)
        self.psi = nn.Conv3d(inter_channels, 1, 1)
        self.out = nn.Sequential(nn.Conv3d(in_channels, in_channels, 1), nn.BatchNorm3d(in_channels))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        theta_x = self.theta(x)
        phi_g = F.interpolate(self.phi(g), size=theta_x.shape[2:], mode="trilinear", align_corners=False)
        attention = torch.sigmoid(self.psi(F.relu(theta_x + phi_g)))
        attention = F.interpolate(attention, size=x.shape[2:], mode="trilinear", align_corners=False)
        return self.out(attention * x)


class UpConcat3d(nn.Module):
    """ConvTranspose3d(in -> out, kernel = stride = ``scale``), cat([skip, up]), double conv (2out -> out)."""

    def __init__(self, in_channels: int, out_channels: int, scale):
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, scale, stride=scale)
        self.conv = double_conv(in_channels, out_channels, dims=3)

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(deep)], dim=1))


class AttUNet3D(nn.Module):
    """Input x (B, 1, T, H, W) float32, T = ``num_frames`` (a multiple of 8), H and W multiples of 16.
    Output (B, num_classes, H, W) logits."""

    input_layout = "sequence"

    def __init__(self, num_classes: int = 2, num_frames: int = 8, feature_scale: int = 2):
        super().__init__()
        check_num_frames("att_unet_3d", num_frames, 8)
        self.num_frames = num_frames
        c = scaled_channels("att_unet_3d", WIDTHS, feature_scale)
        self.encoders = nn.ModuleList(double_conv(1 if i == 0 else c[i - 1], c[i], dims=3) for i in range(4))
        self.pools = nn.ModuleList([nn.MaxPool3d((1, 2, 2))] + [nn.MaxPool3d(2) for _ in range(3)])
        self.center = double_conv(c[3], c[4], dims=3)
        self.gating = nn.Sequential(*conv_bn_relu(c[4], c[3], 1, 0))
        # gates for the skips of levels 2, 3, 4 (index 1..3)
        self.gates = nn.ModuleList(GridAttentionGate3d(c[i], c[3], c[i]) for i in (1, 2, 3))
        scales = [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
        self.ups = nn.ModuleList(UpConcat3d(c[i + 1], c[i], scales[i]) for i in reversed(range(4)))
        self.head = DRHead(c[0], num_frames, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_sequence_input("att_unet_3d", x, self.num_frames, 16)
        skips = []
        for enc, pool in zip(self.encoders, self.pools):
            x = enc(x)
            skips.append(x)
            x = pool(x)
        center = self.center(x)
        gating = self.gating(center)
        skips = [skips[0]] + [gate(skip, gating) for gate, skip in zip(self.gates, skips[1:])]
        y = center
        for up in self.ups:
            y = up(skips.pop(), y)
        return self.head(y)
