"""Fused Triton kernels for the pointwise math of one ConvGRU step, forward and backward.

They replace the two PyTorch functions of ``dias_dist.models.convgru`` with the same signatures:
```
gru_gates(x_zr, h_zr, h)   -> (z, rh)   z = sigmoid(x_z + h_z), r = sigmoid(x_r + h_r), rh = r * h
gru_update(x_n, h_n, z, h) -> h_new     h_new = (1 - z) * tanh(x_n + h_n) + z * h
```
x_zr, h_zr: (B, 2C, H, W) with the z channels first, then r; x_n, h_n, z, h, outputs: (B, C, H, W).
Eager PyTorch launches 4-6 elementwise kernels per function and saves as many intermediates for
backward; each fused function is one kernel forward and one backward, saving only what the
gradient needs (z, r, h for the gates; tanh output, z, h for the update).

Inputs may be batch slices of bigger tensors (``x_all[:, t]`` of the batched input convolution):
only the batch stride is free, the (C, H, W) part must be contiguous or it is copied once.
Arithmetic runs in float32 (float64 for float64 inputs, so ``gradcheck`` can test the kernels);
outputs take the promoted dtype of the inputs, as eager PyTorch would.

Triton runs on CUDA tensors, or on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``
set before triton is imported), which is how CI checks these kernels without a GPU. ``dias_dist.models.convgru``
puts ``gru_gates`` / ``gru_update`` into its ``IMPLS["triton"]`` when Triton is asked for.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
# The interpreter costs ~5 ms per program instance whatever BLOCK is (docs/REFERENCE.md §10): few, big blocks.
BLOCK_SIZE = 16384 if INTERPRETED else 1024
NUM_WARPS = 4


@triton.jit
def _tanh(x):
    # libdevice tanh does not exist in the interpreter; 2*sigmoid(2x) - 1 is exact in fp32 range.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _gates_fwd_kernel(x_zr_ptr, h_zr_ptr, h_ptr, z_ptr, r_ptr, rh_ptr,
                      x_zr_sb, h_zr_sb, h_sb, CHW,
                      SAVE_R: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CHW
    x_z = tl.load(x_zr_ptr + b * x_zr_sb + offs, mask=mask).to(ACC)
    x_r = tl.load(x_zr_ptr + b * x_zr_sb + CHW + offs, mask=mask).to(ACC)
    h_z = tl.load(h_zr_ptr + b * h_zr_sb + offs, mask=mask).to(ACC)
    h_r = tl.load(h_zr_ptr + b * h_zr_sb + CHW + offs, mask=mask).to(ACC)
    h = tl.load(h_ptr + b * h_sb + offs, mask=mask).to(ACC)
    z = tl.sigmoid(x_z + h_z)
    r = tl.sigmoid(x_r + h_r)
    out = b * CHW + offs  # outputs are contiguous (B, C, H, W)
    tl.store(z_ptr + out, z.to(z_ptr.dtype.element_ty), mask=mask)
    tl.store(rh_ptr + out, (r * h).to(rh_ptr.dtype.element_ty), mask=mask)
    if SAVE_R:
        tl.store(r_ptr + out, r.to(r_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gates_bwd_kernel(g_z_ptr, g_rh_ptr, z_ptr, r_ptr, h_ptr, g_zr_ptr, g_h_ptr,
                      h_sb, CHW, ACC: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CHW
    idx = b * CHW + offs
    g_z = tl.load(g_z_ptr + idx, mask=mask).to(ACC)
    g_rh = tl.load(g_rh_ptr + idx, mask=mask).to(ACC)
    z = tl.load(z_ptr + idx, mask=mask).to(ACC)
    r = tl.load(r_ptr + idx, mask=mask).to(ACC)
    h = tl.load(h_ptr + b * h_sb + offs, mask=mask).to(ACC)
    g_z_pre = g_z * z * (1.0 - z)
    g_r_pre = g_rh * h * r * (1.0 - r)
    zr = b * 2 * CHW + offs
    tl.store(g_zr_ptr + zr, g_z_pre.to(g_zr_ptr.dtype.element_ty), mask=mask)
    tl.store(g_zr_ptr + zr + CHW, g_r_pre.to(g_zr_ptr.dtype.element_ty), mask=mask)
    tl.store(g_h_ptr + idx, (g_rh * r).to(g_h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _update_fwd_kernel(x_n_ptr, h_n_ptr, z_ptr, h_ptr, h_new_ptr, n_ptr,
                       x_n_sb, h_n_sb, z_sb, h_sb, CHW,
                       SAVE_N: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CHW
    x_n = tl.load(x_n_ptr + b * x_n_sb + offs, mask=mask).to(ACC)
    h_n = tl.load(h_n_ptr + b * h_n_sb + offs, mask=mask).to(ACC)
    z = tl.load(z_ptr + b * z_sb + offs, mask=mask).to(ACC)
    h = tl.load(h_ptr + b * h_sb + offs, mask=mask).to(ACC)
    n = _tanh(x_n + h_n)
    h_new = (1.0 - z) * n + z * h
    out = b * CHW + offs
    tl.store(h_new_ptr + out, h_new.to(h_new_ptr.dtype.element_ty), mask=mask)
    if SAVE_N:
        tl.store(n_ptr + out, n.to(n_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _update_bwd_kernel(g_ptr, n_ptr, z_ptr, h_ptr, g_pre_ptr, g_z_ptr, g_h_ptr,
                       z_sb, h_sb, CHW, ACC: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < CHW
    idx = b * CHW + offs
    g = tl.load(g_ptr + idx, mask=mask).to(ACC)
    n = tl.load(n_ptr + idx, mask=mask).to(ACC)
    z = tl.load(z_ptr + b * z_sb + offs, mask=mask).to(ACC)
    h = tl.load(h_ptr + b * h_sb + offs, mask=mask).to(ACC)
    g_pre = g * (1.0 - z) * (1.0 - n * n)
    tl.store(g_pre_ptr + idx, g_pre.to(g_pre_ptr.dtype.element_ty), mask=mask)
    tl.store(g_z_ptr + idx, (g * (h - n)).to(g_z_ptr.dtype.element_ty), mask=mask)
    tl.store(g_h_ptr + idx, (g * z).to(g_h_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# launch helpers


def _batch_strided(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(t', batch stride) with t' == t whose (C, H, W) part is contiguous (copied only if it is not)."""
    _, c, h, w = t.shape
    if t.stride()[1:] != (h * w, w, 1):
        t = t.contiguous()
    return t, t.stride(0)


def _check_shapes(name: str, pairs: list[tuple[str, torch.Tensor, tuple]]) -> None:
    for arg, t, shape in pairs:
        if t.dim() != 4 or tuple(t.shape) != shape:
            raise ValueError(f"{name}: {arg} must have shape {shape}, got {tuple(t.shape)}")


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _grid(chw: int, batch: int) -> tuple[int, int]:
    return (triton.cdiv(chw, BLOCK_SIZE), batch)


class _GatesFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_zr, h_zr, h):
        batch, channels, height, width = h.shape
        _check_shapes("gru_gates", [("x_zr", x_zr, (batch, 2 * channels, height, width)),
                                    ("h_zr", h_zr, (batch, 2 * channels, height, width))])
        dtype = torch.promote_types(torch.promote_types(x_zr.dtype, h_zr.dtype), h.dtype)
        x_zr, x_zr_sb = _batch_strided(x_zr)
        h_zr, h_zr_sb = _batch_strided(h_zr)
        h, h_sb = _batch_strided(h)
        z = torch.empty(h.shape, dtype=dtype, device=h.device)
        rh = torch.empty_like(z)
        save = any(ctx.needs_input_grad)
        r = torch.empty_like(z) if save else z  # z is a never-written placeholder when nothing is saved
        chw = channels * height * width
        _gates_fwd_kernel[_grid(chw, batch)](x_zr, h_zr, h, z, r, rh, x_zr_sb, h_zr_sb, h_sb, chw,
                                             SAVE_R=save, ACC=_acc_dtype(dtype), BLOCK=BLOCK_SIZE,
                                             num_warps=NUM_WARPS)
        if save:
            ctx.save_for_backward(z, r, h)
            ctx.dtypes = (x_zr.dtype, h_zr.dtype, h.dtype)
        return z, rh

    @staticmethod
    def backward(ctx, g_z, g_rh):
        z, r, h = ctx.saved_tensors
        batch, channels, height, width = z.shape
        g_z, g_rh = g_z.contiguous(), g_rh.contiguous()
        g_zr = torch.empty((batch, 2 * channels, height, width), dtype=z.dtype, device=z.device)
        g_h = torch.empty_like(z)
        chw = channels * height * width
        _gates_bwd_kernel[_grid(chw, batch)](g_z, g_rh, z, r, h, g_zr, g_h, h.stride(0), chw,
                                             ACC=_acc_dtype(z.dtype), BLOCK=BLOCK_SIZE,
                                             num_warps=NUM_WARPS)
        x_dtype, hzr_dtype, h_dtype = ctx.dtypes
        # x_zr and h_zr receive the same gradient (they are summed before the sigmoids).
        return g_zr.to(x_dtype), g_zr.to(hzr_dtype), g_h.to(h_dtype)


class _UpdateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_n, h_n, z, h):
        shape = tuple(h.shape)
        _check_shapes("gru_update", [("x_n", x_n, shape), ("h_n", h_n, shape), ("z", z, shape)])
        dtype = x_n.dtype
        for t in (h_n, z, h):
            dtype = torch.promote_types(dtype, t.dtype)
        dtypes = (x_n.dtype, h_n.dtype, z.dtype, h.dtype)
        x_n, x_n_sb = _batch_strided(x_n)
        h_n, h_n_sb = _batch_strided(h_n)
        z, z_sb = _batch_strided(z)
        h, h_sb = _batch_strided(h)
        h_new = torch.empty(shape, dtype=dtype, device=h.device)
        save = any(ctx.needs_input_grad)
        n = torch.empty_like(h_new) if save else h_new
        batch, channels, height, width = shape
        chw = channels * height * width
        _update_fwd_kernel[_grid(chw, batch)](x_n, h_n, z, h, h_new, n, x_n_sb, h_n_sb, z_sb, h_sb, chw,
                                              SAVE_N=save, ACC=_acc_dtype(dtype), BLOCK=BLOCK_SIZE,
                                              num_warps=NUM_WARPS)
        if save:
            ctx.save_for_backward(n, z, h)
            ctx.dtypes = dtypes
        return h_new

    @staticmethod
    def backward(ctx, g):
        n, z, h = ctx.saved_tensors
        batch, channels, height, width = n.shape
        g = g.contiguous()
        g_pre, g_z, g_h = torch.empty_like(n), torch.empty_like(n), torch.empty_like(n)
        chw = channels * height * width
        _update_bwd_kernel[_grid(chw, batch)](g, n, z, h, g_pre, g_z, g_h, z.stride(0), h.stride(0), chw,
                                              ACC=_acc_dtype(n.dtype), BLOCK=BLOCK_SIZE,
                                              num_warps=NUM_WARPS)
        x_dtype, hn_dtype, z_dtype, h_dtype = ctx.dtypes
        return g_pre.to(x_dtype), g_pre.to(hn_dtype), g_z.to(z_dtype), g_h.to(h_dtype)


@torch.compiler.disable  # dynamo cannot trace a Triton launch from an autograd.Function here
def gru_gates(x_zr: torch.Tensor, h_zr: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused GRU gates. x_zr, h_zr: (B, 2C, H, W) [z channels, then r]; h: (B, C, H, W).

    Returns (z, rh), both (B, C, H, W) in the promoted input dtype:
    z = sigmoid(x_z + h_z), rh = sigmoid(x_r + h_r) * h.
    """
    return _GatesFunction.apply(x_zr, h_zr, h)


@torch.compiler.disable
def gru_update(x_n: torch.Tensor, h_n: torch.Tensor, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Fused GRU state update. All inputs (B, C, H, W); returns h_new (B, C, H, W) in the promoted dtype:
    h_new = (1 - z) * tanh(x_n + h_n) + z * h."""
    return _UpdateFunction.apply(x_n, h_n, z, h)

