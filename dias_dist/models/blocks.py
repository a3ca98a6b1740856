"""Building blocks shared by several models: weight init, input checks, the double conv,
FR-UNet's grid block.

FR-UNet block (docs/REFERENCE.md §3), used by ``fr_unet.FRUNet`` and ``vss_net.VSSNet``'s decoder:
feature fuse (1x1 + 3x3 + dilated 3x3, no bias, summed, BN) when the channel count changes, a
residual conv block, then optional up (ConvT 2x2 s2, C -> C/2) and down (Conv 2x2 s2, C -> 2C).
"""
from __future__ import annotations

import torch
from torch import nn


def init_kaiming(module: nn.Module) -> None:
    """DIAS ``InitWeights``: kaiming_normal_(a=0.02) on every Conv/ConvTranspose weight, zero bias.
    Use as ``model.apply(init_kaiming)``."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def freeze_unused(module: nn.Module) -> nn.Module:
    """Mark layers that the reference builds but never uses in forward as frozen.

    They are kept only so that parameter counts match the published ones; frozen, they get no
    gradient, so DDP needs no ``find_unused_parameters`` and the optimiser leaves them alone.
    """
    module.requires_grad_(False)
    return module


def check_frames_input(model_name: str, x: torch.Tensor, num_frames: int, multiple_of: int, min_side: int = 1) -> None:
    """ValueError naming the model and the shapes unless ``x`` is (B, num_frames, H, W) (frames as
    channels) with H, W divisible by ``multiple_of`` (the model's total downsampling) and >= ``min_side``."""
    if x.dim() != 4:
        raise ValueError(f"{model_name} takes input layout 'frames' (B, T={num_frames}, H, W), got shape {tuple(x.shape)}")
    _check_frames_and_size(model_name, tuple(x.shape), num_frames, multiple_of, min_side)


def check_sequence_input(model_name: str, x: torch.Tensor, num_frames: int, multiple_of: int, min_side: int = 1) -> None:
    """ValueError naming the model and the shapes unless ``x`` is (B, 1, num_frames, H, W) with H, W
    divisible by ``multiple_of`` (the model's total downsampling) and >= ``min_side``."""
    if x.dim() != 5 or x.shape[1] != 1:
        raise ValueError(
            f"{model_name} takes input layout 'sequence' (B, 1, T={num_frames}, H, W), got shape {tuple(x.shape)}"
        )
    _check_frames_and_size(model_name, tuple(x.shape), num_frames, multiple_of, min_side)


def _check_frames_and_size(model_name: str, shape: tuple[int, ...], num_frames: int, multiple_of: int,
                           min_side: int) -> None:
    """``shape`` is (B, T, H, W) or (B, 1, T, H, W): T must equal ``num_frames``, H and W be positive
    multiples of ``multiple_of`` and at least ``min_side``."""
    frames, height, width = shape[-3:]
    if frames != num_frames:
        raise ValueError(
            f"{model_name} is configured for num_frames={num_frames} but got {frames} frames (input shape {shape})"
        )
    if height % multiple_of or width % multiple_of or min(height, width) < max(min_side, 1):
        at_least = f" and at least {min_side}" if min_side > 1 else ""
        raise ValueError(f"{model_name} needs H and W divisible by {multiple_of}{at_least}, got input shape {shape}")


_NORMS = {
    "batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
    "instance": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
}


def double_conv(in_channels: int, out_channels: int, *, bias: bool = True, norm: str | None = "batch",
                dims: int = 2, dropout: float | None = None) -> nn.Sequential:
    """(B, in, [T,] H, W) -> (B, out, [T,] H, W): [Conv 3x3(x3) pad 1 - norm - ReLU] x 2.

    ``norm``: 'batch', 'instance' (no affine) or None; ``dims``: 2 (Conv2d) or 3 (Conv3d);
    ``dropout``: an ``nn.Dropout`` right after the first ReLU (UNet-DP). Sequential indices:
    conv, [norm], ReLU, [dropout], conv, [norm], ReLU.
    """
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    norm_layer = None if norm is None else _NORMS[norm][dims]
    layers: list[nn.Module] = []
    for i, cin in enumerate((in_channels, out_channels)):
        layers.append(conv(cin, out_channels, 3, padding=1, bias=bias))
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        layers.append(nn.ReLU(inplace=True))
        if i == 0 and dropout is not None:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class FeatureFuse(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H, W): BN(conv1x1(x) + conv3x3(x) + dilated conv3x3(x)), no biases."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1x1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.conv3x3 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv3x3_dilated = nn.Conv2d(in_channels, out_channels, 3, padding=2, dilation=2, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return self.norm(self.conv1x1(x) + self.conv3x3(x) + self.conv3x3_dilated(x))


class ResidualConv(nn.Module):
    """(B, C, H, W) -> same: LReLU(x + [conv3x3-norm-drop-LReLU-conv3x3-norm-drop](x)), convs without bias.
    ``norm`` is 'batch' or 'instance' (InstanceNorm2d without affine, as SFEM uses)."""

    def __init__(self, channels: int, dropout: float, norm: str = "batch"):
        super().__init__()
        norm_layer = {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d}[norm]
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            norm_layer(channels),
            nn.Dropout2d(dropout),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            norm_layer(channels),
            nn.Dropout2d(dropout),
        )
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):
        return self.act(x + self.body(x))


def up_block(channels: int, dropout: float) -> nn.Sequential:
    """(B, C, H, W) -> (B, C/2, 2H, 2W): ConvT 2x2 s2 (no bias) - BN - [Dropout2d] - LReLU(0.1)."""
    layers = [nn.ConvTranspose2d(channels, channels // 2, 2, stride=2, bias=False), nn.BatchNorm2d(channels // 2)]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers, nn.LeakyReLU(0.1))


def down_block(channels: int, dropout: float) -> nn.Sequential:
    """(B, C, H, W) -> (B, 2C, H/2, W/2): Conv 2x2 s2 (no bias) - BN - [Dropout2d] - LReLU(0.1)."""
    layers = [nn.Conv2d(channels, channels * 2, 2, stride=2, bias=False), nn.BatchNorm2d(channels * 2)]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers, nn.LeakyReLU(0.1))


class FRBlock(nn.Module):
    """One node of the FR-UNet grid. forward(x (B, C_in, H, W)) -> tuple of
    x (B, C, H, W), then x_up (B, C/2, 2H, 2W) if ``up``, then x_down (B, 2C, H/2, W/2) if ``down``.

    As in the reference, the feature fuse is built even when C_in == C (and then skipped in
    forward); that dead copy is frozen (``freeze_unused``) and kept only for the parameter count.
    ``updown_dropout``: dropout inside up/down (VSS-Net 0.2; FR-UNet 2D none).
    """

    def __init__(self, in_channels: int, channels: int, dropout: float, up: bool = False, down: bool = False,
                 updown_dropout: float = 0.0):
        super().__init__()
        self.fuses_input = in_channels != channels
        self.fuse = FeatureFuse(in_channels, channels)
        if not self.fuses_input:
            freeze_unused(self.fuse)
        self.conv = ResidualConv(channels, dropout)
        self.up = up_block(channels, updown_dropout) if up else None
        self.down = down_block(channels, updown_dropout) if down else None

    def forward(self, x):
        if self.fuses_input:
            x = self.fuse(x)
        x = self.conv(x)
        outputs = (x,)
        if self.up is not None:
            outputs += (self.up(x),)
        if self.down is not None:
            outputs += (self.down(x),)
        return outputs
