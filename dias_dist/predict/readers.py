"""Readers of a user's own DSA series: a folder of frames, a multi-frame DICOM file, a folder of
single-frame DICOM files, or a ``.npy`` array.

Every reader returns a ``Series`` whose ``frames`` are float64 (T, H, W) scaled to [0, 1] (8-bit
/ 255 exactly as the training shards, 16-bit / 65535, DICOM through its modality LUT over the
stored bit range, MONOCHROME1 inverted), so that ``preprocess_scaled`` treats every source the way
training treated the DIAS PNGs. Every bad input raises ``ValueError`` naming the file.

``expand_inputs`` turns command-line arguments (paths or globs) into series paths: a folder
holding frames or single-frame DICOM files is one series; a folder holding sub-folders, ``.npy``
or multi-frame DICOM files is a batch, one series per entry.
"""
from __future__ import annotations

import glob
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
DIAS_FRAME = re.compile(r"^image_s(\d+)_i\d+\.")  # the DIAS release's frame names


@dataclass
class Series:
    """One series ready for prediction.

    frames         float64 (T, H, W) in [0, 1] (``.npy`` floats: as given)
    kind           "frames" | "dicom" | "dicom-series" | "npy"
    files          the files read, in frame order
    frame_time_ms  DICOM Frame Time, or the Frame Time Vector as a list; None when unknown
    pixel_spacing_mm  (row, column) spacing from the DICOM (Imager) Pixel Spacing, else None
    datasets       the pydicom datasets (source of the DICOM Segmentation), empty for other kinds
    """

    name: str
    source: Path
    kind: str
    frames: np.ndarray
    files: list[Path]
    frame_time_ms: float | list[float] | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    datasets: list = field(default_factory=list)


def natural_key(path: Path) -> list:
    """Sort key: digit runs compare as integers (``frame2`` before ``frame10``)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _visible_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=natural_key)


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` name, or the ``DICM`` magic after the 128-byte preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _is_series_folder(folder: Path) -> bool:
    """A folder of frames or of single-frame DICOM files (as opposed to a batch of series)."""
    files = [p for p in _visible_files(folder) if p.is_file()]
    if any(p.suffix.lower() in FRAME_SUFFIXES for p in files):
        return True
    dicoms = [p for p in files if is_dicom_file(p)]
    return bool(dicoms) and all(_num_frames_in_header(p) <= 1 for p in dicoms)


def _num_frames_in_header(path: Path) -> int:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 — unreadable: let the series reader name the fault
        return 1
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def expand_inputs(arguments: list[str]) -> list[Path]:
    """Command-line INPUTs (paths or globs) -> series paths, in argument order without duplicates.

    A folder that is not itself a series (see module docstring) contributes its sub-folders,
    ``.npy`` and DICOM files; an empty one is kept so that reading it reports the fault.
    A path or glob that matches nothing is a ValueError.
    """
    out: list[Path] = []
    for argument in arguments:
        matches = sorted(glob.glob(argument), key=lambda m: natural_key(Path(m))) if glob.has_magic(argument) \
            else [argument] if Path(argument).exists() else []
        if not matches:
            raise ValueError(f"input {argument!r}: no such file or folder")
        for match in map(Path, matches):
            if match.is_dir() and any(match.iterdir()) and not _is_series_folder(match):
                out.extend(p for p in _visible_files(match)
                           if p.is_dir() or p.suffix.lower() == ".npy" or is_dicom_file(p))
            else:
                out.append(match)
    return list(dict.fromkeys(out))


def read_series(path: str | Path) -> Series:
    """Read one series (any kind in the module docstring); ValueError naming the file on bad input."""
    path = Path(path)
    if path.is_dir():
        files = _visible_files(path)
        if not files:
            raise ValueError(f"{path}: empty folder (expected frames, DICOM files or series)")
        if any(p.suffix.lower() in FRAME_SUFFIXES for p in files):
            return read_frame_folder(path)
        if all(p.is_file() and is_dicom_file(p) for p in files):
            return read_dicom_series(path)
        raise ValueError(f"{path}: no frames ({', '.join(FRAME_SUFFIXES)}) or DICOM files in this folder")
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".npy":
        return read_npy(path)
    if is_dicom_file(path):
        return read_dicom_file(path)
    raise ValueError(f"{path}: not a series (expected a frame folder, a DICOM file, a DICOM folder or a .npy)")


# ------------------------------------------------------------------------------------- frames


def _gray_pixels(path: Path) -> np.ndarray:
    """An image file -> uint8 or uint16 (H, W). RGB with equal channels converts with a warning."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("L", "I;16", "I;16B", "I;16L"):
                pixels = np.asarray(image)
            elif mode == "I":  # PIL opens some 16-bit PNG/TIFF as 32-bit integers
                pixels = np.asarray(image)
                if pixels.min() < 0 or pixels.max() > 65535:
                    raise ValueError(f"{path}: 32-bit integer image with values outside 0..65535")
                pixels = pixels.astype(np.uint16)
            elif mode in ("RGB", "RGBA", "P", "LA"):
                rgb = np.asarray(image.convert("RGB"))
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                    raise ValueError(f"{path}: colour image (PIL mode {mode}); DSA frames must be grayscale")
                warnings.warn(f"{path}: {mode} image with equal channels read as grayscale", UserWarning,
                              stacklevel=3)
                pixels = rgb[..., 0]
            else:
                raise ValueError(f"{path}: PIL mode {mode!r} is not 8- or 16-bit grayscale")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    if pixels.dtype not in (np.uint8, np.uint16):
        pixels = pixels.astype(np.uint16)
    return np.ascontiguousarray(pixels)


def read_frame_folder(folder: Path) -> Series:
    """PNG / JPEG / TIFF frames in natural order; every file in the folder must be a frame."""
    files = _visible_files(folder)
    for path in files:
        if path.suffix.lower() not in FRAME_SUFFIXES:
            raise ValueError(f"{path}: not a frame ({', '.join(FRAME_SUFFIXES)}) in frame folder {folder}")
    sequences = sorted({m.group(1) for m in map(DIAS_FRAME.match, (p.name for p in files)) if m}, key=int)
    if len(sequences) > 1:  # a DIAS release split folder holds many sequences side by side
        raise ValueError(f"{folder}: frames of {len(sequences)} sequences (s{', s'.join(sequences[:5])}"
                         f"{' ...' if len(sequences) > 5 else ''}) in one folder; put each series in its own folder")
    frames = []
    for path in files:
        pixels = _gray_pixels(path)
        if frames and pixels.shape != frames[0].shape:
            raise ValueError(f"{path}: frame size {pixels.shape[1]}x{pixels.shape[0]} differs from "
                             f"{files[0].name} {frames[0].shape[1]}x{frames[0].shape[0]} (width x height)")
        if frames and pixels.dtype != frames[0].dtype:
            raise ValueError(f"{path}: {pixels.dtype} frame among {frames[0].dtype} frames ({files[0].name})")
        frames.append(pixels)
    stack = np.stack(frames)
    scale = 255.0 if stack.dtype == np.uint8 else 65535.0
    return Series(folder.name, folder, "frames", stack.astype(np.float64) / scale, files)


def read_npy(path: Path) -> Series:
    """(T, H, W) or one (H, W) frame; uint8 / uint16 are scaled to [0, 1], floats used as given."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 — a pickled or truncated file
        raise ValueError(f"{path}: not a plain numpy array ({type(err).__name__}: {err})") from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"{path}: expected a (T, H, W) array, got shape {array.shape}")
    if array.dtype == np.uint8:
        frames = array.astype(np.float64) / 255.0
    elif array.dtype == np.uint16:
        frames = array.astype(np.float64) / 65535.0
    elif np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer):
        frames = array.astype(np.float64)
        if not np.all(np.isfinite(frames)):
            raise ValueError(f"{path}: {int(np.count_nonzero(~np.isfinite(frames)))} NaN or infinite values")
    else:
        raise ValueError(f"{path}: dtype {array.dtype} is not a number")
    return Series(path.stem, path, "npy", frames, [path])


# -------------------------------------------------------------------------------------- DICOM


def _dcmread(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError as err:
        raise ValueError(f"{path}: not a DICOM file ({err})") from None
    except Exception as err:  # noqa: BLE001 — truncated or corrupt
        raise ValueError(f"{path}: unreadable DICOM ({type(err).__name__}: {err})") from None


def _scaled_pixels(ds, path: Path) -> np.ndarray:
    """Decoded pixels of ``ds`` -> float64 (frames, H, W) in [0, 1] (see module docstring)."""
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in ds:
        raise ValueError(f"{path}: DICOM without pixel data (SOP class {getattr(ds, 'SOPClassUID', '?')})")
    syntax = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
    try:
        pixels = ds.pixel_array
    except Exception as err:  # noqa: BLE001 — pydicom raises RuntimeError/NotImplementedError for missing decoders
        name = f"{syntax.name} ({syntax})" if syntax is not None else "unknown"
        raise ValueError(f"{path}: cannot decode the pixel data, transfer syntax {name}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        if not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])):
            raise ValueError(f"{path}: colour DICOM ({ds.PhotometricInterpretation}); DSA frames must be grayscale")
        warnings.warn(f"{path}: {ds.PhotometricInterpretation} DICOM with equal channels read as grayscale",
                      UserWarning, stacklevel=3)
        pixels = pixels[..., 0]
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    pixels = pixels.reshape(frames, int(ds.Rows), int(ds.Columns))
    bits = int(getattr(ds, "BitsStored", pixels.dtype.itemsize * 8))
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    stored_range = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2 ** bits - 1])
    low, high = np.sort(np.asarray(apply_modality_lut(stored_range, ds), dtype=np.float64))
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if high <= low:
        raise ValueError(f"{path}: modality LUT maps the stored range to one value {low}")
    scaled = (values - low) / (high - low)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        scaled = 1.0 - scaled  # MONOCHROME1: low values are white
    return scaled


def _frame_time(ds) -> float | list[float] | None:
    if "FrameTimeVector" in ds:
        return [float(v) for v in ds.FrameTimeVector]
    if "FrameTime" in ds:
        return float(ds.FrameTime)
    return None


def _pixel_spacing(ds) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds and ds.data_element(keyword).value:
            row, column = (float(v) for v in ds.data_element(keyword).value)
            return row, column
    return None


def read_dicom_file(path: Path) -> Series:
    """A multi-frame (or single-frame) DICOM file; frame time and pixel spacing are recorded."""
    ds = _dcmread(path)
    return Series(path.stem, path, "dicom", _scaled_pixels(ds, path), [path], _frame_time(ds),
                  _pixel_spacing(ds), [ds])


def read_dicom_series(folder: Path) -> Series:
    """Single-frame DICOM files of one series, ordered by InstanceNumber then AcquisitionTime."""
    files = _visible_files(folder)
    datasets = [(path, _dcmread(path)) for path in files]
    series_uids = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in datasets})
    if len(series_uids) > 1:
        raise ValueError(f"{folder}: files of {len(series_uids)} series in one folder "
                         f"(SeriesInstanceUID {', '.join(series_uids)}); put each series in its own folder")

    def order(item):
        _, ds = item
        number = getattr(ds, "InstanceNumber", None)
        return (number is None, int(number) if number is not None else 0,
                str(getattr(ds, "AcquisitionTime", "") or ""))

    datasets.sort(key=order)
    frames = []
    for path, ds in datasets:
        pixels = _scaled_pixels(ds, path)
        if frames and pixels.shape[1:] != frames[0].shape[1:]:
            raise ValueError(f"{path}: frame size {pixels.shape[2]}x{pixels.shape[1]} differs from "
                             f"{datasets[0][0].name} {frames[0].shape[2]}x{frames[0].shape[1]} (width x height)")
        frames.append(pixels)
    first = datasets[0][1]
    return Series(folder.name, folder, "dicom-series", np.concatenate(frames), [p for p, _ in datasets],
                  _frame_time(first), _pixel_spacing(first), [ds for _, ds in datasets])
