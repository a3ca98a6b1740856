"""Native (unsubtracted) runs: recognise them and subtract them as an angiography system does.

A run is **native** when its pixels are the raw exposures and a viewer is meant to subtract a mask:

- DICOM: ``ImageType`` names no subtraction (``SUBTRACTION``/``SUBTRACTED``/``DSA`` among its values
  mark an already subtracted run) and the header says a mask is to be subtracted: a
  ``MaskSubtractionSequence``, ``RecommendedViewingMode`` = ``SUB``, or ``NATIVE`` in ``ImageType``;
- frames, ``.npy``: only when the user says so (``dias predict --native``, or ``--subtract mask=...``).

Subtraction (``subtract``), per frame t, in the log domain (X-ray attenuation adds up in logs):

    S[t] = DISPLAY_LEVEL * exp( log I[t] - log M )       clipped to [0, 1]

I: the frame (``ContrastFrameAveraging`` = n > 1: the mean of frames t..t+n-1), M: the mask = the mean of
the mask frames (``MaskFrameNumbers`` of a ``MaskOperation`` ``AVG_SUB`` item, 1-based in the header; one
frame or the average of a range), shifted by ``MaskSubPixelShift`` (rows, columns; bilinear) when the
header gives one. ``S`` is what the DIAS release's frames are: the ratio live / mask shown on a grey
level (``DISPLAY_LEVEL``, the phantom's mid grey for no difference), vessels dark. Pixel values stored
as logarithms (``PixelIntensityRelationship`` = ``LOG``) are differenced directly. Several
``MaskSubtractionSequence`` items with ``ApplicableFrameRange`` each subtract their own mask from
their frames; frames no item covers are left out. ``TID`` (time interval differencing) is refused:
pass ``--subtract mask=N``.

``--subtract``: ``auto`` (default: subtract a native run with the mask its header names), ``never``
(take the frames as they are), ``mask=N`` / ``mask=A:B`` / ``mask=N,M`` (0-based frame indices of the
run; their mean is the mask, for any run). A native run with no mask named and none chosen is refused
with a message saying what to pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DISPLAY_LEVEL = 0.68  # grey of "no difference" (phantom: uniform in 0.62..0.75)
LOG_FLOOR = 1.0 / 65535.0  # intensities are clipped here before the log (a 16-bit run's one count)
SUBTRACTED_TYPES = {"SUBTRACTION", "SUBTRACTED", "DSA"}


@dataclass
class Subtraction:
    """What ``subtract`` does: ``items`` [(mask frames 0-based, frames it applies to 0-based or None =
    all, (row, column) sub-pixel shift or None)], ``source`` (where the masks came from),
    ``contrast_averaging`` (frames averaged per contrast frame), ``log_pixels`` (values already logs)."""

    items: list = field(default_factory=list)
    source: str = ""
    contrast_averaging: int = 1
    log_pixels: bool = False

    @property
    def mask_frames(self) -> list[int]:
        return sorted({f for masks, _, _ in self.items for f in masks})

    def record(self) -> dict:
        """The summary.json entry (frame indices 0-based)."""
        return {"done": True, "source": self.source, "mask_frames": self.mask_frames,
                "items": [{"mask_frames": list(m), "applies_to": None if a is None else list(a),
                           "sub_pixel_shift": None if s is None else list(s)} for m, a, s in self.items],
                "contrast_frame_averaging": self.contrast_averaging, "domain": "log",
                "pixel_values": "log" if self.log_pixels else "linear"}


def parse_subtract(spec: str) -> tuple[str, list[int] | str | None]:
    """``--subtract`` -> ("auto" | "never", None) or ("mask", frame spec string); ValueError otherwise."""
    spec = str(spec).strip()
    if spec in ("auto", "never"):
        return spec, None
    if spec.startswith("mask=") and spec[5:].strip():
        return "mask", spec[5:].strip()
    raise ValueError(f"--subtract {spec!r}: expected auto, never, mask=N, mask=A:B or mask=N,M (0-based frames)")


def native_reason(ds) -> str | None:
    """Why DICOM header ``ds`` is a native run that needs subtraction, or None (already subtracted / plain)."""
    if ds is None:
        return None
    image_type = {str(v).strip().upper() for v in (getattr(ds, "ImageType", None) or [])}
    if image_type & SUBTRACTED_TYPES:
        return None
    if "MaskSubtractionSequence" in ds and len(ds.MaskSubtractionSequence):
        return "MaskSubtractionSequence in the header"
    if str(getattr(ds, "RecommendedViewingMode", "") or "").strip().upper() == "SUB":
        return "RecommendedViewingMode SUB"
    if "NATIVE" in image_type:
        return "ImageType NATIVE"
    return None


def _frame_numbers(values, count: int, where: str) -> list[int]:
    """1-based header frame numbers -> 0-based indices, each checked against ``count`` frames."""
    out = []
    values = list(values) if hasattr(values, "__len__") and not isinstance(values, (str, bytes)) else [values]
    for value in values:
        index = int(value) - 1
        if not 0 <= index < count:
            raise ValueError(f"{where}: frame number {int(value)} outside the run's frames 1..{count}")
        out.append(index)
    return out


def header_subtraction(ds, num_frames: int, where: str) -> Subtraction | None:
    """The subtraction ``MaskSubtractionSequence`` of ``ds`` describes, or None when it names no mask."""
    if ds is None or "MaskSubtractionSequence" not in ds:
        return None
    items, averaging = [], 1
    for number, item in enumerate(ds.MaskSubtractionSequence, 1):
        here = f"{where}: MaskSubtractionSequence item {number}"
        operation = str(getattr(item, "MaskOperation", "") or "").strip().upper()
        if operation == "TID":
            raise ValueError(f"{here}: MaskOperation TID (time interval differencing) is not supported; "
                             "pass --subtract mask=N (0-based frame index of the mask) or --subtract never")
        if operation not in ("", "AVG_SUB"):
            raise ValueError(f"{here}: MaskOperation {operation!r} is not AVG_SUB; pass --subtract mask=N")
        if "MaskFrameNumbers" not in item or item.MaskFrameNumbers in (None, ""):
            continue
        masks = _frame_numbers(item.MaskFrameNumbers, num_frames, here + " MaskFrameNumbers")
        applies = None
        if "ApplicableFrameRange" in item and item.ApplicableFrameRange not in (None, ""):
            bounds = _frame_numbers(item.ApplicableFrameRange, num_frames, here + " ApplicableFrameRange")
            if len(bounds) % 2:
                raise ValueError(f"{here}: ApplicableFrameRange needs pairs of frame numbers, got {len(bounds)}")
            applies = sorted({f for a, b in zip(bounds[::2], bounds[1::2]) for f in range(a, b + 1)})
        shift = None
        if "MaskSubPixelShift" in item and item.MaskSubPixelShift not in (None, ""):
            shift = tuple(float(v) for v in item.MaskSubPixelShift)
            if len(shift) != 2:
                raise ValueError(f"{here}: MaskSubPixelShift needs (row, column), got {list(shift)}")
        averaging = max(averaging, int(getattr(item, "ContrastFrameAveraging", 1) or 1))
        items.append((masks, applies, shift))
    if not items:
        return None
    log_pixels = str(getattr(ds, "PixelIntensityRelationship", "") or "").strip().upper() == "LOG"
    return Subtraction(items, "MaskSubtractionSequence", averaging, log_pixels)


def plan(spec: str, *, ds, num_frames: int, native_flag: bool, where: str, frame_indices=None,
         header_masks: bool = True) -> tuple[Subtraction | None, str | None]:
    """(subtraction to do or None, why the run counts as native or None) for ``--subtract spec``.

    ``ds``: the first DICOM header or None; ``native_flag``: ``--native``; ``frame_indices``: the
    parser of frame specs (``frames.parse_indices``); ``header_masks``: whether the header's
    MaskSubtractionSequence counts the run's frames (a multi-frame instance). A native run without a mask (none in the header,
    none chosen) is a ValueError saying what to pass.
    """
    mode, value = parse_subtract(spec)
    reason = native_reason(ds) or ("--native" if native_flag else None)
    if mode == "never":
        return None, reason
    if mode == "mask":
        masks = frame_indices(value, num_frames, f"--subtract mask={value}")
        log_pixels = ds is not None and str(getattr(ds, "PixelIntensityRelationship", "") or "").upper() == "LOG"
        return Subtraction([(masks, None, None)], f"--subtract mask={value}", 1, log_pixels), reason or "--subtract mask"
    if reason is None:
        return None, None
    found = header_subtraction(ds, num_frames, where) if header_masks else None
    if found is None:
        raise ValueError(f"{where}: native (unsubtracted) run ({reason}) but no mask frame is named "
                         "(no MaskFrameNumbers in a MaskSubtractionSequence); pass --subtract mask=N with the "
                         "0-based index of a frame before the contrast arrives (mask=A:B averages a range), or "
                         "--subtract never if the frames are already subtracted")
    return found, reason


def subtract(frames_thw: np.ndarray, sub: Subtraction) -> tuple[np.ndarray, list[int]]:
    """Subtracted frames float64 (T', H, W) in [0, 1] and their 0-based indices in the run.

    frames_thw: float (T, H, W) in [0, 1], proportional to the detected intensity (or to its log when
    ``sub.log_pixels``). Every frame an item applies to is subtracted (a mask frame becomes an even
    grey); frames no item covers are left out. Rule: module docstring.
    """
    from scipy import ndimage

    frames = np.asarray(frames_thw, dtype=np.float64)
    count = frames.shape[0]
    if sub.contrast_averaging > 1:
        n = sub.contrast_averaging
        cumulative = np.concatenate([np.zeros((1, *frames.shape[1:])), np.cumsum(frames, axis=0)])
        ends = np.minimum(np.arange(count) + n, count)
        live = (cumulative[ends] - cumulative[np.arange(count)]) / (ends - np.arange(count))[:, None, None]
    else:
        live = frames
    to_log = (lambda x: x) if sub.log_pixels else (lambda x: np.log(np.maximum(x, LOG_FLOOR)))
    out, indices = [], []
    covered = np.zeros(count, bool)
    for masks, applies, shift in sub.items:
        mask_log = to_log(frames[masks].mean(axis=0))
        if shift is not None and any(shift):
            mask_log = ndimage.shift(mask_log, shift, order=1, mode="nearest")
        for t in (range(count) if applies is None else applies):
            if covered[t]:
                continue
            covered[t] = True
            indices.append(t)
            out.append(np.clip(DISPLAY_LEVEL * np.exp(to_log(live[t]) - mask_log), 0.0, 1.0))
    order = np.argsort(indices)
    return np.stack([out[i] for i in order]), [indices[i] for i in order]
