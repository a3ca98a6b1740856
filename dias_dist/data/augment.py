"""DIAS weak augmentation (docs/REFERENCE.md §8): H flip (p=0.5), W flip (p=0.5), rot90 k in {0,1,2,3}.

The same geometric parameters go to the image and to every label map, so targets stay aligned.
"""
from __future__ import annotations

import numpy as np


def weak_params(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parameters of ``count`` weak augmentations: flip_h bool (n,), flip_w bool (n,), k int (n,).

    Reference semantics: a flip happens when U(0,1) > 0.5; k ~ U{0, 1, 2, 3}.
    """
    flips = rng.random((count, 2)) > 0.5
    return flips[:, 0], flips[:, 1], rng.integers(0, 4, count)


def apply_weak(array: np.ndarray, flip_h: bool, flip_w: bool, k: int) -> np.ndarray:
    """Flip/rotate the last two axes of ``array`` (..., P, P); returns a view (no copy)."""
    h_axis, w_axis = array.ndim - 2, array.ndim - 1
    if flip_h:
        array = np.flip(array, axis=h_axis)
    if flip_w:
        array = np.flip(array, axis=w_axis)
    if k:
        array = np.rot90(array, int(k), axes=(h_axis, w_axis))
    return array

