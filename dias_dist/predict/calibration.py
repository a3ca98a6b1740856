"""Pixel spacing at the isocentre of a projection run, for areas and lengths in mm.

A detector pixel (``ImagerPixelSpacing``) is larger than what it shows at the patient by the
geometric magnification. The spacing at the isocentre is, in order of preference:

1. ``ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor``;
2. ``ImagerPixelSpacing * DistanceSourceToPatient / DistanceSourceToDetector`` (magnification
   SID / SOD, both in mm);
3. ``PixelSpacing`` when the header gives only that (it is defined in the patient already);
4. ``ImagerPixelSpacing`` uncorrected, with a warning (areas too large by the magnification squared);
5. none: areas and lengths are given in pixels only.

``summary.json`` records which (``spacing_source``) and the factor used (``magnification``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass


@dataclass
class Calibration:
    """spacing_mm: (row, column) at the isocentre or None; source: rule used; magnification or None."""

    spacing_mm: tuple[float, float] | None
    source: str
    magnification: float | None = None
    detector_spacing_mm: tuple[float, float] | None = None

    @property
    def at_isocentre(self) -> bool:
        return self.magnification is not None or self.source == "PixelSpacing"

    @property
    def description(self) -> str:
        """What the spacing is, for the SEG's PixelSpacingCalibrationDescription (64 characters)."""
        if self.spacing_mm is None:
            return ""
        if self.magnification is not None:
            return f"isocentre: detector spacing / magnification {self.magnification:.4g}"
        if self.source == "PixelSpacing":
            return "PixelSpacing of the source, as given"
        return "detector plane, not corrected for magnification"


def _pair(ds, keyword: str) -> tuple[float, float] | None:
    if keyword in ds and ds.data_element(keyword).value:
        try:
            row, column = (float(v) for v in ds.data_element(keyword).value)
        except (TypeError, ValueError):
            return None
        if row > 0 and column > 0:
            return row, column
    return None


def _positive(ds, keyword: str) -> float | None:
    try:
        value = float(getattr(ds, keyword, None))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def isocentre_spacing(ds, where: str = "") -> Calibration:
    """The calibration of DICOM header ``ds`` (None: no header) by the rule of the module docstring;
    rule 4 warns (UserWarning naming ``where``)."""
    if ds is None:
        return Calibration(None, "none (no DICOM header)")
    imager = _pair(ds, "ImagerPixelSpacing")
    if imager is not None:
        factor = _positive(ds, "EstimatedRadiographicMagnificationFactor")
        source = "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor"
        if factor is None:
            sid, sod = _positive(ds, "DistanceSourceToDetector"), _positive(ds, "DistanceSourceToPatient")
            if sid is not None and sod is not None:
                factor, source = sid / sod, "ImagerPixelSpacing * DistanceSourceToPatient / DistanceSourceToDetector"
        if factor is not None:
            return Calibration((imager[0] / factor, imager[1] / factor), source, factor, imager)
    plain = _pair(ds, "PixelSpacing")
    if plain is not None:
        return Calibration(plain, "PixelSpacing", None, imager)
    if imager is not None:
        warnings.warn(f"{where}: no magnification in the header (EstimatedRadiographicMagnificationFactor, "
                      "DistanceSourceToDetector/DistanceSourceToPatient); areas and lengths use the detector's "
                      "ImagerPixelSpacing uncorrected, too large by the magnification squared (typically 1.2-1.5x "
                      "for lengths)", UserWarning, stacklevel=2)
        return Calibration(imager, "ImagerPixelSpacing (detector plane, not corrected for magnification)", None, imager)
    return Calibration(None, "none (no pixel spacing in the header)")
