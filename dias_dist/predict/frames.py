"""Which frames of a run go into the model (``dias predict --frames``), and their times.

Frame indices are 0-based positions in the run as read (a native run: before subtraction, so the
mask is frame 0 when it was acquired first). ``--frames``:

- ``all`` (default): every frame (a subtracted native run: every frame but its mask frames). More than
  ``WARN_FRAMES`` frames (14: the longest arterial phase of the DIAS release) draws a warning, since
  they are all resampled to the model's T and late frames would be mixed into the arterial ones;
- ``a:b`` (Python slice: a..b-1; ``a:`` to the end, ``:b`` from the start), a list ``0,2,3``, or both
  (``0:3,5``);
- ``auto``: from the series' own contrast-time curve (``arterial_frames``).

Automatic rule (``arterial_frames``), on the subtracted frames S (T, H, W), vessels dark:

1. opacification E[t] = max(0, B - S[t]) per pixel, B = the per-pixel maximum over the frames (the
   least opaque state: what never changes, a catheter or a misregistration edge, gives E = 0);
2. arterial pixels A = the ``ARTERIAL_SHARE`` (1 %) of pixels with the largest peak E (the large
   arteries: they carry the densest contrast) and the arterial curve a[t] = mean of E[t] over A;
3. arrival t0 = first frame with a[t] >= ``HALF`` (0.5) x max a; end of the arterial plateau t1 = the
   last frame before a[t] falls below that again (the full width at half maximum of the arterial
   contrast-time curve: the wash-out frames in which the arteries are still at least half as opaque
   as at their peak are kept, as the DIAS release keeps them);
4. the frames t0..t1. Fewer than 2 frames of contrast (max a below ``MIN_CONTRAST``) is a ValueError
   (nothing to choose from: give ``--frames``).

Capillary blush and veins come after the arterial wash-out, so they fall outside t0..t1.
"""
from __future__ import annotations

import numpy as np

WARN_FRAMES = 14
ARTERIAL_SHARE = 0.01
HALF = 0.5
MIN_CONTRAST = 1e-3


def parse_indices(spec: str, count: int, where: str = "--frames") -> list[int]:
    """``a:b`` / ``a:`` / ``:b`` / ``0,2,3`` / mixed -> sorted unique 0-based indices within ``count``
    frames; ValueError naming ``where`` and the spec otherwise."""
    out: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if ":" in part:
                start, _, stop = part.partition(":")
                a = int(start) if start.strip() else 0
                b = int(stop) if stop.strip() else count
                if a < 0 or b < 0:
                    raise ValueError
                if not a < b <= count:
                    raise IndexError
                out.extend(range(a, b))
            else:
                index = int(part)
                if index < 0:
                    raise ValueError
                if index >= count:
                    raise IndexError
                out.append(index)
        except IndexError:
            raise ValueError(f"{where}: {part!r} is outside the run's frames 0..{count - 1} "
                             f"({count} frames; a:b stops before b)") from None
        except ValueError:
            raise ValueError(f"{where}: {part!r} is not a frame index, a:b range or list such as 0,2,3 "
                             "(0-based, non-negative)") from None
    return sorted(set(out))


def contrast_curve(frames_thw: np.ndarray) -> np.ndarray:
    """Arterial opacification a[t] float64 (T,) of subtracted frames (rule: module docstring, 1-2)."""
    frames = np.asarray(frames_thw, dtype=np.float64)
    enhancement = np.maximum(frames.max(axis=0)[None] - frames, 0.0)  # (T, H, W)
    peak = enhancement.max(axis=0).ravel()
    count = max(1, int(round(ARTERIAL_SHARE * peak.size)))
    arterial = np.argpartition(peak, peak.size - count)[-count:]
    return enhancement.reshape(len(frames), -1)[:, arterial].mean(axis=1)


def arterial_frames(frames_thw: np.ndarray, where: str = "--frames auto") -> list[int]:
    """0-based indices t0..t1 of the arterial phase of subtracted frames (T, H, W) (module docstring)."""
    curve = contrast_curve(frames_thw)
    top = float(curve.max())
    if len(curve) < 2 or top < MIN_CONTRAST:
        raise ValueError(f"{where}: no contrast-time curve to choose from ({len(curve)} frames, peak "
                         f"opacification {top:.2g}); give --frames a:b")
    start = int(np.argmax(curve >= HALF * top))
    below = np.flatnonzero(curve[start:] < HALF * top)
    end = start + int(below[0]) - 1 if below.size else len(curve) - 1
    return list(range(start, end + 1))


def frame_times_ms(frame_time, count: int) -> list[float] | None:
    """Acquisition time of each frame in ms from the first (DICOM FrameTime: ms per frame; a
    FrameTimeVector: increments, the first 0), or None when unknown."""
    if frame_time is None:
        return None
    if isinstance(frame_time, (list, tuple)):
        if len(frame_time) != count:
            return None
        return [round(float(v), 3) for v in np.cumsum(frame_time)]
    return [round(float(frame_time) * t, 3) for t in range(count)]
