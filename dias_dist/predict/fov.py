"""Field-of-view masks for ``dias predict --fov PATH``: the probability map is 0 outside the field of view.

``PATH`` is either one mask file, applied to every series of the run (one detector, one aperture), or a
folder of masks matched to the series by name: the mask whose file stem is the series' name (the stem of
a ``.npy`` / DICOM file, the name of a frame or DICOM folder: the name its output folder gets before
``_2`` de-duplication), any image suffix (``.png``, ``.gif``, ``.tif`` ...). Masks in the folder that
match no series are ignored; a series without a mask is refused. Everything but the size is checked
before the model loads (one line naming the file, exit status 2): no mask for a series, two masks of one
stem, an unreadable file, a colour mask, a mask that is not binary (more than one non-zero value: a
JPEG's compression noise, a soft edge), an empty field of view. The size (mask H x W equal to the
series' frames) is checked per series, before its prediction: a mismatch fails that series only.

A mask is binary when it holds 0 (outside) and at most one other value (inside: 1, 255, 65535 ...);
grey masks stored as RGB with equal channels are accepted. The decision and why the release layout is
not read automatically: docs/DECISIONS.md ("Field of view in dias predict").
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from dias_dist.predict.readers import entry_kind, open_regular

MASK_SUFFIXES = (".png", ".gif", ".tif", ".tiff", ".bmp", ".ppm", ".jpg", ".jpeg")


def series_key(path: Path) -> str:
    """The name a series' mask is matched by: a folder's name, a file's stem (``scan.dcm`` -> ``scan``)."""
    absolute = Path(os.path.abspath(path))
    return absolute.name if path.is_dir() else absolute.stem


def _masks_by_stem(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in MASK_SUFFIXES:
            continue
        if path.stem in out:
            raise ValueError(f"{path}: two field-of-view masks of stem {path.stem!r} ({out[path.stem].name} too); "
                             "keep one")
        out[path.stem] = path
    return out


def fov_files(fov: str | Path, series_paths: list[Path]) -> list[Path]:
    """The mask file of every series in ``series_paths`` (same order) for ``--fov fov``: the file itself,
    or the folder's ``<series name>.<ext>``; ValueError naming the path when a mask is missing."""
    fov = Path(fov)
    kind = entry_kind(fov)
    if kind == "missing":
        raise ValueError(f"--fov {fov}: no such file or folder")
    if kind != "a folder":
        return [fov] * len(series_paths)
    masks = _masks_by_stem(fov)
    out = []
    for path in series_paths:
        key = series_key(path)
        if key not in masks:
            shown = ", ".join(sorted(masks)[:3]) + (" ..." if len(masks) > 3 else "")
            raise ValueError(f"{fov / key}.png: no field-of-view mask for series {path} (--fov folder masks are "
                             f"matched by name, <name>.png; the folder holds {shown or 'no masks'})")
        out.append(masks[key])
    return out


def read_fov(path: Path) -> np.ndarray:
    """uint8 {0, 1} (H, W) field of view from a binary mask file (rules in the module docstring);
    ValueError naming ``path`` for an unreadable, colour, non-binary or empty mask."""
    try:
        with open_regular(path) as handle, Image.open(handle) as image:
            image.load()
            mode = image.mode
            if mode in ("RGB", "RGBA", "P", "PA", "LA", "CMYK", "YCbCr"):
                rgb = np.asarray(image.convert("RGB"))
                if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any():
                    raise ValueError(f"{path}: colour field-of-view mask (PIL mode {mode}); give a grey or binary "
                                     "mask (0 outside, 255 inside)")
                pixels = rgb[..., 0]
            else:
                pixels = np.asarray(image)
    except ValueError as err:
        raise ValueError(str(err) if str(err).startswith(str(path)) else f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 — PIL: OSError / UnidentifiedImageError / bomb on bad bytes
        raise ValueError(f"{path}: unreadable field-of-view mask ({type(err).__name__}: {err})") from None
    if pixels.ndim != 2:
        raise ValueError(f"{path}: field-of-view mask of shape {pixels.shape}; expected one grey channel (H, W)")
    values = np.unique(pixels)
    inside = values[values != 0]
    if len(inside) > 1:
        shown = ", ".join(str(v) for v in values[:5]) + (" ..." if len(values) > 5 else "")
        raise ValueError(f"{path}: field-of-view mask is not binary ({len(values)} values: {shown}); save it with "
                         "0 outside and one value inside (255), as PNG or GIF, not JPEG")
    if not len(inside):
        raise ValueError(f"{path}: field of view is empty (every pixel 0)")
    return (pixels != 0).astype(np.uint8)


def check_size(fov_hw: np.ndarray, shape: tuple[int, ...], path: Path) -> None:
    """ValueError naming ``path`` when the mask (H, W) is not the series' frame size ``shape`` (H, W)."""
    if tuple(fov_hw.shape) != tuple(shape):
        raise ValueError(f"{path}: field of view {fov_hw.shape[1]}x{fov_hw.shape[0]} differs from the series "
                         f"{shape[1]}x{shape[0]} (width x height)")


def apply_fov(prob_hw: np.ndarray, fov_hw: np.ndarray, path: Path) -> np.ndarray:
    """``prob_hw`` float (H, W) with every pixel outside ``fov_hw`` uint8 {0, 1} (H, W) set to 0;
    ValueError naming ``path`` when the sizes differ."""
    check_size(fov_hw, prob_hw.shape, path)
    return np.where(fov_hw > 0, prob_hw, 0).astype(prob_hw.dtype, copy=False)


def fov_record(path: Path, fov_hw: np.ndarray, *, anonymize: bool = False) -> dict:
    """The ``summary.json`` entry ``"fov"``: the mask file (its name only under ``--anonymize``) and how
    much of the image lies inside."""
    inside = int(fov_hw.sum())
    return {"mask": path.name if anonymize else str(path), "inside_px": inside,
            "inside_fraction": round(inside / fov_hw.size, 4), "outside": "probability set to 0"}
