"""Strong data augmentation for pseudo-labelled RPST patches (paper §IV-C, docs/REFERENCE.md §8).

Applied *after* the weak pipeline (crop, flips, rot90) in this order, as the reference's
``strong_seq_DA``: per-frame random contrast -> elastic deformation -> Cutout -> Gaussian blur ->
additive Gaussian noise. Everything is numpy on one patch:

- ``image_THW``: float32 (T, P, P), z-scored frames
- ``maps``: dict name -> uint8 (P, P) label maps (``label``/``pseudo`` in {0, 1}, scribbles in
  {0, 1, 255}); only the elastic deformation moves pixels, and it moves every map with the image.

Randomness comes only from the ``numpy.random.Generator`` passed in, which the loader seeds per
rank and worker (the reference deep-copies one RandomState into every worker, so all workers replay
the same augmentation sequence; seeding here from the caller's generator avoids that).

Deviation from the reference (documented, switchable): the reference Cutout fires when
``U(0,1) > 0.2``, i.e. 80 % of the time although its parameter reads "prob=0.2". We apply it with
probability 0.2; ``faithful_cutout=True`` restores the reference's 80 %.

Label maps under the elastic deformation follow the reference (``label_interp="any"``): bilinear
interpolation, then every positive value is vessel (its BlobsToMask), so thin vessels survive the
warp; ``"linear"`` (threshold 0.5) and ``"nearest"`` are the alternatives.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# Parameters of the reference strong pipeline (docs/REFERENCE.md §8).
CONTRAST_PROB = 0.5
CONTRAST_ALPHA_RANGE = (0.5, 1.5)
CONTRAST_CLIP = (-1.0, 1.0)
ELASTIC_PROB = 0.2
ELASTIC_ALPHA = 2000.0
ELASTIC_SIGMA = 50.0
CUTOUT_PROB = 0.2
CUTOUT_HOLES = 1
CUTOUT_SIDE_PX = 16
BLUR_PROB = 0.5
BLUR_SIGMA_RANGE = (0.1, 2.0)
NOISE_PROB = 0.1
NOISE_STD_RANGE = (0.0, 0.1)

LABEL_INTERPOLATIONS = ("any", "linear", "nearest")  # bilinear then > 0 | bilinear then >= 0.5 | nearest
BINARY_VALUES = (0, 1)


def random_contrast(image_THW: np.ndarray, rng: np.random.Generator, *, prob: float = CONTRAST_PROB) -> np.ndarray:
    """With probability ``prob``, scale each frame by its own alpha ~ U(0.5, 1.5) about 0 and clip to [-1, 1].

    image_THW float32 (T, P, P) -> float32 (T, P, P). The clip is the reference's (on z-scored data it
    saturates dark vessels). Signs are preserved, so a label given by ``image > 0`` stays valid.
    """
    if rng.random() >= prob:
        return image_THW
    alpha_T = rng.uniform(*CONTRAST_ALPHA_RANGE, size=image_THW.shape[0]).astype(np.float32)
    return np.clip(image_THW * alpha_T[:, None, None], *CONTRAST_CLIP).astype(np.float32, copy=False)


ELASTIC_NOISES = ("normal", "uniform")


def elastic_displacement(shape_HW: tuple[int, int], rng: np.random.Generator, *, alpha: float = ELASTIC_ALPHA,
                         sigma: float = ELASTIC_SIGMA, noise: str = "normal") -> tuple[np.ndarray, np.ndarray]:
    """In-plane displacement field (dy, dx), each float32 (H, W): Gaussian-smoothed noise times alpha.

    noise: "normal" (standard normal, as the reference's ElasticDeformation draws it, the default) or
    "uniform" (U(-1, 1), this project's earlier draw: std 0.58 of the normal's, so a 0.58x smaller
    displacement; docs/DECISIONS.md, "Elastic deformation noise")."""
    if noise not in ELASTIC_NOISES:
        raise ValueError(f"elastic noise {noise!r}: choose one of {', '.join(ELASTIC_NOISES)}")
    draw = (lambda: rng.standard_normal(size=shape_HW)) if noise == "normal" else \
        (lambda: rng.uniform(-1.0, 1.0, size=shape_HW))
    dy = ndimage.gaussian_filter(draw(), sigma, mode="reflect") * alpha
    dx = ndimage.gaussian_filter(draw(), sigma, mode="reflect") * alpha
    return dy.astype(np.float32), dx.astype(np.float32)


def warp_with_field(image_THW: np.ndarray, maps: dict[str, np.ndarray], dy_HW: np.ndarray, dx_HW: np.ndarray, *,
                    label_interp: str = "any") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sample every frame and every map at (y + dy, x + dx) with reflect padding.

    Frames: cubic spline (order 3), the same field for every frame (no motion across time).
    Maps with values in {0, 1}: ``label_interp="any"`` = bilinear, then any positive value is 1 (the
    reference), ``"linear"`` = bilinear then threshold 0.5, or ``"nearest"``. Maps with other values (scribbles holding 255 = unannotated) always use nearest,
    because interpolating between 1 and 255 has no meaning.
    Returns float32 (T, P, P) and a new dict of uint8 (P, P) maps.
    """
    if label_interp not in LABEL_INTERPOLATIONS:
        raise ValueError(f"strong_augment: label_interp={label_interp!r}; valid: {', '.join(LABEL_INTERPOLATIONS)}")
    height, width = dy_HW.shape
    grid_y, grid_x = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32),
                                 indexing="ij")
    coords = np.stack([grid_y + dy_HW, grid_x + dx_HW])
    warped = np.empty_like(image_THW, dtype=np.float32)
    for t, frame in enumerate(image_THW):
        warped[t] = ndimage.map_coordinates(frame, coords, order=3, mode="reflect")
    warped_maps = {}
    for name, map_HW in maps.items():
        is_binary = bool(np.isin(map_HW, BINARY_VALUES).all())
        if is_binary and label_interp in ("any", "linear"):
            soft = ndimage.map_coordinates(map_HW.astype(np.float32), coords, order=1, mode="reflect")
            warped_maps[name] = ((soft > 0) if label_interp == "any" else (soft >= 0.5)).astype(np.uint8)
        else:
            warped_maps[name] = ndimage.map_coordinates(map_HW, coords, order=0, mode="reflect").astype(np.uint8)
    return warped, warped_maps


def cutout(image_THW: np.ndarray, rng: np.random.Generator, *, num_holes: int = CUTOUT_HOLES,
           side_px: int = CUTOUT_SIDE_PX) -> np.ndarray:
    """Zero ``num_holes`` squares of side ``side_px`` (centre uniform in the patch, clipped at the border) on all frames.

    image_THW float32 (T, P, P) -> float32 (T, P, P). Labels are left as they are (reference behaviour).
    """
    out = image_THW.copy()
    height, width = image_THW.shape[-2:]
    for _ in range(num_holes):
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        y0, y1 = max(cy - side_px // 2, 0), min(cy + side_px // 2, height)
        x0, x1 = max(cx - side_px // 2, 0), min(cx + side_px // 2, width)
        out[:, y0:y1, x0:x1] = 0.0
    return out


def gaussian_blur(image_THW: np.ndarray, rng: np.random.Generator, *, prob: float = BLUR_PROB) -> np.ndarray:
    """With probability ``prob``, blur the whole (T, P, P) volume with sigma ~ U(0.1, 2) (also across frames,
    as the reference's skimage call does). float32 in, float32 out."""
    if rng.random() >= prob:
        return image_THW
    sigma = rng.uniform(*BLUR_SIGMA_RANGE)
    return ndimage.gaussian_filter(image_THW, sigma, mode="nearest", truncate=4.0).astype(np.float32, copy=False)


def additive_noise(image_THW: np.ndarray, rng: np.random.Generator, *, prob: float = NOISE_PROB) -> np.ndarray:
    """With probability ``prob``, add N(0, std) per voxel with std ~ U(0, 0.1). float32 (T, P, P) in and out."""
    if rng.random() >= prob:
        return image_THW
    std = rng.uniform(*NOISE_STD_RANGE)
    return (image_THW + rng.normal(0.0, std, size=image_THW.shape)).astype(np.float32)


def strong_augment(image_THW: np.ndarray, maps: dict[str, np.ndarray] | list[np.ndarray], rng: np.random.Generator,
                   *, faithful_cutout: bool = False, label_interp: str = "any",
                   ) -> tuple[np.ndarray, dict[str, np.ndarray] | list[np.ndarray]]:
    """The RPST strong pipeline on one weakly augmented patch; inputs are not modified.

    image_THW: float32 (T, P, P); maps: uint8 (P, P) maps moved together with the image, as a dict
    name -> map or as a list (as the loader passes them); the same kind is returned.
    rng: the caller's numpy Generator (seeded per rank and worker by the loader).
    faithful_cutout: apply Cutout 80 % of the time as the reference code does (default: 20 %, as documented).
    label_interp: "any" (bilinear, any positive value is vessel: the reference), "linear" (bilinear +
    threshold 0.5) or "nearest" for {0, 1} maps under elastic deformation.
    Returns (float32 (T, P, P), maps as given: dict or list of uint8 (P, P)).
    """
    if image_THW.ndim != 3:
        raise ValueError(f"strong_augment: image must be (T, P, P), got shape {image_THW.shape}")
    as_list = not isinstance(maps, dict)
    named = {str(i): m for i, m in enumerate(maps)} if as_list else dict(maps)
    for name, map_HW in named.items():
        if map_HW.shape != image_THW.shape[1:]:
            raise ValueError(f"strong_augment: map {name!r} has shape {map_HW.shape}, image frames are "
                             f"{image_THW.shape[1:]}")
    image = random_contrast(image_THW.astype(np.float32, copy=True), rng)
    if rng.random() < ELASTIC_PROB:
        dy_HW, dx_HW = elastic_displacement(image.shape[1:], rng)
        image, named = warp_with_field(image, named, dy_HW, dx_HW, label_interp=label_interp)
    cutout_fires = rng.random() > CUTOUT_PROB if faithful_cutout else rng.random() < CUTOUT_PROB
    if cutout_fires:
        image = cutout(image, rng)
    image = gaussian_blur(image, rng)
    image = additive_noise(image, rng)
    return image, (list(named.values()) if as_list else named)
