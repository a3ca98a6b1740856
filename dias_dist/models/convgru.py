"""Convolutional GRU for VSS-Net's SFEM: batched input path, stepped hidden path, swappable pointwise math.

A ConvGRU cell with hidden size C and 3x3 kernels (docs/REFERENCE.md §3):
```
z  = sigmoid(W_z * [x, h]),  r = sigmoid(W_r * [x, h])
n  = tanh(W_n * [x, r*h])
h' = (1 - z) * n + z * h
```
Every conv over a concatenation [x, h] is the sum of a conv over x and a conv over h. The x part does
not depend on the recurrence, so ``ConvGRU`` computes it for all T frames in ONE convolution over
(B*T, C, H, W) (``input_conv``: C -> 3C, with the biases), and steps only the hidden part
(``hidden_zr``: C -> 2C and ``hidden_n``: C -> C, no bias). The parameter count equals the reference
cell's three (2C -> C, bias) convs exactly: 3*(2C*C*9 + C).

The pointwise math of a step is two functions, chosen by name from ``IMPLS``:
```
gru_gates(x_zr, h_zr, h)   -> (z, rh)   x_zr, h_zr: (B, 2C, H, W) z channels first, then r
gru_update(x_n, h_n, z, h) -> h_new     all (B, C, H, W)
```
``IMPLS = {"torch": ...}`` here; this module adds ``IMPLS["triton"]`` itself from
``dias_dist/kernels/convgru_triton.py`` the first time Triton is asked for (importing it imports triton). ``set_impl("torch" | "triton" | "auto")`` sets the process default; a module built
with ``impl="torch"`` or ``"triton"`` overrides it, ``impl="auto"`` follows it. ``"auto"`` resolves to
Triton for CUDA tensors when the kernels import, else to PyTorch. Arguments handed to the functions
may be batch slices of bigger tensors (only the batch stride differs from contiguous).

Arrangement: the same parameters can be stepped three ways.
``"batched"`` is the layout above (one C -> 3C convolution over all B*T frames, then per step
C -> 2C and C -> C hidden convolutions); ``"stepped"`` concatenates the weights at call time and
runs, per step, one 2C -> 2C convolution on [x_t, h] (z and r) and one 2C -> C on [x_t, r*h] (n), as
the reference code arranges it (with its two gate convolutions merged into one); ``"split"`` is the
reference cell exactly (three 2C -> C convolutions per step, r and z apart). Equal FLOPs, other
GEMM shapes: which is faster depends on the device and on whether autograd records the graph, so
``arrangement="auto"`` (the default, a class attribute an instance may override) looks up
``PREFERRED_ARRANGEMENT[(device type, grad enabled)]``, measured with ``benchmarks/roofline.py``.

``ConvGRUReference`` computes the cell the way the reference code does (concatenate [x_t, h] and run
three convs at every step); ``ConvGRU.load_reference_weights`` copies its weights so the two can be
compared (tests, benchmark).

Initialisation (``init="unsplit"``, the default): fan-in based initialisers (PyTorch's default,
Kaiming) would see a fan-in of 9C on the split convs instead of the reference's 18C, i.e. weights
sqrt(2) times too large. ``reset_parameters(weight_init)`` therefore initialises three unsplit
(2C -> C) convs and copies them in, so training starts where the reference starts. ``init="split"``
keeps the per-piece initialisation (docs/DECISIONS.md).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

GatesFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
UpdateFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def gru_gates(x_zr: torch.Tensor, h_zr: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Update gate and reset hidden state. x_zr, h_zr: (B, 2C, H, W) [z | r]; h: (B, C, H, W).

    Returns z = sigmoid(x_z + h_z) and rh = sigmoid(x_r + h_r) * h, both (B, C, H, W), dtype of the inputs.
    """
    z_pre, r_pre = (x_zr + h_zr).chunk(2, dim=1)
    return torch.sigmoid(z_pre), torch.sigmoid(r_pre) * h


def gru_update(x_n: torch.Tensor, h_n: torch.Tensor, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """New hidden state h' = (1 - z) * tanh(x_n + h_n) + z * h; every tensor (B, C, H, W)."""
    return (1 - z) * torch.tanh(x_n + h_n) + z * h


IMPLS: dict[str, tuple[GatesFn, UpdateFn]] = {"torch": (gru_gates, gru_update)}
IMPL_CHOICES = ("auto", "torch", "triton")
INIT_CHOICES = ("unsplit", "split")  # fan-in of the reference's (2C -> C) convs | of each split piece

_default_impl = "auto"


ARRANGEMENT_CHOICES = ("auto", "batched", "stepped", "split")
# (device type, torch.is_grad_enabled()) -> arrangement; anything not listed runs "batched" (the
# layout the Triton kernels are written for). CPU, full-size VSS-Net (benchmarks/README.md, roofline):
# in training both are on par; in no-grad inference the stepped GEMMs (2C wide) run closer to the
# matmul peak than the batched input convolution and the narrow hidden ones.
PREFERRED_ARRANGEMENT: dict[tuple[str, bool], str] = {("cpu", True): "batched", ("cpu", False): "stepped"}


def resolve_arrangement(name: str, device: torch.device, grad_enabled: bool) -> str:
    """Concrete arrangement ("batched" | "stepped" | "split") for a module setting ``name`` on ``device``."""
    if name not in ARRANGEMENT_CHOICES:
        raise ValueError(f"unknown ConvGRU arrangement {name!r}; valid: {', '.join(ARRANGEMENT_CHOICES)}")
    if name == "auto":
        return PREFERRED_ARRANGEMENT.get((device.type, bool(grad_enabled)), "batched")
    return name


def _check_impl_name(name: str) -> None:
    if name not in IMPL_CHOICES:
        raise ValueError(f"unknown ConvGRU implementation {name!r}; valid: {', '.join(IMPL_CHOICES)}")


def set_impl(name: str) -> None:
    """Set the process-wide default ConvGRU implementation: 'torch', 'triton' or 'auto'."""
    global _default_impl
    _check_impl_name(name)
    if name == "triton":
        _load_triton(required=True)
    _default_impl = name


def get_impl() -> str:
    """The process-wide default implementation name ('auto' unless ``set_impl`` changed it)."""
    return _default_impl


def _load_triton(required: bool) -> bool:
    """Fill ``IMPLS["triton"]`` from the Triton kernels on first use; True when they are available."""
    if "triton" not in IMPLS:
        try:
            from dias_dist.kernels import convgru_triton
        except ImportError as err:
            if required:
                raise ValueError(f"ConvGRU implementation 'triton' is not available: {err}") from None
            return False
        IMPLS["triton"] = (convgru_triton.gru_gates, convgru_triton.gru_update)
    return True


def resolve_impl(name: str, device: torch.device) -> str:
    """Concrete implementation for a module setting ``name`` and tensors on ``device``."""
    _check_impl_name(name)
    if name == "auto":
        name = _default_impl
    if name == "auto":
        return "triton" if device.type == "cuda" and _load_triton(required=False) else "torch"
    if name == "triton":
        _load_triton(required=True)
    return name


class ConvGRU(nn.Module):
    """One direction of a ConvGRU (hidden = input channels, 3x3 kernels, padding 1).

    forward(x_BTCHW, h0_BCHW, reverse=False) -> h_BTCHW: float (B, T, C, H, W), the hidden state
    after each frame, in time order. ``reverse=True`` runs t = T-1..0 (VSS-Net's backward GRU).
    The input-to-hidden convolutions of all frames are one call; only the hidden path is stepped
    (``arrangement="batched"``; see the module docstring for "stepped" and "auto").
    """

    arrangement: str = "auto"  # auto | batched | stepped | split; an instance attribute overrides it

    def __init__(self, channels: int, impl: str = "auto", init: str = "unsplit"):
        super().__init__()
        _check_impl_name(impl)
        if init not in INIT_CHOICES:
            raise ValueError(f"unknown ConvGRU init {init!r}; valid: {', '.join(INIT_CHOICES)}")
        self.channels = channels
        self.impl = impl
        # Output channel order [z | r | n]; the biases of the reference convs live here.
        self.input_conv = nn.Conv2d(channels, 3 * channels, 3, padding=1, bias=True)
        self.hidden_zr = nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False)
        self.hidden_n = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        if init == "unsplit":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, weight_init: Callable[[nn.Module], None] | None = None) -> None:
        """Initialise as the reference's three unsplit (2C -> C) 3x3 convs: PyTorch's default init, or
        ``weight_init`` applied to them (e.g. ``blocks.init_kaiming``), then copied into the split layout."""
        reference = ConvGRUReference(self.channels)
        if weight_init is not None:
            reference.apply(weight_init)
        self.load_reference_weights(reference)

    def forward(self, x_BTCHW: torch.Tensor, h0_BCHW: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        B, T, C, H, W = x_BTCHW.shape
        if C != self.channels or h0_BCHW.shape != (B, C, H, W):
            raise ValueError(
                f"ConvGRU({self.channels}): expected x (B, T, {self.channels}, H, W) and h0 (B, {self.channels}, H, W), "
                f"got x {tuple(x_BTCHW.shape)} and h0 {tuple(h0_BCHW.shape)}"
            )
        impl = resolve_impl(self.impl, x_BTCHW.device)
        arrangement = resolve_arrangement(self.arrangement, x_BTCHW.device, torch.is_grad_enabled())
        if impl == "torch" and arrangement == "stepped":
            return self._forward_stepped(x_BTCHW, h0_BCHW, reverse)
        if impl == "torch" and arrangement == "split":
            return self._forward_split(x_BTCHW, h0_BCHW, reverse)
        gates, update = IMPLS[impl]
        x_all = self.input_conv(x_BTCHW.reshape(B * T, C, H, W)).view(B, T, 3 * C, H, W)
        # Split once with unbind: per-step indexing of x_all would make autograd allocate a
        # zero-filled gradient of x_all's full size for every slice (T^2 memory traffic).
        x_zr_steps = x_all[:, :, : 2 * C].unbind(1)
        x_n_steps = x_all[:, :, 2 * C :].unbind(1)
        h = h0_BCHW
        hidden = [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            z, rh = gates(x_zr_steps[t], self.hidden_zr(h), h)
            h = update(x_n_steps[t], self.hidden_n(rh), z, h)
            hidden[t] = h
        return torch.stack(hidden, dim=1)

    def _forward_stepped(self, x_BTCHW: torch.Tensor, h0_BCHW: torch.Tensor, reverse: bool) -> torch.Tensor:
        """The "stepped" arrangement: per step, conv(2C -> 2C) on [x_t, h] and conv(2C -> C) on [x_t, r*h].

        Same parameters as the batched path. The biases stay inside the convolutions and the gate
        math is written out as the reference cell does it (one sigmoid over [z | r]): no extra
        elementwise pass per step, which matters where this arrangement is chosen (no-grad CPU).
        """
        B, T, C, H, W = x_BTCHW.shape
        w_in, bias = self.input_conv.weight, self.input_conv.bias
        w_zr = torch.cat([w_in[: 2 * C], self.hidden_zr.weight], dim=1)  # (2C, 2C, 3, 3) on [x_t, h]
        w_n = torch.cat([w_in[2 * C :], self.hidden_n.weight], dim=1)  # (C, 2C, 3, 3) on [x_t, r*h]
        h = h0_BCHW
        hidden = [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            x_t = x_BTCHW[:, t]
            z, r = torch.sigmoid(F.conv2d(torch.cat([x_t, h], dim=1), w_zr, bias[: 2 * C], padding=1)).chunk(2, dim=1)
            n = torch.tanh(F.conv2d(torch.cat([x_t, r * h], dim=1), w_n, bias[2 * C :], padding=1))
            h = (1 - z) * n + z * h
            hidden[t] = h
        return torch.stack(hidden, dim=1)

    def _forward_split(self, x_BTCHW: torch.Tensor, h0_BCHW: torch.Tensor, reverse: bool) -> torch.Tensor:
        """The "split" arrangement: the reference cell exactly as written, per step three (2C -> C)
        convolutions, r and z on [x_t, h], n on [x_t, r*h] (same parameters, sliced at call time).
        On some CPUs two C-wide GEMMs beat one 2C-wide one (``cpu_tuning`` measures it)."""
        B, T, C, H, W = x_BTCHW.shape
        w_in, bias, w_h = self.input_conv.weight, self.input_conv.bias, self.hidden_zr.weight
        w_z = torch.cat([w_in[:C], w_h[:C]], dim=1)  # (C, 2C, 3, 3) on [x_t, h]
        w_r = torch.cat([w_in[C : 2 * C], w_h[C:]], dim=1)
        w_n = torch.cat([w_in[2 * C :], self.hidden_n.weight], dim=1)  # on [x_t, r*h]
        b_z, b_r, b_n = bias[:C], bias[C : 2 * C], bias[2 * C :]
        h = h0_BCHW
        hidden = [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            x_t = x_BTCHW[:, t]
            xh = torch.cat([x_t, h], dim=1)
            r = torch.sigmoid(F.conv2d(xh, w_r, b_r, padding=1))
            z = torch.sigmoid(F.conv2d(xh, w_z, b_z, padding=1))
            n = torch.tanh(F.conv2d(torch.cat([x_t, r * h], dim=1), w_n, b_n, padding=1))
            h = (1 - z) * n + z * h
            hidden[t] = h
        return torch.stack(hidden, dim=1)

    @torch.no_grad()
    def load_reference_weights(self, reference: "ConvGRUReference") -> None:
        """Copy the three (2C -> C) convs of a ``ConvGRUReference`` into the batched layout."""
        C = self.channels
        convs = (reference.update_gate, reference.reset_gate, reference.candidate)  # order [z | r | n]
        self.input_conv.weight.copy_(torch.cat([conv.weight[:, :C] for conv in convs]))
        self.input_conv.bias.copy_(torch.cat([conv.bias for conv in convs]))
        self.hidden_zr.weight.copy_(torch.cat([conv.weight[:, C:] for conv in convs[:2]]))
        self.hidden_n.weight.copy_(reference.candidate.weight[:, C:])


class ConvGRUReference(nn.Module):
    """The reference code's cell, stepped as written: three (2C -> C) 3x3 convs on [x_t, h] per frame.

    Same forward signature and result as ``ConvGRU``; kept for the equivalence test and the benchmark.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.reset_gate = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.update_gate = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.candidate = nn.Conv2d(2 * channels, channels, 3, padding=1)

    def forward(self, x_BTCHW: torch.Tensor, h0_BCHW: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        T = x_BTCHW.shape[1]
        h = h0_BCHW
        hidden = [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            x_t = x_BTCHW[:, t]
            xh = torch.cat([x_t, h], dim=1)
            r = torch.sigmoid(self.reset_gate(xh))
            z = torch.sigmoid(self.update_gate(xh))
            n = torch.tanh(self.candidate(torch.cat([x_t, r * h], dim=1)))
            h = (1 - z) * n + z * h
            hidden[t] = h
        return torch.stack(hidden, dim=1)


class BiConvGRU(nn.Module):
    """One SFEM stage (docs/REFERENCE.md §3): optional weight-shared strided downsampling (WSD) of
    [raw frames | features], forward + backward ConvGRU, tanh fusion, global max pooling over time.

    forward(x_BTCHW, raw_BT1HW=None) -> (y_BTCHW, pooled_BCHW)
      x_BTCHW   : (B, T, C_in, H, W) features of the previous stage
      raw_BT1HW : (B, T, 1, H0, W0) the (frame-selected) input frames; required when downsampling
      y_BTCHW   : (B, T, C_out, H', W') fused sequence (H' = H/2 when downsampling), to the next stage
      pooled_BCHW: (B, C_out, H', W') max over time of y, the skip feature for the decoder
    The forward GRU starts from the first frame's features, the backward one from the last frame's.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = True,
                 dropout: float = 0.2, impl: str = "auto", gru_init: str = "unsplit"):
        super().__init__()
        if not downsample and in_channels != out_channels:
            raise ValueError(f"BiConvGRU without downsampling needs in_channels == out_channels, "
                             f"got {in_channels} and {out_channels}")
        self.down = None
        if downsample:
            # WSD: the 2x2 stride-2 conv both mixes [raw copies | features] and halves the resolution.
            self.down = nn.Sequential(
                nn.Conv2d(2 * in_channels, out_channels, 2, stride=2, bias=False),
                nn.InstanceNorm2d(out_channels),
                nn.Dropout2d(dropout),
                nn.LeakyReLU(0.1, inplace=True),
            )
        self.forward_gru = ConvGRU(out_channels, impl, init=gru_init)
        self.backward_gru = ConvGRU(out_channels, impl, init=gru_init)
        self.fusion = nn.Conv2d(2 * out_channels, out_channels, 3, padding=1)

    def forward(self, x_BTCHW: torch.Tensor, raw_BT1HW: torch.Tensor | None = None):
        B, T, C, H, W = x_BTCHW.shape
        if self.down is not None:
            if raw_BT1HW is None:
                raise ValueError("BiConvGRU with downsampling needs the raw frames raw_BT1HW")
            # The raw frame resized to the current resolution, copied to C_in channels (the
            # reference's trilinear interpolation to (C_in, H, W) of a 1-channel volume does exactly this).
            raw = F.interpolate(raw_BT1HW.reshape(B * T, 1, *raw_BT1HW.shape[-2:]), size=(H, W),
                                mode="bilinear", align_corners=False)
            stacked = torch.cat([raw.expand(B * T, C, H, W), x_BTCHW.reshape(B * T, C, H, W)], dim=1)
            x = self.down(stacked)
            x_BTCHW = x.view(B, T, *x.shape[1:])
        forward_h = self.forward_gru(x_BTCHW, x_BTCHW[:, 0])
        backward_h = self.backward_gru(x_BTCHW, x_BTCHW[:, -1], reverse=True)
        B, T, C, H, W = forward_h.shape
        both = torch.cat([forward_h, backward_h], dim=2).view(B * T, 2 * C, H, W)
        y_BTCHW = torch.tanh(self.fusion(both)).view(B, T, C, H, W)
        return y_BTCHW, y_BTCHW.amax(dim=1)
