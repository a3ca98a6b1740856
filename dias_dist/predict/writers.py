"""Outputs of one predicted series, written all-or-nothing into ``OUT/<series name>/``:

    prob.npy      float16 (H, W) vessel probability
    prob.png      8-bit probability (round(255 * p))
    mask.png      0/255 vessel mask at the threshold (DTI when the model's config asks for it)
    overlay.png   the mask in colour over the series' minimum-intensity projection (anatomy visible)
    summary.json  input, model, threshold, vessel area (pixels; mm² when the DICOM gives pixel
                  spacing), frame time, seconds taken
    seg.dcm       DICOM Segmentation (highdicom) referencing the source instance (DICOM input only)

Everything is written into a hidden temporary folder beside the target and renamed into place when
complete, so a failure leaves no partial folder (and an earlier result for the series stays).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from dias_dist.metrics import binarize
from dias_dist.predict.readers import Series

MASK_COLOUR = np.array([255, 40, 40], np.float64)
MASK_ALPHA = 0.6


def overlay_on_minip(frames_thw: np.ndarray, mask_hw: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3): the minimum-intensity projection (contrast-filled vessels are dark in
    DSA), stretched to 0..255 between its 1st and 99th percentile, with ``mask_hw`` blended in red."""
    minip = np.asarray(frames_thw, dtype=np.float64).min(axis=0)
    low, high = np.percentile(minip, [1, 99])
    gray = np.clip((minip - low) / max(high - low, 1e-12), 0, 1) * 255.0
    rgb = np.repeat(gray[..., None], 3, axis=2)
    mask = np.asarray(mask_hw, dtype=bool)
    rgb[mask] = (1 - MASK_ALPHA) * rgb[mask] + MASK_ALPHA * MASK_COLOUR
    return np.round(rgb).astype(np.uint8)


def unique_names(series_paths: list[Path]) -> list[str]:
    """Output folder names: the series' file stem / folder name, ``_2``, ``_3``... on collisions."""
    names, seen = [], set()
    for path in series_paths:
        base = (path.stem if path.is_file() else path.name) or "series"
        name, count = base, 1
        while name in seen:
            count += 1
            name = f"{base}_{count}"
        seen.add(name)
        names.append(name)
    return names


def write_series_outputs(out_dir: str | Path, series: Series, prob_hw: np.ndarray, *, threshold: float,
                         dti: bool, summary: dict) -> Path:
    """Write the files of the module docstring for one series into ``out_dir`` (replacing an
    earlier result only once everything is written); returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    prob_hw = np.asarray(prob_hw, dtype=np.float32)
    mask = binarize(prob_hw, threshold, dti)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        np.save(tmp / "prob.npy", prob_hw.astype(np.float16))
        Image.fromarray(np.round(np.clip(prob_hw, 0, 1) * 255).astype(np.uint8)).save(tmp / "prob.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / "mask.png")
        Image.fromarray(overlay_on_minip(series.frames, mask)).save(tmp / "overlay.png")
        area_px = int(mask.sum())
        summary = {**summary, "threshold": threshold, "dti": dti, "vessel_area_px": area_px,
                   "vessel_area_mm2": None, "pixel_spacing_mm": None, "frame_time_ms": series.frame_time_ms}
        if series.pixel_spacing_mm is not None:
            row, column = series.pixel_spacing_mm
            summary.update(pixel_spacing_mm=[row, column], vessel_area_mm2=area_px * row * column)
        if series.datasets:
            try:
                write_dicom_seg(series, mask, tmp / "seg.dcm")
                summary["dicom_seg"] = "seg.dcm"
            except Exception as err:  # noqa: BLE001 — a header highdicom rejects must not cost the mask
                summary["dicom_seg"] = None
                summary["dicom_seg_error"] = f"{type(err).__name__}: {err}"
                warnings.warn(f"{series.source}: no DICOM Segmentation written ({type(err).__name__}: {err})",
                              RuntimeWarning, stacklevel=2)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if out_dir.exists():  # swap: the old result is removed only after the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def write_dicom_seg(series: Series, mask_hw: np.ndarray, path: Path) -> None:
    """A binary DICOM Segmentation of ``mask_hw`` (one segment, "Blood vessel") referencing the
    series' first source instance.

    The vessel mask belongs to the whole series, not to one frame, and angiography images have no
    frame of reference, for which highdicom accepts exactly one source frame: the reference is
    therefore a one-frame view of the first instance's header (same UIDs). A multi-frame IOD header
    without shared functional groups (legacy X-ray angiography) gets the pixel measures highdicom
    reads from them.
    """
    import copy

    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    import dias_dist

    source = copy.deepcopy(series.datasets[0])
    if "PixelData" in source:
        del source.PixelData
    # harmless for single-frame IODs: highdicom reads these two only for multi-frame SOP classes
    source.NumberOfFrames = 1
    if "SharedFunctionalGroupsSequence" not in source:
        measures = Dataset()  # empty values where the source gives none: they are unknown, not 1 mm
        measures.PixelSpacing = None if series.pixel_spacing_mm is None else list(series.pixel_spacing_mm)
        measures.SliceThickness = None
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        source.SharedFunctionalGroupsSequence = [shared]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="dias_dist", version=dias_dist.__version__,
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"))
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="vessel",
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("59820001", "SCT", "Blood vessel"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's advice on the source's patient name format
        seg = hd.seg.Segmentation(
            source_images=[source], pixel_array=np.asarray(mask_hw, dtype=bool)[None],
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
            series_instance_uid=generate_uid(), series_number=9000, sop_instance_uid=generate_uid(),
            instance_number=1, manufacturer="dias_dist", manufacturer_model_name="dias_dist",
            software_versions=dias_dist.__version__, device_serial_number="0")
    seg.save_as(path)
