"""Outputs of one predicted series, written all-or-nothing into ``OUT/<series name>/``:

    prob.npy      float16 (H, W) vessel probability
    prob.png      8-bit probability (round(255 * p))
    mask.png      0/255 vessel mask at the threshold (DTI when the model's config asks for it)
    overlay.png   the mask in colour over the series' minimum-intensity projection (anatomy visible)
    summary.json  input, model, threshold, vessel area (pixels; mm² when the DICOM gives pixel
                  spacing), frame time, seconds taken
    seg.dcm       DICOM Segmentation (highdicom) referencing the source instance (DICOM input only)
    .dias-predict predict's marker (JSON: written_by, version, input): this folder is a result

Everything is written into a hidden temporary folder beside the target and renamed into place when
complete, so a failure leaves no partial folder (and an earlier result for the series stays).

Nothing predict did not write is replaced or deleted:

- ``check_output_location``: an output folder that is, contains or lies inside an input (real paths,
  symbolic links resolved) is refused before anything runs.
- An existing ``OUT/<name>`` is replaced only when it is a folder (not a link) carrying the marker
  ``.dias-predict``, or with ``overwrite=True`` (``--overwrite``); ``check_replaceable`` refuses the
  others up front, and ``write_series_outputs`` checks again before its swap.
- ``safe_name``: the series name is one safe path component: ``/``, ``\\``, NUL and other control
  characters become ``_``, every leading ``.`` becomes ``_`` (so never ``.``, ``..``, hidden, nor one
  of predict's ``.<name>.tmp-`` folders), an empty name becomes ``series``, and the name is cut to
  200 bytes (room for ``_N`` and the temporary folder's prefix within the 255-byte limit).
"""
from __future__ import annotations

import json
import os
import re
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


MARKER = ".dias-predict"
MAX_NAME_BYTES = 200
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def safe_name(name: str) -> str:
    """``name`` as one safe path component (rule in the module docstring)."""
    name = _UNSAFE.sub("_", name)
    stripped = name.lstrip(".")
    name = "_" * (len(name) - len(stripped)) + stripped
    while len(os.fsencode(name)) > MAX_NAME_BYTES:
        name = name[:-1]
    return name or "series"


def unique_names(series_paths: list[Path]) -> list[str]:
    """Output folder names: the series' file stem / folder name made a ``safe_name``, ``_2``,
    ``_3``... on collisions."""
    names, seen = [], set()
    for path in series_paths:
        absolute = Path(os.path.abspath(path))  # "." and "x/.." name their folder
        base = safe_name(absolute.name if path.is_dir() else absolute.stem)
        name, count = base, 1
        while name in seen:
            count += 1
            name = f"{base}_{count}"
        seen.add(name)
        names.append(name)
    return names


def is_predict_result(folder: Path) -> bool:
    """Whether ``folder`` is a folder (not a symbolic link) holding predict's marker file."""
    if os.path.islink(folder) or not folder.is_dir():
        return False
    marker = folder / MARKER
    try:
        if marker.is_symlink() or not marker.is_file():
            return False
        return json.loads(marker.read_text()).get("written_by") == "dias predict"
    except (OSError, ValueError, AttributeError):
        return False


def check_replaceable(out_dir: Path, *, overwrite: bool = False) -> None:
    """ValueError naming ``out_dir`` when it exists and is not predict's own result (unless ``overwrite``)."""
    if overwrite or not os.path.lexists(out_dir) or is_predict_result(out_dir):
        return
    what = "a symbolic link" if os.path.islink(out_dir) else "a folder" if out_dir.is_dir() else "a file"
    raise ValueError(f"{out_dir}: exists ({what}) and was not written by dias predict (no {MARKER} marker); "
                     "choose another --out, move it away, or give --overwrite to replace it")


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def check_output_location(out_root: Path, inputs: list[Path]) -> None:
    """ValueError naming both paths when ``out_root`` is, contains or lies inside one of ``inputs``
    (compared as real paths: symbolic links resolved, also those of an input folder's entries)."""
    out_real = _real(out_root)
    if os.path.lexists(out_root) and not out_real.is_dir():
        raise ValueError(f"--out {out_root}: exists and is not a folder")
    for path in inputs:
        candidates = [path]
        if path.is_dir():
            try:
                candidates += sorted(path.iterdir())  # a frame symlinked from elsewhere
            except OSError:
                pass
        for candidate in candidates:
            real = _real(candidate)
            relation = ("is" if real == out_real else "contains" if out_real in real.parents
                        else "lies inside" if real in out_real.parents else None)
            if relation is None:
                continue
            shown = [f"{p}" + (f" (real path {r})" if Path(os.path.abspath(p)) != r else "")
                     for p, r in ((out_root, out_real), (candidate, real))]
            raise ValueError(f"--out {shown[0]} {relation} the input {shown[1]}; predict never writes over its "
                             "inputs: choose an output folder outside them")


def write_series_outputs(out_dir: str | Path, series: Series, prob_hw: np.ndarray, *, threshold: float,
                         dti: bool, summary: dict, overwrite: bool = False) -> Path:
    """Write the files of the module docstring for one series into ``out_dir`` (replacing an
    earlier result only once everything is written, and only predict's own result unless
    ``overwrite``: see ``check_replaceable``); returns ``out_dir``."""
    import dias_dist

    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite=overwrite)
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
        (tmp / MARKER).write_text(json.dumps({"written_by": "dias predict", "version": dias_dist.__version__,
                                              "input": str(series.source)}) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        check_replaceable(out_dir, overwrite=overwrite)  # again: it may have appeared while predicting
        if os.path.lexists(out_dir):  # swap: the old result is removed only after the new one is complete
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
