"""Outputs of one predicted series, written all-or-nothing into ``OUT/<series name>/``:

    prob.npy      float16 (H, W) vessel probability
    prob.png      8-bit probability (round(255 * p))
    mask.png      0/255 vessel mask at the threshold (DTI when the model's config asks for it), after
                  the ``--min-size`` clean-up
    overlay.png   plain MinIP beside the windowed MinIP with the mask's outline, series name,
                  threshold and legend (``dias_dist.predict.overlay``)
    summary.json  input, model, subtraction, frames used and their times, threshold, vessel area and
                  centreline length in px and in mm at the isocentre (``dias_dist.predict.calibration``:
                  the spacing and its source recorded), clean-up, seconds taken, research-use statement
    seg.dcm       DICOM Segmentation (highdicom) referencing every source instance (DICOM input only),
                  its pixel spacing and what that spacing is (isocentre, or detector plane uncorrected:
                  PixelSpacingCalibrationDescription), marked for research use
    .dias-predict predict's marker (JSON: written_by, version, input): this folder is a result

``anonymize=True`` (``--anonymize``): no patient identifiers in the outputs: ``summary.json`` and the
marker record the series name instead of the input path, and the SEG's patient and study identifying
attributes (``PATIENT_KEYWORDS``) are empty. The UIDs stay (the SEG must reference its sources).

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

RESEARCH_USE = ("For research use only. Not for diagnostic use: automatic vessel segmentation by dias_dist, "
                "not a medical device, not validated for clinical decisions.")
SEG_DESCRIPTION = "dias_dist vessels RESEARCH USE ONLY"  # SeriesDescription, LO: 64 characters
# emptied in the SEG by --anonymize (type 2 attributes: present, empty); others of these are removed
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "ReferringPhysicianName", "StudyID")
REMOVED_KEYWORDS = ("PatientAge", "PatientSize", "PatientWeight", "OtherPatientIDs", "OtherPatientNames",
                    "OtherPatientIDsSequence", "PatientAddress", "PatientTelephoneNumbers", "InstitutionName",
                    "InstitutionAddress", "PerformingPhysicianName", "OperatorsName", "IssuerOfPatientID",
                    "PatientBirthTime", "EthnicGroup", "PatientComments", "InstitutionalDepartmentName",
                    "StationName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy")


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
                         dti: bool, summary: dict, overwrite: bool = False, frames: np.ndarray | None = None,
                         min_size: tuple[float, str] | None = None, anonymize: bool = False) -> Path:
    """Write the files of the module docstring for one series into ``out_dir`` (replacing an
    earlier result only once everything is written, and only predict's own result unless
    ``overwrite``: see ``check_replaceable``); returns ``out_dir``. ``frames``: the frames the model saw
    (default ``series.frames``), for the overlay; ``min_size``: (value, "px" | "mm2") of the clean-up
    (``postprocess.parse_min_size``); ``anonymize``: module docstring."""
    import dias_dist
    from dias_dist.predict.calibration import isocentre_spacing
    from dias_dist.predict.overlay import predict_overlay
    from dias_dist.predict.postprocess import centreline_px, remove_small

    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite=overwrite)
    prob_hw = np.asarray(prob_hw, dtype=np.float32)
    calibration = isocentre_spacing(series.datasets[0] if series.datasets else None, str(series.source))
    spacing = calibration.spacing_mm
    mask = binarize(prob_hw, threshold, dti)
    clean = None
    if min_size is not None:
        value, unit = min_size
        if unit == "mm2" and spacing is None:
            raise ValueError(f"{series.source}: --min-size {value:g}mm2 needs a pixel spacing, and this series has "
                             "none; give the size in px (e.g. --min-size 20px)")
        min_px = value if unit == "px" else value / (spacing[0] * spacing[1])
        before = mask
        mask, components, pixels = remove_small(mask, min_px)
        clean = {"min_size": f"{value:g}{unit}", "min_size_px": round(float(min_px), 3),
                 "removed_components": components, "removed_px": pixels}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        np.save(tmp / "prob.npy", prob_hw.astype(np.float16))
        Image.fromarray(np.round(np.clip(prob_hw, 0, 1) * 255).astype(np.uint8)).save(tmp / "prob.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / "mask.png")
        Image.fromarray(predict_overlay(series.frames if frames is None else frames, mask, title=out_dir.name,
                                        threshold=threshold, removed_hw=None if clean is None else before & ~mask)
                        ).save(tmp / "overlay.png")
        area_px, length_px = int(mask.sum()), centreline_px(mask)
        summary = {**summary, "threshold": threshold, "dti": dti, "clean_up": clean, "vessel_area_px": area_px,
                   "vessel_length_px": length_px, "vessel_area_mm2": None, "vessel_length_mm": None,
                   "pixel_spacing_mm": None if spacing is None else list(spacing),
                   "spacing_source": calibration.source, "magnification": calibration.magnification,
                   "detector_pixel_spacing_mm": None if calibration.detector_spacing_mm is None
                   else list(calibration.detector_spacing_mm),
                   "frame_time_ms": series.frame_time_ms, "research_use": RESEARCH_USE}
        if spacing is not None:
            row, column = spacing
            summary.update(vessel_area_mm2=area_px * row * column, vessel_length_mm=length_px * (row + column) / 2)
        if anonymize:
            summary["input"] = out_dir.name
            summary["anonymized"] = True
        if series.datasets:
            try:
                write_dicom_seg(series, mask, tmp / "seg.dcm", spacing_mm=spacing,
                                spacing_description=calibration.description, anonymize=anonymize)
                summary["dicom_seg"] = "seg.dcm"
            except Exception as err:  # noqa: BLE001 — a header highdicom rejects must not cost the mask
                summary["dicom_seg"] = None
                summary["dicom_seg_error"] = f"{type(err).__name__}: {err}"
                warnings.warn(f"{series.source}: no DICOM Segmentation written ({type(err).__name__}: {err})",
                              RuntimeWarning, stacklevel=2)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / MARKER).write_text(json.dumps({"written_by": "dias predict", "version": dias_dist.__version__,
                                              "input": out_dir.name if anonymize else str(series.source)})
                                  + "\n")
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


def write_dicom_seg(series: Series, mask_hw: np.ndarray, path: Path, *, spacing_mm=None,
                    spacing_description: str = "", anonymize: bool = False) -> None:
    """A binary DICOM Segmentation of ``mask_hw`` (one segment, "Blood vessel") referencing every
    source instance of the series (``ReferencedSeriesSequence``), its ``PixelSpacing`` ``spacing_mm``
    with ``PixelSpacingCalibrationDescription`` = ``spacing_description`` saying what it is (at the
    isocentre, ``PixelSpacingCalibrationType`` GEOMETRY; or the detector plane, not corrected for
    magnification), ``SeriesDescription`` / ``ContentDescription`` / ``ImageComments``
    stating research use; ``anonymize``: the patient and study identifiers left empty.

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
    shared = copy.deepcopy(source.SharedFunctionalGroupsSequence[0]) if "SharedFunctionalGroupsSequence" in source \
        else Dataset()
    measures = Dataset()  # empty where the spacing is unknown (highdicom then refuses: no SEG, a warning)
    measures.PixelSpacing = None if spacing_mm is None else [float(v) for v in spacing_mm]
    measures.SliceThickness = None
    shared.PixelMeasuresSequence = [measures]
    source.SharedFunctionalGroupsSequence = [shared]
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):  # the spacing is stated once, in the SEG's measures
        if keyword in source:
            delattr(source, keyword)
    if anonymize:
        for keyword in PATIENT_KEYWORDS:
            setattr(source, keyword, "")
        for keyword in REMOVED_KEYWORDS:
            if keyword in source:
                delattr(source, keyword)
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
            software_versions=dias_dist.__version__, device_serial_number="0",
            content_description="RESEARCH USE ONLY", content_label="VESSELS")
    if spacing_description:
        seg.PixelSpacingCalibrationDescription = spacing_description[:64]
        if spacing_description.startswith("isocentre"):
            seg.PixelSpacingCalibrationType = "GEOMETRY"
    seg.SeriesDescription = SEG_DESCRIPTION
    seg.ImageComments = RESEARCH_USE
    seen = {str(item.ReferencedSOPInstanceUID) for series_item in seg.ReferencedSeriesSequence
            for item in series_item.ReferencedInstanceSequence}
    for ds in series.datasets[1:]:  # highdicom takes one source; the others were read for the mask too
        if str(ds.SOPInstanceUID) in seen:
            continue
        seen.add(str(ds.SOPInstanceUID))
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence.append(item)
    seg.save_as(path)
