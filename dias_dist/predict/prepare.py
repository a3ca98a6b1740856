"""From a series as read to the frames the model sees: subtraction of a native run
(``dias_dist.predict.subtract``), then the choice of frames (``dias_dist.predict.frames``).

``prepare(series, subtract="auto", native=False, frames="all")`` -> ``Prepared``: the frames float64
(T', H, W) in [0, 1] and what was done, as ``summary.json`` records it:

    subtraction     {"done": true, "source", "mask_frames", "items", ...} (``Subtraction.record``), or
                    {"done": false, "native": why the run counts as native or null, "reason"}
    frames          {"spec": the --frames value, "used": 0-based run indices, "num_frames_in_run",
                     "rule": how they were chosen}
    frame_times_ms  acquisition time of each used frame in ms from the run's first frame (DICOM
                    FrameTime / FrameTimeVector), or null
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from dias_dist.predict import frames as frame_choice
from dias_dist.predict import subtract as subtraction
from dias_dist.predict.readers import Series


@dataclass
class Prepared:
    frames: np.ndarray  # float64 (T', H, W) in [0, 1]
    record: dict  # summary.json entries: subtraction, frames, frame_times_ms


def prepare(series: Series, *, subtract: str = "auto", native: bool = False, frames: str = "all") -> Prepared:
    """Subtract (when the run is native or a mask is chosen) and choose frames; ValueError naming the
    series when a native run names no mask or a frame spec does not fit (rules: the two modules)."""
    where = str(series.source)
    count = int(series.frames.shape[0])
    header = series.datasets[0] if series.datasets else None
    # MaskFrameNumbers count the frames of one multi-frame instance: a folder of single-frame files
    # needs the mask chosen (--subtract mask=N)
    plan, reason = subtraction.plan(subtract, ds=header, num_frames=count, native_flag=native, where=where,
                                    frame_indices=frame_choice.parse_indices, header_masks=series.kind == "dicom")
    if plan is not None:
        stack, indices = subtraction.subtract(series.frames, plan)
        record = {"subtraction": plan.record() | {"native": reason}}
        default = [i for i in indices if i not in plan.mask_frames] or indices
    else:
        stack, indices = np.asarray(series.frames, dtype=np.float64), list(range(count))
        record = {"subtraction": {"done": False, "native": reason,
                                  "reason": "--subtract never" if subtract == "never" else
                                  "not a native run (frames taken as subtracted)"}}
        default = indices
    position = {index: k for k, index in enumerate(indices)}
    spec = str(frames).strip()
    if spec == "all":
        used, rule = default, "all frames" + (" but the mask frames" if default != indices else "")
        if len(used) > frame_choice.WARN_FRAMES:
            warnings.warn(f"{where}: {len(used)} frames go into the resampling to the model's frames without a "
                          f"choice (more than {frame_choice.WARN_FRAMES}, the longest DIAS arterial phase); late "
                          "capillary or venous frames would be mixed in: give --frames auto or --frames a:b",
                          UserWarning, stacklevel=2)
    elif spec == "auto":
        candidates = [position[i] for i in default]
        chosen = frame_choice.arterial_frames(stack[candidates], f"{where}: --frames auto")
        used, rule = [default[k] for k in chosen], "auto: arterial phase (FWHM of the arterial contrast-time curve)"
    else:
        used, rule = frame_choice.parse_indices(spec, count, f"{where}: --frames {spec}"), "--frames"
        missing = [i for i in used if i not in position]
        if missing:
            raise ValueError(f"{where}: --frames {spec}: frames {missing[:10]} are not in the subtracted run "
                             "(no mask applies to them)")
    times = frame_choice.frame_times_ms(series.frame_time_ms, count)
    record["frames"] = {"spec": spec, "used": used, "num_frames_in_run": count, "rule": rule}
    record["frame_times_ms"] = None if times is None else [times[i] for i in used]
    return Prepared(stack[[position[i] for i in used]], record)
