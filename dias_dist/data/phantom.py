"""Synthetic DSA sequences that behave like the DIAS release (arterial phase of a carotid injection).

Model, in order (docs/PHANTOM.md has the reasoning and the measured behaviour):

1. **Tree.** A branching 2D projected arterial tree grown breadth-first from an internal carotid
   trunk entering from the lower border (radius 6.5-8.5 px at 800x800, i.e. ICA 13-17 px wide at
   ~0.3 mm/px). Each bifurcation splits r0 into r1, r2 with Murray's law r0^3 = r1^3 + r2^3 (random
   asymmetry) at Murray-optimal angles plus noise; branches stop below 0.8 px. Centrelines are
   tortuous and sampled every 1 px, spread over three depth layers whose projections add.
2. **Haemodynamics.** In the conducting arteries (ICA, M1/A1, M2; radius >= r_c = r_ica / 3) the mean
   velocity stays at the ICA's, as transcranial Doppler measures (MCA and ACA at or above the ICA);
   in thinner branches flow ~ r^3 (Murray), so mean velocity ~ r. A segment of length L and radius r
   delays the bolus by L / v(r), the front moving at the centreline velocity (twice the mean in
   Poiseuille flow). Large proximal vessels fill within about a frame, thin distal branches later.
   The injection (1-2 s) reaches each point as a plateau, convolved with an exponential dispersion
   whose time constant grows with the delay; wash-out after the plateau.
3. **Framing.** A fixed frame rate (default 4 frames/s, as the release). As in the release, the
   pre-contrast frames are dropped: the first frame is the first acquisition in which the ICA (the
   trunk segment in view) is opaque along its length. The arterial phase lasts while the injection
   keeps the ICA opaque: the last frame is the first acquisition after the plateau ends at the root
   (wash-out begins there), or the first at which the most distal branch in view is opaque if that is
   later. So the number of frames T follows the injection length and the transit time (clipped to
   [min_frames, max_frames]).
4. **Image formation (log domain, as DSA subtracts logs).** Live minus mask = vessels (-mu x line
   integral x opacity, overlaps add) + the anatomy moved by the patient's motion (shift + rotation
   between mask and run, log-normal in size between patients, plus a drift during the run) minus the
   unmoved one: edge-like misregistration wherever bone is crossed, and a projection crosses both
   tables of the skull (with their diploe texture) over the whole brain, plus the skull base in the
   lower field. A 4-5 F catheter full of undiluted contrast in the proximal ICA (dark, not labelled).
   Quantum noise (std ~ sqrt of the attenuation) in every live frame and in the one mask subtracted
   from all of them, electronic noise, a mild detector blur, window/level and 8-bit quantisation.
   Optional (``late_phase=True``): capillary blush and early veins in the last frames, not labelled.
5. **Ground truth** = the union over frames of the vessel pixels whose opacity is >= 0.5 in that
   frame (``visible``), each pixel within max(radius, 0.75 px) of a centreline.

Everything is drawn from one ``numpy.random.Generator``: one seed, one sequence, bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

REFERENCE_SIZE = 800  # the geometry constants below are for 800x800 frames (~0.3 mm per px)
MM_PER_PX = 0.3
NUM_LAYERS = 3
MIN_RADIUS_PX = 0.8
MAX_POINTS = 60000  # cap on centreline samples (keeps the generator fast)
OPACIFIED = 0.5  # opacity at which a vessel pixel counts as shown in a frame (ground truth)
ICA_VELOCITY_MM_S = (300.0, 500.0)  # mean ICA velocity during injection
# Mean velocity stays at the ICA's in the conducting arteries (ICA, M1/A1, M2: transcranial Doppler
# measures MCA/ACA mean velocities at or above the ICA's) and falls with the radius (Murray: flow ~ r^3,
# velocity ~ r) only in branches thinner than CONDUCTING_RADIUS x the trunk radius (ICA ~2.25 mm ->
# 0.75 mm, i.e. vessels under ~1.5 mm wide: distal M3/M4, cortical branches).
CONDUCTING_RADIUS = 1.0 / 3.0
FRONT_FACTOR = 2.0  # the contrast front travels at the centreline velocity: 2 x mean (Poiseuille)
INJECTION_S = (1.0, 2.0)
DISPERSION_S = 0.06  # rise time constant at the root; grows by DISPERSION_PER_S per second of delay
DISPERSION_PER_S = 0.12
WASHOUT_S = (0.3, 0.6)  # decay time constant after the plateau
PHASE_GAP_S = 1.0  # extended runs: pre-contrast and late frames 1 s apart (the slow rate of a variable-rate run)
NATIVE_I0 = 60000.0  # native runs: detected intensity of an unattenuated ray (16-bit counts)


@dataclass
class PhantomSequence:
    """One synthetic sequence.

    frames      uint8 (T, H, W), T in [min_frames, max_frames]; vessels dark on a grey background
    label       uint8 {0,1} (H, W): union of ``visible`` over frames
    frame_times float (T,): acquisition times in s after the contrast reaches the trunk
    visible     bool (T, H, W): vessel pixels whose opacity is >= 0.5 in that frame
    radius      float32 (H, W): radius in px of the (widest) vessel covering the pixel, 0 elsewhere
    injection_s float: length of the injection's plateau at the trunk (s); the arterial phase ends with it
    arterial    (first, stop): the arterial frames are frames[first:stop] (all of them unless the run was
                extended with ``pre_frames`` / ``late_frames``); ``label`` and ``visible`` cover only these
    native      uint16 (1 + T, H, W) or None: the unsubtracted run as the angiography system stores it
                (``native=True``): frame 0 is the mask exposure, frame 1 + t the live exposure of frames[t];
                detected intensity NATIVE_I0 * exp(-log attenuation), detector blur, no window/level
    """

    frames: np.ndarray
    label: np.ndarray
    frame_times: np.ndarray
    visible: np.ndarray
    radius: np.ndarray
    injection_s: float
    arterial: tuple[int, int] | None = None
    native: np.ndarray | None = None


@dataclass
class _Tree:
    xy: np.ndarray  # float (N, 2) centreline points (x, y)
    radius: np.ndarray  # float (N,)
    path_length: np.ndarray  # float (N,) px from the root along the tree
    delay: np.ndarray  # float (N,) sum of ds * v_trunk / v(r) along the path (px at trunk velocity)
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


def slowness(radius: np.ndarray, trunk_radius: float) -> np.ndarray:
    """v_trunk / v(r): 1 in the conducting arteries, r_c / r below r_c = CONDUCTING_RADIUS x trunk radius."""
    return np.maximum(1.0, CONDUCTING_RADIUS * trunk_radius / np.asarray(radius, dtype=np.float64))


def grow_tree(size: int, rng: np.random.Generator) -> _Tree:
    """Grow one arterial tree for a ``size`` x ``size`` frame (see module doc, steps 1-2)."""
    scale = size / REFERENCE_SIZE
    trunk_radius = rng.uniform(6.5, 8.5) * float(np.clip(scale, 0.3, 1.0)) ** 0.5
    # the ICA starts near the lower border heading up; the catheter runs below it (the CCA, not opacified)
    start = np.array((rng.uniform(0.35, 0.65) * size, size * rng.uniform(0.82, 0.95)), float)
    angle = -math.pi / 2 + rng.uniform(-0.35, 0.35)
    queue = [(start, angle, trunk_radius, 0.0, 0.0, int(rng.integers(NUM_LAYERS)), 0)]
    xy, radius, path, delay, layer = [], [], [], [], []
    total = 0
    head = 0
    while head < len(queue) and total < MAX_POINTS:
        start, angle, r0, path0, delay0, lay, depth = queue[head]
        head += 1
        length = (rng.uniform(25, 45) + rng.uniform(6, 12) * r0) * max(scale, 0.15)
        points, end_angle = _tortuous_path(start, angle, length, rng, curvature_std=0.035)
        n = len(points)
        r = np.linspace(r0, r0 * 0.93, n)
        xy.append(points)
        radius.append(r)
        path.append(path0 + np.arange(n, dtype=float))
        seg_delay = delay0 + np.concatenate([[0.0], np.cumsum(slowness(r[1:], trunk_radius))])
        delay.append(seg_delay)
        layer.append(np.full(n, lay))
        total += n
        end = points[-1]
        if not (-0.1 * size < end[0] < 1.1 * size and -0.1 * size < end[1] < 1.1 * size):
            continue  # left the field of view
        r_end = r0 * 0.93
        ratio = rng.uniform(0.55 if depth < 2 else 0.35, 1.0)  # asymmetry r2 / r1 (ICA -> MCA/ACA: similar)
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
            queue.append((end, child_angle, child_r, path0 + n, seg_delay[-1], child_layer, depth + 1))
    return _Tree(np.concatenate(xy), np.concatenate(radius), np.concatenate(path), np.concatenate(delay),
                 np.concatenate(layer))


def bolus_opacity(since_arrival: np.ndarray, injection_s: float, rise_s: np.ndarray | float,
                  washout_s: float) -> np.ndarray:
    """Opacity in [0, 1] of a 1-2 s injection seen ``since_arrival`` s after it reaches a point.

    The injection is a plateau of ``injection_s`` convolved with an exponential dispersion of time
    constant ``rise_s``; after the plateau it decays with ``washout_s``. 0 before arrival.
    Broadcasts its array arguments.
    """
    s = np.asarray(since_arrival, dtype=np.float64)
    rise = np.asarray(rise_s, dtype=np.float64)
    filling = 1.0 - np.exp(-np.clip(s, 0.0, None) / rise)
    plateau_end = 1.0 - np.exp(-injection_s / rise)
    washing = plateau_end * np.exp(-np.clip(s - injection_s, 0.0, None) / washout_s)
    return np.where(s <= 0, 0.0, np.where(s < injection_s, filling, washing))


def time_to_opacity(level: float, rise_s: np.ndarray | float) -> np.ndarray:
    """Seconds after arrival at which ``bolus_opacity`` first reaches ``level`` (< plateau)."""
    return -np.asarray(rise_s) * math.log(1.0 - level)


def _smooth_noise(size: int, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """float32 (size, size) Gaussian-filtered white noise, scaled to unit std."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def anatomy(size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (size, size) log attenuation of skull and soft tissue (0 = least dense), as a projection
    sees it: the calvarium is a shell, so both tables lie over the whole brain (chord 2 x thickness at
    the centre, rising to the tangential rim), with a trabecular (diploe) texture wherever bone is
    crossed; a dense skull-base ridge (petrous bone) crosses the lower part of the field, where the ICA
    enters; soft-tissue variation and fine texture. Its misregistration makes the subtraction artefacts."""
    scale = size / REFERENCE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = size * rng.uniform(0.4, 0.6), size * rng.uniform(0.45, 0.65)
    ax, ay = size * rng.uniform(0.45, 0.6), size * rng.uniform(0.5, 0.65)
    rho2 = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
    thickness = rng.uniform(0.05, 0.09)  # shell thickness / head radius (6-11 mm)
    inner2 = (1.0 - thickness) ** 2
    chord = np.sqrt(np.clip(1.0 - rho2, 0.0, None)) - np.sqrt(np.clip(inner2 - rho2, 0.0, None))
    chord = ndimage.gaussian_filter(chord / thickness, max(1.5 * scale, 0.5))  # 1 at the centre, ~sqrt(2/t) at the rim
    diploe = _smooth_noise(size, rng, max(3.0 * scale, 0.7))
    bone = rng.uniform(0.3, 0.5) * chord * (1.0 + 0.3 * diploe)
    # skull base: a plate across the lower field (petrous ridge), sharp-edged, textured
    slope = rng.uniform(-0.35, 0.35)
    across = (yy - size * rng.uniform(0.62, 0.8) - slope * (xx - cx)) / math.sqrt(1.0 + slope * slope)
    half_width, edge = size * rng.uniform(0.015, 0.035), max(1.5 * scale, 0.5)
    plate = special.expit((half_width - np.abs(across)) / edge)
    base = rng.uniform(0.4, 0.8) * plate * (1.0 + 0.4 * _smooth_noise(size, rng, max(4.0 * scale, 0.8)))
    soft = _smooth_noise(size, rng, max(60.0 * scale, 3.0))
    return (bone + base + 0.15 * soft + 0.04 * _smooth_noise(size, rng, max(6.0 * scale, 1.0))).astype(np.float32)


def _rigid_warp(image: np.ndarray, dy: float, dx: float, theta: float) -> np.ndarray:
    """Sample float (H, W) at a small rotation ``theta`` (rad) about the centre plus (dy, dx) px; bilinear."""
    height, width = image.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    cos, sin = math.cos(theta), math.sin(theta)
    src_y = cy + cos * (yy - cy) - sin * (xx - cx) - dy
    src_x = cx + sin * (yy - cy) + cos * (xx - cx) - dx
    return ndimage.map_coordinates(image, [src_y, src_x], order=1, mode="nearest").astype(np.float32)


def _catheter(size: int, tree: _Tree, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Centreline float (n, 2) and radius of a catheter from the lower border to its tip in the ICA."""
    root = tree.xy[0]
    tip_index = int(rng.uniform(0.2, 0.6) * np.argmax(tree.radius < tree.radius[0] * 0.94))
    tip = tree.xy[max(tip_index, 1)]
    entry = np.array((root[0] + rng.uniform(-0.08, 0.08) * size, size + 2.0))
    below = np.linspace(entry, root, max(int(np.hypot(*(root - entry))), 2))
    inside = tree.xy[:max(tip_index, 1)] + rng.uniform(-0.3, 0.3, 2) * tree.radius[0]
    # 4-5 F diagnostic catheter (outer 1.3-1.7 mm): a ~1 mm lumen full of contrast, radius ~1.6 px at 800
    lumen = rng.uniform(1.4, 1.8) * float(np.clip(size / REFERENCE_SIZE, 0.3, 1.0)) ** 0.5
    return np.concatenate([below, inside]), max(lumen, 0.6)


def _draw_tubes(size: int, xy: np.ndarray, radius: np.ndarray):
    """Pixels near a set of centreline points: flat pixel ids (M,), nearest point (M,) and chord (M,)."""
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < size) & (xy[:, 1] >= 0) & (xy[:, 1] < size)
    mine = np.flatnonzero(inside)
    if mine.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    cols = np.clip(np.round(xy[mine, 0]).astype(int), 0, size - 1)
    rows = np.clip(np.round(xy[mine, 1]).astype(int), 0, size - 1)
    order = np.argsort(radius[mine], kind="stable")  # wider vessels win shared pixels
    index_map = np.full((size, size), -1, dtype=np.int64)
    index_map[rows[order], cols[order]] = mine[order]
    reach = float(radius[mine].max()) + 1.5
    dist, (near_r, near_c) = ndimage.distance_transform_edt(index_map < 0, return_indices=True)
    cand = np.flatnonzero(dist.ravel() <= reach)
    point = index_map[near_r.ravel()[cand], near_c.ravel()[cand]]
    pr, pc = np.divmod(cand, size)
    d = np.hypot(pc - xy[point, 0], pr - xy[point, 1])
    r_eff = np.maximum(radius[point], 0.75)
    chord = 2.0 * np.sqrt(np.clip(r_eff ** 2 - d ** 2, 0.0, None))
    keep = chord > 0
    return cand[keep], point[keep], chord[keep]


def generate_sequence(size: int, rng: np.random.Generator, *, min_frames: int = 4, max_frames: int = 14,
                      frame_rate: float = 4.0, motion_px: float = 1.0, noise: float = 0.02,
                      late_phase: bool = False, pre_frames: int = 0, late_frames: int = 0,
                      native: bool = False) -> PhantomSequence:
    """One synthetic DSA sequence of ``size`` x ``size`` frames; see the module doc and ``PhantomSequence``.

    ``motion_px``: median patient motion between mask and live frames in px of an 800x800 frame (0.3 mm
    per px; scaled with the image like every length here, so a smaller image of the same head sees the
    same motion in mm; 0 = perfect registration);
    ``noise``: quantum noise std (log units) at the least dense anatomy; ``late_phase``: capillary
    blush and early veins in the last frames (not labelled, hard negatives).
    ``pre_frames`` / ``late_frames``: extend the run by that many frames before the arterial phase (no
    contrast yet) and after it (arterial wash-out while capillary blush and early veins fill, as in
    ``late_phase`` but only after the arterial frames), at ``PHASE_GAP_S`` intervals as a variable-rate
    protocol acquires them (mask phase and venous phase at 1 frame/s); ``arterial`` says which are arterial.
    ``native``: also return the unsubtracted run (``PhantomSequence.native``). The defaults give the
    sequence of earlier versions bit for bit.
    """
    if size < 32:
        raise ValueError(f"phantom size must be >= 32 px, got {size}")
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"phantom frame range must satisfy 1 <= min <= max, got [{min_frames}, {max_frames}]")
    if not 0 < frame_rate <= 30:
        raise ValueError(f"phantom frame rate must be in (0, 30] frames/s, got {frame_rate}")
    tree = grow_tree(size, rng)
    length_scale = max(size / REFERENCE_SIZE, 0.15)  # px of this image per px at 800
    velocity = FRONT_FACTOR * rng.uniform(*ICA_VELOCITY_MM_S) / MM_PER_PX * length_scale  # trunk front, px/s
    arrival = tree.delay / velocity  # s
    rise = DISPERSION_S + DISPERSION_PER_S * arrival
    injection, washout = rng.uniform(*INJECTION_S), rng.uniform(*WASHOUT_S)
    shown_at = arrival + time_to_opacity(OPACIFIED, rise)  # first time each point is opaque
    in_view = (tree.xy[:, 0] >= 0) & (tree.xy[:, 0] < size) & (tree.xy[:, 1] >= 0) & (tree.xy[:, 1] < size)
    period = 1.0 / frame_rate
    trunk = np.flatnonzero((tree.path_length == np.arange(len(tree.path_length))) & in_view)  # first segment
    ica_shown = float(shown_at[trunk].max()) if trunk.size else float(shown_at[0])
    first = ica_shown + float(rng.uniform(0.0, period))  # first acquisition with the whole ICA in view opaque
    last_needed = float(shown_at[in_view].max()) if in_view.any() else first
    # the arterial phase lasts as long as the injection keeps the ICA opaque: the run ends with the first
    # acquisition after the plateau ends at the root (wash-out starts there), or later if a distal branch
    # is still filling; so T follows the bolus as well as the transit time
    phase_end = max(last_needed, injection)
    num_frames = int(np.clip(math.ceil((phase_end - first) / period - 1e-9) + 1, min_frames, max_frames))
    arterial_frames = num_frames
    num_frames = pre_frames + arterial_frames + late_frames
    frame_times = np.concatenate([first - PHASE_GAP_S * np.arange(pre_frames, 0, -1),
                                  first + period * np.arange(arterial_frames),
                                  first + period * (arterial_frames - 1) + PHASE_GAP_S * np.arange(1, late_frames + 1)])
    opacity = bolus_opacity(frame_times[None, :] - arrival[:, None], injection, rise[:, None], washout)  # (N, T)

    pixels = size * size
    line_integral = np.zeros((num_frames, pixels), dtype=np.float32)
    visible = np.zeros((num_frames, pixels), dtype=bool)
    radius_map = np.zeros(pixels, dtype=np.float32)
    for lay in range(NUM_LAYERS):
        mine = np.flatnonzero(tree.layer == lay)
        if mine.size == 0:
            continue
        cand, local, chord = _draw_tubes(size, tree.xy[mine], tree.radius[mine])
        point = mine[local]
        line_integral[:, cand] += (chord[:, None] * opacity[point]).T.astype(np.float32)
        visible[:, cand] |= (opacity[point] >= OPACIFIED).T
        np.maximum.at(radius_map, cand, tree.radius[point].astype(np.float32))
    label = visible[pre_frames:pre_frames + arterial_frames].any(axis=0)
    radius_map[~label] = 0.0

    # patient motion, (dy, dx, theta) per frame: an offset between the mask and the run (the head moves
    # between the mask exposure and the injection) plus a drift during the run. Its size varies between
    # patients (log-normal around motion_px: most keep still, a few move several times as much). The
    # anatomy moves by offset + drift; vessels, catheter and label share the run's coordinates (they move
    # by the drift only, which stays sub-pixel), so the label is where the frames show the vessels.
    amplitude = motion_px * (size / REFERENCE_SIZE) * math.exp(rng.normal(0.0, 0.7))  # px of this image
    offset = rng.normal(0.0, amplitude, 3)
    drift = np.cumsum(rng.normal(0.0, min(amplitude, motion_px * size / REFERENCE_SIZE) / 4, (num_frames, 3)),
                      axis=0)
    offset[2] *= 1.0 / max(size, 1)  # rotation (rad) that moves the border by ~ the shift
    drift[:, 2] *= 1.0 / max(size, 1)
    body = anatomy(size, rng)
    mu = rng.uniform(0.12, 0.18)  # log attenuation per px of fully opacified vessel
    vessels = mu * line_integral.reshape(num_frames, size, size)
    cath_xy, cath_r = _catheter(size, tree, rng)
    cand, _, chord = _draw_tubes(size, cath_xy, np.full(len(cath_xy), cath_r))
    catheter = np.zeros(pixels, np.float32)
    # contrast-filled: undiluted in the catheter, diluted by the blood flow in the ICA (~1.3-2x denser)
    np.maximum.at(catheter, cand, (mu * rng.uniform(1.3, 2.0) * chord).astype(np.float32))
    catheter = catheter.reshape(size, size)
    if late_phase or late_frames:
        if late_frames:  # only after the arterial frames: half in the first late frame, full from the second
            after = frame_times - frame_times[pre_frames + arterial_frames - 1]
            late = np.clip(after / (2 * PHASE_GAP_S), 0.0, 1.0)[:, None, None]
        else:
            late = np.clip((frame_times - frame_times[-1]) * frame_rate + 2.0, 0.0, 2.0)[:, None, None] / 2.0
        blush = np.clip(_smooth_noise(size, rng, max(20.0 * size / REFERENCE_SIZE, 2.0)), 0, None)
        veins = generate_sequence_veins(size, rng)
        vessels = vessels + late * (0.08 * blush + veins)[None]
    level = rng.uniform(0.62, 0.75)  # window/level: the display grey of zero difference
    frames = np.empty((num_frames, size, size), dtype=np.uint8)
    quantum = noise * np.exp(0.5 * body)  # photon noise grows with the attenuation it passed
    # the mask is one exposure (or the mean of 2 or 4) subtracted from every frame: its noise is the same
    # in all frames, so neither a projection over frames nor a network that sees them all averages it out
    mask = body + rng.standard_normal((size, size), dtype=np.float32) * (quantum / math.sqrt(rng.choice((1, 2, 4))))
    moved_body = _rigid_warp(body, *offset) if motion_px > 0 else body
    raw = np.empty((num_frames + 1, size, size), dtype=np.uint16) if native else None
    if native:
        raw[0] = _detected(mask)
    for t in range(num_frames):
        # DSA subtracts logs: live (contrast + moved anatomy) minus mask (anatomy, catheter without contrast)
        live = moved_body + catheter + vessels[t]
        if motion_px > 0:
            live = _rigid_warp(live, *drift[t])
        log_diff = mask - live + rng.standard_normal((size, size), dtype=np.float32) * quantum
        if native:
            raw[t + 1] = _detected(mask - log_diff)  # the live exposure, its quantum noise included
        intensity = ndimage.gaussian_filter(level * np.exp(log_diff), 0.6, mode="nearest")
        intensity += rng.standard_normal((size, size), dtype=np.float32) * np.float32(0.006)  # electronic
        frames[t] = np.clip(np.rint(intensity * 255.0), 0, 255).astype(np.uint8)
    visible = visible.reshape(num_frames, size, size)[pre_frames:pre_frames + arterial_frames]
    return PhantomSequence(frames, label.reshape(size, size).astype(np.uint8), frame_times, visible,
                           radius_map.reshape(size, size), injection, (pre_frames, pre_frames + arterial_frames), raw)


def _detected(log_attenuation: np.ndarray) -> np.ndarray:
    """uint16 (H, W) detected intensity NATIVE_I0 * exp(-attenuation) after the detector blur."""
    intensity = ndimage.gaussian_filter(NATIVE_I0 * np.exp(-np.asarray(log_attenuation, np.float64)), 0.6,
                                        mode="nearest")
    return np.clip(np.rint(intensity), 1, 65535).astype(np.uint16)


def generate_sequence_veins(size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (size, size) log attenuation of a few thin early-draining veins (late phase, not labelled)."""
    out = np.zeros(size * size, np.float32)
    for _ in range(int(rng.integers(2, 5))):
        start = rng.uniform(0.1, 0.9, 2) * size
        points, _ = _tortuous_path(start, rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.5) * size, rng, 0.02)
        cand, _, chord = _draw_tubes(size, points, np.full(len(points), rng.uniform(1.0, 2.5)))
        np.maximum.at(out, cand, (0.1 * chord).astype(np.float32))
    return out.reshape(size, size)


def sequence_rng(seed: int, seq_id: int, *stream: int) -> np.random.Generator:
    """Independent generator of sequence ``seq_id`` under data-set seed ``seed`` (order-free, parallel-safe);
    ``stream`` ids give further independent generators of the same sequence (e.g. its scribbles)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(seq_id), *map(int, stream)]))
