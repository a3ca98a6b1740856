"""Scribble generators: RDFA (docs/REFERENCE.md §9) and SALE-like manual strokes.

Output encoding everywhere: uint8 (H, W) with 0 = background scribble, 1 = vessel scribble,
255 = not annotated.

RDFA ("random drawing based on full annotation"), per class c in {0 background, 1 vessel} of a
binary ground truth G:
1. M = (G == c); if |M| > ``erosion_min_area`` px, erode with the 3x3 all-ones element k times,
   k = ceil(a + u (b - a)), u ~ U[0, 1), (a, b) = ``erosion_range`` (reference main: (1, 2) -> k = 2).
2. S = skeletonize(M_eroded, method="lee") **> 0** (the reference's ``== 255`` is empty on
   scikit-image >= 0.23, which returns bool).
3. Background: the scribble is S as is.
4. Vessel: one random walk per 8-connected skeleton component (the largest plus every one with
   > ``min_component_px`` px), started at the first end point in row-major order; at every step a
   random unmarked 8-neighbour (marks shared across components) until none is left; bifurcations
   snapshot the marks, and if the last end point touches the last bifurcation the snapshot is
   restored. The walk is iterative (the reference recursion crashes on long paths). Then one
   3x3 dilation, then, if |M| > ``shift_min_area``, a random shift of up to ``max_shift_px`` and a
   rotation of up to ``max_rotation_deg`` about the image centre (reference: 6 px, 15 deg; set
   both to 0 to keep strokes on the vessels), then masking by M.

Image size (``scale``, docs/DECISIONS.md "Scribble thresholds and the image size"): the reference's
thresholds are pixel counts of an 800x800 DSA image. With ``scale="area"`` (default) they describe the
same structure at any size: for an (H, W) label, the areas (``erosion_min_area``, ``shift_min_area``)
are multiplied by a = H W / ``reference_size_px``^2 and the lengths (``min_component_px``, a skeleton
pixel count, and ``max_shift_px``, rounded to whole pixels) by sqrt(a); at 800x800 both factors are 1,
the reference exactly. ``scale="absolute"`` uses the counts as given at every size (the reference
run on another size; what every scribble of this project was before). Not scaled: the erosion depth
(1-2 iterations, already the smallest step) and the rotation (an angle). The SALE-like generator
is this project's own (no reference size): its ``min_radius_px`` and ``background_margin_px`` stay
absolute by default; ``scale="area"`` scales them as lengths of an 800 px image.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

UNANNOTATED = 255
_EIGHT = ndimage.generate_binary_structure(2, 2)  # 3x3 all ones
_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
SCALES = ("area", "absolute")  # how pixel thresholds follow the image size (module docstring)
REFERENCE_SIZE_PX = 800  # the side of the DSA images the reference's thresholds were set for


def size_factors(shape: tuple[int, ...], scale: str = "area",
                 reference_size_px: int = REFERENCE_SIZE_PX) -> tuple[float, float]:
    """(area factor, length factor) for a label of ``shape`` (H, W): (H W / ref^2, its square root) under
    ``scale="area"``, (1, 1) under ``"absolute"``; ValueError naming a bad ``scale`` or size."""
    if scale not in SCALES:
        raise ValueError(f"scribble scale {scale!r}: choose one of {', '.join(SCALES)}")
    if reference_size_px <= 0:
        raise ValueError(f"reference_size_px {reference_size_px}: must be > 0")
    if scale == "absolute":
        return 1.0, 1.0
    area = shape[0] * shape[1] / float(reference_size_px) ** 2
    return area, math.sqrt(area)


def rdfa_thresholds(shape: tuple[int, ...], *, scale: str = "area", reference_size_px: int = REFERENCE_SIZE_PX,
                    erosion_min_area: float = 900, shift_min_area: float = 1000, min_component_px: float = 15,
                    max_shift_px: int = 6) -> dict:
    """The RDFA thresholds ``rdfa_scribble`` applies to a label of ``shape`` (H, W): areas x the area
    factor, ``min_component_px`` x the length factor, ``max_shift_px`` x the length factor rounded half
    up to an int (``size_factors``). At 800x800, or with ``scale="absolute"``, the values as given."""
    area, length = size_factors(shape, scale, reference_size_px)
    return {"erosion_min_area": erosion_min_area * area, "shift_min_area": shift_min_area * area,
            "min_component_px": min_component_px * length, "max_shift_px": int(math.floor(max_shift_px * length + 0.5))}  # half up


def _skeleton(mask: np.ndarray, erosion_range, erosion_min_area, rng) -> tuple[np.ndarray, np.ndarray]:
    from skimage.morphology import skeletonize

    eroded = mask
    if mask.sum() > erosion_min_area:
        low, high = erosion_range
        iterations = int(math.ceil(low + rng.random() * (high - low)))
        if iterations > 0:
            eroded = ndimage.binary_erosion(mask, structure=_EIGHT, iterations=iterations)
    return skeletonize(eroded, method="lee") > 0, eroded


def _random_walk(skeleton: np.ndarray, component_masks: list[np.ndarray], rng) -> np.ndarray:
    """Iterative RDFA walk (docs/REFERENCE.md §9) on a 1-px padded skeleton; returns bool marks."""
    marks = np.zeros_like(skeleton, dtype=bool)
    snapshot = None
    bifurcations: list[tuple[int, int]] = []
    end = None
    for component in component_masks:
        rows, cols = np.nonzero(component)  # row-major order
        counts = ndimage.convolve(component.astype(np.uint8), _EIGHT.astype(np.uint8), mode="constant") - 1
        ends = np.flatnonzero(counts[rows, cols] == 1)
        k = int(ends[0]) if ends.size else 0
        current = (int(rows[k]), int(cols[k]))
        marks[current] = True
        at_start = True
        while True:
            r, c = current
            options = [(r + dr, c + dc) for dr, dc in _OFFSETS if component[r + dr, c + dc] and not marks[r + dr, c + dc]]
            if not options:
                end = current
                break
            if len(options) > 1 and not at_start:
                bifurcations.append(current)
                snapshot = marks.copy()
            current = options[int(rng.integers(len(options)))]
            marks[current] = True
            at_start = False
    if end is not None and bifurcations and snapshot is not None:
        br, bc = bifurcations[-1]
        if max(abs(end[0] - br), abs(end[1] - bc)) <= 1:
            marks = snapshot
    return marks


def _shift_rotate(stroke: np.ndarray, max_shift_px: int, max_rotation_deg: float, rng) -> np.ndarray:
    height, width = stroke.shape
    dx, dy = (int(rng.integers(-max_shift_px, max_shift_px + 1)) for _ in range(2)) if max_shift_px > 0 else (0, 0)
    shifted = np.zeros_like(stroke)
    src = stroke[max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)]
    shifted[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    if max_rotation_deg > 0:
        angle = rng.uniform(-max_rotation_deg, max_rotation_deg)
        shifted = ndimage.rotate(shifted.astype(np.uint8), angle, reshape=False, order=0, mode="constant") > 0
    return shifted


def rdfa_scribble(label: np.ndarray, rng: np.random.Generator, *, erosion_range=(1, 2), erosion_min_area: int = 900,
                  min_component_px: int = 15, shift_min_area: int = 1000, max_shift_px: int = 6,
                  max_rotation_deg: float = 15.0, scale: str = "area",
                  reference_size_px: int = REFERENCE_SIZE_PX) -> np.ndarray:
    """RDFA scribble of a binary label uint8/bool (H, W) -> uint8 (H, W) {0, 1, 255} (module doc). The
    pixel thresholds are those of an 800x800 image, scaled to (H, W) by ``scale`` ("area" | "absolute")."""
    label = np.asarray(label) > 0
    if label.ndim != 2:
        raise ValueError(f"rdfa_scribble expects a 2-D label, got shape {label.shape}")
    sized = rdfa_thresholds(label.shape, scale=scale, reference_size_px=reference_size_px,
                            erosion_min_area=erosion_min_area, shift_min_area=shift_min_area,
                            min_component_px=min_component_px, max_shift_px=max_shift_px)
    erosion_min_area, shift_min_area = sized["erosion_min_area"], sized["shift_min_area"]
    min_component_px, max_shift_px = sized["min_component_px"], sized["max_shift_px"]
    out = np.full(label.shape, UNANNOTATED, dtype=np.uint8)
    background = ~label
    bg_skeleton, _ = _skeleton(background, erosion_range, erosion_min_area, rng)
    out[bg_skeleton] = 0
    if not label.any():
        return out
    skeleton, _ = _skeleton(label, erosion_range, erosion_min_area, rng)
    padded = np.pad(skeleton, 1)
    components, count = ndimage.label(padded, structure=_EIGHT)
    if count:
        sizes = ndimage.sum(padded, components, index=np.arange(1, count + 1))
        chosen = [int(np.argmax(sizes)) + 1] + [i + 1 for i in np.flatnonzero(sizes > min_component_px)]
        marks = _random_walk(padded, [components == i for i in chosen], rng)[1:-1, 1:-1]
        stroke = ndimage.binary_dilation(marks, structure=_EIGHT)
        if label.sum() > shift_min_area and (max_shift_px > 0 or max_rotation_deg > 0):
            stroke = _shift_rotate(stroke, max_shift_px, max_rotation_deg, rng)
        out[stroke & label] = 1
    return out


def _smooth_curve(start, length, rng, curvature_std=0.08):
    n = max(int(length), 2)
    turns = ndimage.gaussian_filter1d(rng.normal(0.0, curvature_std, n), 4.0) * 4.0
    angles = rng.uniform(0, 2 * math.pi) + np.cumsum(turns)
    return start + np.cumsum(np.stack([np.sin(angles), np.cos(angles)], axis=1), axis=0)


def sale_scribble(label: np.ndarray, rng: np.random.Generator, *, min_radius_px: float = 2.0,
                  vessel_fraction: float = 0.5, background_strokes: int = 8, background_margin_px: float = 4.0,
                  scale: str = "absolute", reference_size_px: int = REFERENCE_SIZE_PX) -> np.ndarray:
    """SALE-like manual scribble of a binary label (H, W) -> uint8 (H, W) {0, 1, 255}.

    Vessel: pieces of the centreline of vessels at least ``min_radius_px`` thick (what an
    annotator strokes), keeping about ``vessel_fraction`` of that centreline in runs, 3 px wide.
    Background: ``background_strokes`` smooth free-hand curves kept only farther than
    ``background_margin_px`` from any vessel, 3 px wide. Both lengths in px as given (``scale=
    "absolute"``, default), or as lengths of an 800x800 image times the length factor (``"area"``).
    """
    from skimage.morphology import skeletonize

    label = np.asarray(label) > 0
    if label.ndim != 2:
        raise ValueError(f"sale_scribble expects a 2-D label, got shape {label.shape}")
    _, length = size_factors(label.shape, scale, reference_size_px)
    min_radius_px, background_margin_px = min_radius_px * length, background_margin_px * length
    height, width = label.shape
    out = np.full(label.shape, UNANNOTATED, dtype=np.uint8)
    inside_dist = ndimage.distance_transform_edt(label)
    centre = skeletonize(label) & (inside_dist >= min_radius_px)
    if not centre.any():
        centre = skeletonize(label)
    if centre.any():
        pieces, count = ndimage.label(centre, structure=_EIGHT)
        keep = rng.random(count + 1) < vessel_fraction
        keep[0] = False
        if count and not keep[1:].any():
            keep[1 + int(rng.integers(count))] = True
        stroke = ndimage.binary_dilation(keep[pieces], structure=_EIGHT) & label
        out[stroke] = 1
    outside_dist = ndimage.distance_transform_edt(~label)
    canvas = np.zeros(label.shape, dtype=bool)
    for _ in range(background_strokes):
        start = np.array([rng.uniform(0, height), rng.uniform(0, width)])
        curve = np.rint(_smooth_curve(start, rng.uniform(0.2, 0.6) * max(height, width), rng)).astype(int)
        ok = (curve[:, 0] >= 0) & (curve[:, 0] < height) & (curve[:, 1] >= 0) & (curve[:, 1] < width)
        canvas[curve[ok, 0], curve[ok, 1]] = True
    canvas = ndimage.binary_dilation(canvas, structure=_EIGHT) & (outside_dist > background_margin_px)
    out[canvas] = 0
    return out
