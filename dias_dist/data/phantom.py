"""Synthetic DSA sequences that look and behave like DIAS data.

Model, in order:
1. **Tree.** A branching 2D projected arterial tree grown breadth-first from a trunk entering at
   the image border. Trunk radius ~8-10 px at 800x800 (scaled mildly with the image size), each
   bifurcation splits radius r0 into r1, r2 with Murray's law r0^3 = r1^3 + r2^3 (random
   asymmetry), Murray-optimal branching angles plus noise, and branches stop below ~0.8 px.
   Centrelines are tortuous (direction = integrated, smoothed random curvature) and sampled every
   1 px. Branches are spread over three depth layers whose projections add, so vessels cross and
   overlap.
2. **Contrast transport.** Each centreline point gets an arrival time proportional to its path
   length from the root; its opacity follows a gamma-variate bolus curve. Frames sample a window
   that starts early (only proximal vessels filled) and ends late (proximal vessels washed out,
   distal ones filled), so no single frame shows the whole tree. T is drawn in [4, 14].
3. **Image formation.** Projected thickness of each vessel (chord length through a cylinder)
   times opacity gives the line integral; Beer-Lambert ``I = I_bg exp(-mu L)`` makes vessels dark on
   a bright background as in DSA. Added: a slowly varying low-frequency subtraction residue,
   quantum noise (std proportional to sqrt(I)), a mild detector blur and optional sub-pixel
   inter-frame motion. Frames are quantised to uint8.
4. **Ground truth** = union of the vessels opacified (peak opacity >= 0.5) in any frame, each
   pixel within max(radius, 0.75 px) of the centreline.

Everything is drawn from one ``numpy.random.Generator``: one seed, one sequence, bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

REFERENCE_SIZE = 800  # the geometry constants below are for 800x800 frames
NUM_LAYERS = 3
MIN_RADIUS_PX = 0.8
MAX_POINTS = 60000  # cap on centreline samples (keeps the generator fast)
OPACIFIED = 0.5  # peak opacity above which a vessel counts as shown (ground truth)
VISIBLE_ATTENUATION = 0.05  # mu * line integral at which a pixel counts as visible in a frame


@dataclass
class PhantomSequence:
    """One synthetic sequence.

    frames    uint8 (T, H, W), T in [min_frames, max_frames]
    label     uint8 {0,1} (H, W): union of vessels opacified in any frame
    frame_times float (T,): sampling times of the frames (bolus units, root arrival = 0)
    visible   bool (T, H, W): pixels whose vessels attenuate >= 5 % in that frame (before noise)
    """

    frames: np.ndarray
    label: np.ndarray
    frame_times: np.ndarray
    visible: np.ndarray


@dataclass
class _Tree:
    xy: np.ndarray  # float (N, 2) centreline points (x, y)
    radius: np.ndarray  # float (N,)
    path_length: np.ndarray  # float (N,) px from the root along the tree
    layer: np.ndarray  # int (N,)


def _tortuous_path(start, angle, length, rng, curvature_std):
    """Centreline of one segment: float (n, 2) points 1 px apart and the final direction angle."""
    n = max(int(length), 2)
    white = rng.normal(0.0, curvature_std, n + 24)
    kernel = np.exp(-0.5 * (np.arange(-12, 13) / 5.0) ** 2)
    curvature = np.convolve(white, kernel / kernel.sum() * 3.0, mode="valid")[:n]
    angles = angle + np.cumsum(curvature)
    steps = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    points = start + np.cumsum(steps, axis=0) - steps[0]
    return points, float(angles[-1])


def grow_tree(size: int, rng: np.random.Generator) -> _Tree:
    """Grow one arterial tree for a ``size`` x ``size`` frame (see module doc, step 1)."""
    scale = size / REFERENCE_SIZE
    trunk_radius = rng.uniform(8.0, 10.0) * float(np.clip(scale, 0.3, 1.0)) ** 0.5
    side = rng.integers(4)  # trunk enters from a random border, heading inwards
    offset = rng.uniform(0.3, 0.7) * size
    start, angle = {0: ((offset, -2.0), math.pi / 2), 1: ((offset, size + 1.0), -math.pi / 2),
                    2: ((-2.0, offset), 0.0), 3: ((size + 1.0, offset), math.pi)}[int(side)]
    angle += rng.uniform(-0.3, 0.3)
    queue = [(np.array(start, float), angle, trunk_radius, 0.0, int(rng.integers(NUM_LAYERS)), 0)]
    xy, radius, path, layer = [], [], [], []
    total = 0
    head = 0
    while head < len(queue) and total < MAX_POINTS:
        start, angle, r0, path0, lay, depth = queue[head]
        head += 1
        length = (rng.uniform(25, 45) + rng.uniform(6, 12) * r0) * max(scale, 0.15)
        points, end_angle = _tortuous_path(start, angle, length, rng, curvature_std=0.035)
        n = len(points)
        xy.append(points)
        radius.append(np.linspace(r0, r0 * 0.93, n))
        path.append(path0 + np.arange(n, dtype=float))
        layer.append(np.full(n, lay))
        total += n
        end = points[-1]
        if not (-0.1 * size < end[0] < 1.1 * size and -0.1 * size < end[1] < 1.1 * size):
            continue  # left the field of view
        r_end = r0 * 0.93
        ratio = rng.uniform(0.35, 1.0)  # asymmetry r2 / r1
        r1 = r_end / (1.0 + ratio ** 3) ** (1.0 / 3.0)  # Murray: r_end^3 = r1^3 + r2^3
        r2 = ratio * r1
        cos1 = (r_end ** 4 + r1 ** 4 - r2 ** 4) / (2 * r_end ** 2 * r1 ** 2)
        cos2 = (r_end ** 4 + r2 ** 4 - r1 ** 4) / (2 * r_end ** 2 * r2 ** 2)
        theta1 = math.acos(float(np.clip(cos1, -1, 1))) + rng.normal(0, 0.12)
        theta2 = math.acos(float(np.clip(cos2, -1, 1))) + rng.normal(0, 0.12)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        for child_r, child_angle in ((r1, end_angle + sign * theta1), (r2, end_angle - sign * theta2)):
            if child_r < MIN_RADIUS_PX:
                continue
            child_layer = int(rng.integers(NUM_LAYERS)) if depth < 3 else lay
            queue.append((end, child_angle, child_r, path0 + n, child_layer, depth + 1))
    return _Tree(np.concatenate(xy), np.concatenate(radius), np.concatenate(path), np.concatenate(layer))


def gamma_variate(t: np.ndarray, time_to_peak: float, alpha: float = 4.0) -> np.ndarray:
    """Bolus opacity in [0, 1] at time ``t`` after arrival (0 before arrival, 1 at the peak)."""
    x = np.clip(t / time_to_peak, 0.0, None)
    return x ** alpha * np.exp(alpha * (1.0 - x))


def _low_frequency_field(size, rng, cycles=3.0, components=6):
    """float32 (size, size) smooth random field in [-1, 1]: a sum of plane waves of <= ``cycles`` periods."""
    coords = np.arange(size, dtype=np.float32) / size
    field = np.zeros((size, size), dtype=np.float32)
    for _ in range(components):
        fy, fx = rng.uniform(-cycles, cycles, 2) * 2 * np.pi
        phase = rng.uniform(0, 2 * np.pi)
        amplitude = rng.uniform(0.3, 1.0)
        wave_y, wave_x = fy * coords + phase, fx * coords  # cos(a + b) = cos a cos b - sin a sin b
        field += amplitude * (np.outer(np.cos(wave_y), np.cos(wave_x)) - np.outer(np.sin(wave_y), np.sin(wave_x)))
    return field / max(float(np.abs(field).max()), 1e-6)


def _shift_bilinear(image, dy, dx):
    """Shift float (H, W) by (dy, dx) px with bilinear interpolation and edge extension."""
    height, width = image.shape
    pad = int(np.ceil(max(abs(dy), abs(dx)))) + 1
    padded = np.pad(image, pad, mode="edge")
    iy, ix = int(np.floor(-dy)), int(np.floor(-dx))
    fy, fx = -dy - iy, -dx - ix

    def window(oy, ox):
        return padded[pad + iy + oy:pad + iy + oy + height, pad + ix + ox:pad + ix + ox + width]

    return ((1 - fy) * ((1 - fx) * window(0, 0) + fx * window(0, 1))
            + fy * ((1 - fx) * window(1, 0) + fx * window(1, 1)))


def generate_sequence(size: int, rng: np.random.Generator, *, min_frames: int = 4, max_frames: int = 14,
                      motion_px: float = 0.5, noise: float = 0.02) -> PhantomSequence:
    """One synthetic DSA sequence of ``size`` x ``size`` frames; see ``PhantomSequence``."""
    if size < 32:
        raise ValueError(f"phantom size must be >= 32 px, got {size}")
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"phantom frame range must satisfy 1 <= min <= max, got [{min_frames}, {max_frames}]")
    tree = grow_tree(size, rng)
    num_frames = int(rng.integers(min_frames, max_frames + 1))
    arrival = tree.path_length / max(tree.path_length.max(), 1.0)  # 0 at the root, 1 at the farthest tip
    time_to_peak = rng.uniform(0.25, 0.35)
    first, last = rng.uniform(0.08, 0.22), rng.uniform(1.0, 1.2)
    frame_times = np.linspace(first, last, num_frames) if num_frames > 1 else np.array([rng.uniform(0.4, 0.9)])
    opacity = gamma_variate(frame_times[None, :] - arrival[:, None], time_to_peak)  # (N, T)
    opacified = opacity.max(axis=1) >= OPACIFIED

    pixels = size * size
    line_integral = np.zeros((num_frames, pixels), dtype=np.float32)
    label = np.zeros(pixels, dtype=bool)
    inside = (tree.xy[:, 0] >= 0) & (tree.xy[:, 0] < size) & (tree.xy[:, 1] >= 0) & (tree.xy[:, 1] < size)
    cols = np.clip(np.round(tree.xy[:, 0]).astype(int), 0, size - 1)
    rows = np.clip(np.round(tree.xy[:, 1]).astype(int), 0, size - 1)
    for lay in range(NUM_LAYERS):
        mine = np.flatnonzero((tree.layer == lay) & inside)
        if mine.size == 0:
            continue
        index_map = np.full((size, size), -1, dtype=np.int64)
        index_map[rows[mine], cols[mine]] = mine
        reach = float(tree.radius[mine].max()) + 1.5
        dist, (near_r, near_c) = ndimage.distance_transform_edt(index_map < 0, return_indices=True)
        cand = np.flatnonzero(dist.ravel() <= reach)
        point = index_map[near_r.ravel()[cand], near_c.ravel()[cand]]
        pr, pc = np.divmod(cand, size)
        d = np.hypot(pc - tree.xy[point, 0], pr - tree.xy[point, 1])
        r_eff = np.maximum(tree.radius[point], 0.75)
        chord = 2.0 * np.sqrt(np.clip(r_eff ** 2 - d ** 2, 0.0, None))
        keep = chord > 0
        cand, point, chord = cand[keep], point[keep], chord[keep]
        line_integral[:, cand] += (chord[:, None] * opacity[point]).T.astype(np.float32)
        label[cand[opacified[point]]] = True

    line_integral = line_integral.reshape(num_frames, size, size)
    if motion_px > 0 and num_frames > 1:
        shifts = np.cumsum(rng.normal(0.0, motion_px / 2, (num_frames, 2)), axis=0)
        shifts = np.clip(shifts - shifts[0], -motion_px * 2, motion_px * 2)
        for f in range(1, num_frames):
            line_integral[f] = _shift_bilinear(line_integral[f], *shifts[f])
    mu = rng.uniform(0.12, 0.18)  # attenuation per px of fully opacified vessel
    background = np.float32(rng.uniform(0.6, 0.78)) + np.float32(0.05) * _low_frequency_field(size, rng, 1.5)
    residue_a, residue_b = _low_frequency_field(size, rng, 5.0), _low_frequency_field(size, rng, 5.0)
    weights = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)[:, None, None]
    visible = mu * line_integral >= VISIBLE_ATTENUATION
    intensity = background[None] * np.exp(np.float32(-mu) * line_integral)
    intensity = ndimage.gaussian_filter(intensity, sigma=(0, 0.6, 0.6), mode="nearest")
    intensity += 0.025 * ((1 - weights) * residue_a[None] + weights * residue_b[None])
    intensity += rng.standard_normal(intensity.shape, dtype=np.float32) * (
        np.float32(noise) * np.sqrt(np.clip(intensity, 0.0, None)))
    frames = np.clip(np.rint(intensity * np.float32(255.0)), 0, 255).astype(np.uint8)
    return PhantomSequence(frames, label.reshape(size, size).astype(np.uint8), frame_times, visible)


def sequence_rng(seed: int, seq_id: int, *stream: int) -> np.random.Generator:
    """Independent generator of sequence ``seq_id`` under data-set seed ``seed`` (order-free, parallel-safe);
    ``stream`` ids give further independent generators of the same sequence (e.g. its scribbles)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(seq_id), *map(int, stream)]))
