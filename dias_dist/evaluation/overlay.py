"""Error overlays coloured as the paper's Fig. 7 and PNG/NPY writers for evaluation outputs.

True positive white, false negative red, false positive green, true negative black.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dias_dist.atomic import atomic_write

TP_COLOUR = (255, 255, 255)
FN_COLOUR = (255, 0, 0)
FP_COLOUR = (0, 255, 0)


def error_overlay(pred_bin: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """bool (H, W) prediction and {0,1} (H, W) ground truth -> uint8 RGB (H, W, 3) Fig. 7 overlay."""
    pred_bin = np.asarray(pred_bin).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred_bin.shape != gt.shape or pred_bin.ndim != 2:
        raise ValueError(f"overlay needs two 2-D maps of one shape, got {pred_bin.shape} and {gt.shape}")
    rgb = np.zeros(pred_bin.shape + (3,), np.uint8)
    rgb[pred_bin & gt] = TP_COLOUR
    rgb[~pred_bin & gt] = FN_COLOUR
    rgb[pred_bin & ~gt] = FP_COLOUR
    return rgb


def write_png(array: np.ndarray, path: str | Path) -> None:
    """Write uint8 (H, W) or (H, W, 3) as PNG, atomically."""
    with atomic_write(path, "wb") as handle:
        Image.fromarray(np.ascontiguousarray(array)).save(handle, format="PNG")


def write_probability(prob: np.ndarray, path: str | Path) -> None:
    """Write a float32 (H, W) probability map as ``.npy`` (what ``dias score`` reads back), atomically."""
    with atomic_write(path, "wb") as handle:
        np.save(handle, np.asarray(prob, dtype=np.float32))
