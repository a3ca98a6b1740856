"""Sliding-window inference exactly as the DIAS tester (docs/REFERENCE.md §5).

The z-scored sequence (T, H, W) is zero-padded at the right and bottom by
``stride - (H - patch) % stride`` (800 -> 832 for patch 64 / stride 32: a full extra stride even
though 800 is aligned, as the reference does), cut into patch×patch tiles at ``stride``
(25 × 25 = 625 tiles for 800×800), run through the model in batches, and the vessel probabilities
of overlapping tiles are averaged (``blend="uniform"``, the reference's protocol) or weighted by a
Gaussian centred on each tile (``blend="gaussian"``: weight exp(-d^2 / 2 (P/8)^2) per axis from the
tile centre, floored at its smallest positive value, as nnU-Net blends; a tile's border pixels, where
its context is cut off, count least, so the tile grid leaves no seams) and cropped back to (H, W). An image smaller than the patch is
padded up to it; ``patch=0`` is one tile over the whole image (its longer side padded to a multiple
of ``WHOLE_IMAGE_MULTIPLE``, so that every network's down-sampling divides it).
Legend: N tiles, T frames, P patch side, H/W image height/width.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dias_dist.models import to_layout, vessel_probability

PredictFn = Callable[[torch.Tensor], torch.Tensor]
WHOLE_IMAGE_MULTIPLE = 64
BLENDS = ("uniform", "gaussian")
GAUSSIAN_SIGMA = 1.0 / 8.0  # of the tile side


def tile_weights(patch: int, blend: str) -> torch.Tensor:
    """float32 (P, P) weight of each tile pixel in the overlap blend (module docstring)."""
    if blend not in BLENDS:
        raise ValueError(f"blend {blend!r}: choose one of {', '.join(BLENDS)}")
    if blend == "uniform":
        return torch.ones(patch, patch)
    offset = torch.arange(patch, dtype=torch.float64) - (patch - 1) / 2
    axis = torch.exp(-0.5 * (offset / (GAUSSIAN_SIGMA * patch)) ** 2)
    weights = axis[:, None] * axis[None, :]
    weights = weights / weights.max()
    return weights.clamp_min(float(weights[weights > 0].min())).float()


def padded_size(size_px: int, patch: int, stride: int) -> int:
    """Side length after the reference's right/bottom zero padding (800 -> 832 for 64/32; a side
    shorter than the patch becomes at least the patch: Python's % of a negative number is positive)."""
    return max(size_px + stride - (size_px - patch) % stride, patch)  # 16 px at 64/32 would give 32 < 64


def sliding_window_probability(predict_fn: PredictFn, image_THW, *, patch: int = 64, stride: int = 32,
                               batch_size: int = 64, blend: str = "uniform") -> torch.Tensor:
    """Overlap-averaged vessel probability of a whole sequence.

    predict_fn: tiles float32 (N, T, P, P) -> vessel probability (N, P, P) (any float dtype/device).
    image_THW:  float32 (T, H, W) torch tensor or numpy array, z-scored frames, any H, W.
    patch: tile side, 0 = the whole image in one tile (``stride`` is then ignored).
    blend: "uniform" (overlap average, the paper's protocol) | "gaussian" (module docstring).
    Returns float32 (H, W) on the device of predict_fn's outputs.
    """
    image = torch.as_tensor(np.asarray(image_THW) if not torch.is_tensor(image_THW) else image_THW)
    if image.dim() != 3:
        raise ValueError(f"expected one sequence of shape (T, H, W), got {tuple(image.shape)}")
    num_frames, height, width = image.shape
    if patch == 0:
        patch = stride = -(-max(height, width) // WHOLE_IMAGE_MULTIPLE) * WHOLE_IMAGE_MULTIPLE
    if patch < 0 or stride <= 0 or stride > patch or batch_size <= 0:
        raise ValueError(f"tiling needs 0 < stride <= patch (or patch 0: whole image) and batch_size > 0, "
                         f"got patch={patch}, stride={stride}, batch_size={batch_size}")
    padded_h, padded_w = padded_size(height, patch, stride), padded_size(width, patch, stride)
    image = F.pad(image.float(), (0, padded_w - width, 0, padded_h - height))  # zero = the z-scored mean

    # (T, nH, nW, P, P) -> (nH*nW, T, P, P), row-major tile order
    tiles = image.unfold(1, patch, stride).unfold(2, patch, stride)
    num_rows, num_cols = tiles.shape[1], tiles.shape[2]
    tiles = tiles.permute(1, 2, 0, 3, 4).reshape(num_rows * num_cols, num_frames, patch, patch)

    probabilities = []
    for start in range(0, tiles.shape[0], batch_size):
        prob_NPP = predict_fn(tiles[start:start + batch_size].contiguous())
        if prob_NPP.shape != (min(batch_size, tiles.shape[0] - start), patch, patch):
            raise ValueError(f"predict_fn returned {tuple(prob_NPP.shape)} for a batch of "
                             f"{min(batch_size, tiles.shape[0] - start)} tiles of {patch}x{patch}")
        probabilities.append(prob_NPP.float())
    prob_NPP = torch.cat(probabilities)

    # fold sums overlapping tiles; dividing by the folded weights (ones: the count) averages them
    weights = tile_weights(patch, blend).to(prob_NPP.device).reshape(1, patch * patch, 1)
    columns = prob_NPP.reshape(1, -1, patch * patch).transpose(1, 2)  # (1, P*P, L)
    if blend != "uniform":
        columns = columns * weights
    summed = F.fold(columns, (padded_h, padded_w), kernel_size=patch, stride=stride)
    counts = F.fold(weights.expand_as(columns).contiguous(), (padded_h, padded_w), kernel_size=patch,
                    stride=stride)
    return (summed / counts)[0, 0, :height, :width]


def model_predict_fn(model: nn.Module, device: torch.device | str, layout: str, amp: bool = False,
                     compile: bool = False, softmax: str = "limited") -> PredictFn:
    """predict_fn for ``sliding_window_probability`` from a model returning logits (N, C, P, P).

    Moves tiles (N, T, P, P) float32 to ``device``, reshapes them to ``layout`` ("frames" /
    "sequence"), runs the model without gradients (bf16 autocast on ``device`` when ``amp``) and
    returns the vessel probability float32 (N, P, P): limited softmax (channels 0..1, the reference) or
    ``softmax="full"`` (every channel; ``models.vessel_probability``). The caller puts the model
    in eval mode. ``compile``: the forward goes through ``torch.compile`` (inductor), see
    ``compiled_forward``.
    """
    device = torch.device(device)
    use_autocast = bool(amp) and device.type in ("cuda", "cpu")
    forward = compiled_forward(model) if compile else model

    @torch.no_grad()
    def predict(tiles_NTPP: torch.Tensor) -> torch.Tensor:
        x = to_layout(tiles_NTPP.to(device, non_blocking=True), layout)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_autocast):
            logits = forward(x)
        return vessel_probability(logits, softmax)

    return predict


def compiled_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward through ``torch.compile`` (inductor; 1.13x for full-size VSS-Net's
    evaluation forward on the 2-core Xeon after about 15 s of compilation, outputs within 5e-6
    relative: benchmarks/README.md). The compiled code is cached per module, so later calls in the
    same process (every validation, every series) pay no second compilation for the same tile shape.
    A compilation that fails (no C++ compiler, an unsupported platform) warns once per module and
    falls back to the eager forward for the rest of the process (later calls do not try again): the
    outputs are the same either way."""
    if model in _COMPILE_FAILED:
        return model
    compiled = torch.compile(model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if model in _COMPILE_FAILED:
            return model(x)
        try:
            return compiled(x)
        except Exception as err:  # noqa: BLE001 — inductor raises many types; eager below raises real errors
            warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:200]}); evaluating in eager "
                          "mode (eval.compile=false avoids the attempt)", RuntimeWarning, stacklevel=2)
            _COMPILE_FAILED.add(model)
            return model(x)

    return forward


_COMPILE_FAILED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # modules whose compilation failed once
