"""Mask clean-up and measurements of ``dias predict``.

``--min-size``: connected components (8-connected) of the mask smaller than ``N px`` or ``X mm2``
(at the isocentre spacing, ``dias_dist.predict.calibration``) are removed. ``X mm2`` on a series
without a pixel spacing is a ValueError naming it.

Lengths: the centreline length of the mask is the number of its skeleton pixels (scikit-image's
``skeletonize``, the one clDice uses) times the mean pixel spacing.
"""
from __future__ import annotations

import re

import numpy as np

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(px|mm2|mm²)\s*$")


def parse_min_size(spec: str | None) -> tuple[float, str] | None:
    """``--min-size`` ``20px`` / ``1.5mm2`` -> (value, "px" | "mm2"); None for None / "0"."""
    if spec is None or str(spec).strip() in ("", "0"):
        return None
    match = _SIZE.match(str(spec))
    if not match:
        raise ValueError(f"--min-size {spec!r}: expected a size such as 20px or 1.5mm2")
    return float(match.group(1)), "mm2" if match.group(2) != "px" else "px"


def remove_small(mask_hw: np.ndarray, min_px: float) -> tuple[np.ndarray, int, int]:
    """(mask without components under ``min_px`` pixels, components removed, pixels removed)."""
    from scipy import ndimage

    mask = np.asarray(mask_hw, dtype=bool)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), int))
    if count == 0:
        return mask, 0, 0
    sizes = np.bincount(labels.ravel())
    small = np.flatnonzero(sizes < min_px)
    small = small[small > 0]
    removed = np.isin(labels, small)
    return mask & ~removed, int(small.size), int(removed.sum())


def centreline_px(mask_hw: np.ndarray) -> int:
    """Skeleton pixels of the mask."""
    from skimage.morphology import skeletonize

    return int(skeletonize(np.asarray(mask_hw, dtype=bool)).sum())
