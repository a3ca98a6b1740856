"""Readers of a user's own DSA series: a folder of frames, a multi-frame DICOM file, a folder of
single-frame DICOM files, or a ``.npy`` array.

Every reader returns a ``Series`` whose ``frames`` are float64 (T, H, W) scaled to [0, 1] (8-bit
/ 255 exactly as the training shards, 16-bit / 65535, DICOM through its modality LUT over the
stored bit range, MONOCHROME1 inverted), so that ``preprocess_scaled`` treats every source the way
training treated the DIAS PNGs. Every bad input raises ``ValueError`` naming the file, in one line.

``expand_inputs`` turns command-line arguments (paths or globs) into series paths: a folder
holding frames or single-frame DICOM files is one series; a folder holding sub-folders, ``.npy``
or multi-frame DICOM files is a batch, one series per entry. A batch folder that yields no series
(only a ``.txt``, only a broken or looping symbolic link, only hidden files) is kept as a series of
its own, so that reading it fails with the reason.

Only regular files are read (``open_regular``: opened without blocking, then checked): a FIFO, socket,
device or dangling symbolic link among the frames or series is refused naming it, never waited on.

Budget (``Budget``; ``dias predict --max-pixels/--max-frames``): every file's size is read from its
header before any pixel is decoded (image header via PIL's lazy open, DICOM Rows/Columns/
NumberOfFrames without the pixel data, the ``.npy`` header) and a frame over ``max_pixels`` pixels or
a series over ``max_frames`` frames is refused naming the file and the sizes. The defaults are sized
for the largest real DSA (2048x2048 detector, 64 frames: about 2 GB as float64); ``max_pixels`` may
not exceed PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``), so PIL's own check never
fires first on an image within the budget, and an image PIL refuses is reported the same way.

Frame order of a folder of single-frame DICOM files: ``InstanceNumber`` (ties: acquisition time,
then file name). When any file lacks ``InstanceNumber``, the whole series falls back to the first
time every file carries (``AcquisitionDateTime``; ``AcquisitionDate``+``AcquisitionTime``;
``ContentDate``+``ContentTime``; a missing date counts as earlier), then the natural file name order,
or to the file name order alone when no time is in every file; a ``UserWarning`` names the files
without ``InstanceNumber`` and the order used, and the summary records it (``Series.frame_order``).
"""
from __future__ import annotations

import errno
import glob
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
DIAS_FRAME = re.compile(r"^image_s(\d+)_i\d+\.")  # the DIAS release's frame names
DEFAULT_MAX_PIXELS = 2048 * 2048  # per frame: the largest DSA detectors
DEFAULT_MAX_FRAMES = 64  # per series


@dataclass(frozen=True)
class Budget:
    """The largest input ``read_series`` decodes: pixels per frame (width x height) and frames per series."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_frames: int = DEFAULT_MAX_FRAMES

    def __post_init__(self):
        if self.max_pixels < 1 or self.max_frames < 1:
            raise ValueError(f"--max-pixels {self.max_pixels} --max-frames {self.max_frames}: both must be >= 1")
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and self.max_pixels > limit:
            raise ValueError(f"--max-pixels {self.max_pixels} exceeds PIL's decompression-bomb limit {limit} "
                             "(PIL.Image.MAX_IMAGE_PIXELS)")

    def check(self, path: Path, width: int, height: int, frames: int = 1) -> None:
        """ValueError naming ``path`` and the sizes when a frame or the frame count is over budget."""
        if width * height > self.max_pixels:
            raise ValueError(f"{path}: {width}x{height} = {width * height} pixels per frame (width x height) "
                             f"exceeds --max-pixels {self.max_pixels}")
        self.check_frames(path, frames)

    def check_frames(self, path: Path, frames: int) -> None:
        if frames > self.max_frames:
            raise ValueError(f"{path}: {frames} frames exceed --max-frames {self.max_frames}")


def open_regular(path: Path):
    """``path`` opened for binary reading if it is a regular file (symbolic links followed), else a
    ValueError naming it: opened with O_NONBLOCK, so that a FIFO is never waited on, then checked."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        kind = entry_kind(path)
        raise ValueError(f"{path}: cannot open ({err.strerror if kind in (None, 'missing') else kind})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ValueError(f"{path}: {_mode_kind(mode)}, not a regular file; dias predict reads only regular files")
    return os.fdopen(fd, "rb")


def _mode_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


def entry_kind(path: Path) -> str | None:
    """None for a regular file (symbolic links followed), else what ``path`` is: "a folder", "a FIFO",
    "a socket", "a character device", "a block device", "a symbolic link loop",
    "a dangling symbolic link" or "missing"."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if os.path.islink(path):
            return "a symbolic link loop" if err.errno == errno.ELOOP else "a dangling symbolic link"
        return "missing"
    return None if stat.S_ISREG(mode) else _mode_kind(mode)


@dataclass
class Series:
    """One series ready for prediction.

    frames         float64 (T, H, W) in [0, 1] (``.npy`` floats: as given)
    kind           "frames" | "dicom" | "dicom-series" | "npy"
    files          the files read, in frame order
    frame_time_ms  DICOM Frame Time, or the Frame Time Vector as a list; None when unknown
    pixel_spacing_mm  (row, column) spacing from the DICOM (Imager) Pixel Spacing, else None
    datasets       the pydicom datasets (source of the DICOM Segmentation), empty for other kinds
    frame_order    single-frame DICOM series: "InstanceNumber" or the fallback used (module docstring)
    """

    name: str
    source: Path
    kind: str
    frames: np.ndarray
    files: list[Path]
    frame_time_ms: float | list[float] | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    datasets: list = field(default_factory=list)
    frame_order: str | None = None  # single-frame DICOM series: how the files were ordered


def natural_key(path: Path) -> list:
    """Sort key: digit runs compare as integers (``frame2`` before ``frame10``)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _visible_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=natural_key)


def is_dicom_file(path: Path) -> bool:
    """A regular file with a ``.dcm`` name, or with the ``DICM`` magic after the 128-byte preamble."""
    if entry_kind(path) is not None:
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open_regular(path) as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except (OSError, ValueError):
        return False


def _is_series_folder(folder: Path) -> bool:
    """A folder of frames or of single-frame DICOM files (as opposed to a batch of series)."""
    files = [p for p in _visible_files(folder) if entry_kind(p) is None]
    if any(p.suffix.lower() in FRAME_SUFFIXES for p in files):
        return True
    dicoms = [p for p in files if is_dicom_file(p)]
    return bool(dicoms) and all(_num_frames_in_header(p) <= 1 for p in dicoms)


def _num_frames_in_header(path: Path) -> int:
    import pydicom

    try:
        with open_regular(path) as handle:
            ds = pydicom.dcmread(handle, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 — unreadable: let the series reader name the fault
        return 1
    return _int_or(getattr(ds, "NumberOfFrames", 1), 1)


def _int_or(value, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def expand_inputs(arguments: list[str]) -> list[Path]:
    """Command-line INPUTs (paths or globs) -> series paths, in argument order without duplicates.

    A folder that is not itself a series (see module docstring) contributes its sub-folders,
    ``.npy`` and DICOM files, and any entry that is neither a folder nor a regular file (a FIFO, a
    broken symbolic link: reading it names the fault); other files (``.txt``) are skipped. A folder
    that contributes nothing is kept itself, so that reading it reports the fault.
    A path or glob that matches nothing is a ValueError.
    """
    out: list[Path] = []
    for match in input_matches(arguments):
        if match.is_dir() and any(match.iterdir()) and not _is_series_folder(match):
            entries = [p for p in _visible_files(match) if p.is_dir() or p.suffix.lower() == ".npy"
                       or entry_kind(p) not in (None, "a folder") or is_dicom_file(p)]
            out.extend(entries or [match])
        else:
            out.append(match)
    return list(dict.fromkeys(out))


def input_matches(arguments: list[str]) -> list[Path]:
    """The paths the command-line INPUTs name (globs expanded), before batch folders are expanded;
    a path or glob that matches nothing is a ValueError."""
    out: list[Path] = []
    for argument in arguments:
        if glob.has_magic(argument):
            matches = sorted(glob.glob(argument), key=lambda m: natural_key(Path(m)))
        else:
            matches = [argument] if os.path.lexists(argument) else []
        if not matches:
            raise ValueError(f"input {argument!r}: no such file or folder")
        kind = entry_kind(Path(argument)) if not glob.has_magic(argument) else None
        if kind in ("a symbolic link loop", "a dangling symbolic link"):
            raise ValueError(f"input {argument!r}: {kind}")
        out.extend(map(Path, matches))
    return list(dict.fromkeys(out))


def read_series(path: str | Path, budget: Budget | None = None) -> Series:
    """Read one series (any kind in the module docstring) within ``budget`` (default ``Budget()``);
    ValueError naming the file on bad input."""
    path = Path(path)
    budget = budget or Budget()
    if path.is_dir():
        files = _visible_files(path)
        if not files:
            hidden = len(list(path.iterdir()))
            raise ValueError(f"{path}: empty folder (expected frames, DICOM files or series)"
                             + (f"; it holds only {hidden} hidden entries" if hidden else ""))
        for entry in files:
            kind = entry_kind(entry)
            if kind not in (None, "a folder"):
                raise ValueError(f"{entry}: {kind}, not a regular file; dias predict reads only regular files")
        if any(p.suffix.lower() in FRAME_SUFFIXES for p in files):
            return read_frame_folder(path, budget)
        if all(entry_kind(p) is None and is_dicom_file(p) for p in files):
            return read_dicom_series(path, budget)
        shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in files[:5]) + (" ..." if len(files) > 5 else "")
        raise ValueError(f"{path}: no frames ({', '.join(FRAME_SUFFIXES)}), DICOM files, .npy or series in this "
                         f"folder (it holds {shown})")
    kind = entry_kind(path)
    if kind is not None:
        raise ValueError(f"{path}: no such file or folder" if kind == "missing" else
                         f"{path}: {kind}, not a regular file; dias predict reads only regular files")
    if path.suffix.lower() == ".npy":
        return read_npy(path, budget)
    if is_dicom_file(path):
        return read_dicom_file(path, budget)
    raise ValueError(f"{path}: not a series (expected a frame folder, a DICOM file, a DICOM folder or a .npy)")


# ------------------------------------------------------------------------------------- frames


def _gray_pixels(path: Path, budget: Budget) -> np.ndarray:
    """An image file -> uint8 or uint16 (H, W), its size checked against ``budget`` before decoding.
    RGB with equal channels converts with a warning."""
    try:
        with open_regular(path) as handle, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(handle)  # lazy: reads the header only
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
                raise ValueError(f"{path}: {err} (--max-pixels {budget.max_pixels})") from None
            with image:
                budget.check(path, *image.size)
                image.load()
                pixels = _image_pixels(image, path)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    if pixels.dtype not in (np.uint8, np.uint16):
        pixels = pixels.astype(np.uint16)
    return np.ascontiguousarray(pixels)


def _image_pixels(image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode in ("L", "I;16", "I;16B", "I;16L"):
        return np.asarray(image)
    if mode == "I":  # PIL opens some 16-bit PNG/TIFF as 32-bit integers
        pixels = np.asarray(image)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise ValueError(f"{path}: 32-bit integer image with values outside 0..65535")
        return pixels.astype(np.uint16)
    if mode in ("RGB", "RGBA", "P", "LA"):
        rgb = np.asarray(image.convert("RGB"))
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ValueError(f"{path}: colour image (PIL mode {mode}); DSA frames must be grayscale")
        warnings.warn(f"{path}: {mode} image with equal channels read as grayscale", UserWarning, stacklevel=4)
        return rgb[..., 0]
    raise ValueError(f"{path}: PIL mode {mode!r} is not 8- or 16-bit grayscale")


def read_frame_folder(folder: Path, budget: Budget | None = None) -> Series:
    """PNG / JPEG / TIFF frames in natural order; every file in the folder must be a frame."""
    budget = budget or Budget()
    files = _visible_files(folder)
    for path in files:
        if path.suffix.lower() not in FRAME_SUFFIXES:
            raise ValueError(f"{path}: not a frame ({', '.join(FRAME_SUFFIXES)}) in frame folder {folder}")
    sequences = sorted({m.group(1) for m in map(DIAS_FRAME.match, (p.name for p in files)) if m}, key=int)
    if len(sequences) > 1:  # a DIAS release split folder holds many sequences side by side
        raise ValueError(f"{folder}: frames of {len(sequences)} sequences (s{', s'.join(sequences[:5])}"
                         f"{' ...' if len(sequences) > 5 else ''}) in one folder; put each series in its own folder")
    budget.check_frames(folder, len(files))
    frames = []
    for path in files:
        pixels = _gray_pixels(path, budget)
        if frames and pixels.shape != frames[0].shape:
            raise ValueError(f"{path}: frame size {pixels.shape[1]}x{pixels.shape[0]} differs from "
                             f"{files[0].name} {frames[0].shape[1]}x{frames[0].shape[0]} (width x height)")
        if frames and pixels.dtype != frames[0].dtype:
            raise ValueError(f"{path}: {pixels.dtype} frame among {frames[0].dtype} frames ({files[0].name})")
        frames.append(pixels)
    stack = np.stack(frames)
    scale = 255.0 if stack.dtype == np.uint8 else 65535.0
    return Series(folder.name, folder, "frames", stack.astype(np.float64) / scale, files)


def _npy_header(handle, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a ``.npy`` header, without reading the data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(handle)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} (structured arrays only)")
    except Exception as err:  # noqa: BLE001 — not a .npy, or a damaged header
        raise ValueError(f"{path}: not a plain numpy array ({type(err).__name__}: {err})") from None
    return shape, dtype


def read_npy(path: Path, budget: Budget | None = None) -> Series:
    """(T, H, W) or one (H, W) frame; uint8 / uint16 are scaled to [0, 1], floats used as given.
    The shape is checked (and against ``budget``) from the header before the data is read."""
    budget = budget or Budget()
    with open_regular(path) as handle:
        shape, _ = _npy_header(handle, path)
        shape_thw = (1, *shape) if len(shape) == 2 else shape
        if len(shape_thw) != 3 or 0 in shape_thw:
            raise ValueError(f"{path}: expected a (T, H, W) array, got shape {tuple(shape)}")
        budget.check(path, shape_thw[2], shape_thw[1], shape_thw[0])
        handle.seek(0)
        try:
            array = np.load(handle, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 — a pickled or truncated file
            raise ValueError(f"{path}: not a plain numpy array ({type(err).__name__}: {err})") from None
    if array.ndim == 2:
        array = array[None]
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


def _dcmread(path: Path, budget: Budget):
    """The dataset of ``path``, read whole only after its header's Rows x Columns and NumberOfFrames
    passed ``budget`` (the header is read first without the pixel data)."""
    with open_regular(path) as handle:
        header = _parse_dicom(handle, path, stop_before_pixels=True)
        budget.check(path, _int_or(getattr(header, "Columns", 0), 0), _int_or(getattr(header, "Rows", 0), 0),
                     _int_or(getattr(header, "NumberOfFrames", 1), 1))
        handle.seek(0)
        return _parse_dicom(handle, path)


def _parse_dicom(handle, path: Path, **kwargs):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(handle, **kwargs)
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


def read_dicom_file(path: Path, budget: Budget | None = None) -> Series:
    """A multi-frame (or single-frame) DICOM file; frame time and pixel spacing are recorded."""
    ds = _dcmread(path, budget or Budget())
    return Series(path.stem, path, "dicom", _scaled_pixels(ds, path), [path], _frame_time(ds),
                  _pixel_spacing(ds), [ds])


# (keywords of one point in time, in order of preference) for a series without InstanceNumber
TIME_KEYWORDS = (("AcquisitionDateTime",), ("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"))


def _instance_number(ds) -> int | None:
    value = getattr(ds, "InstanceNumber", None)
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _time_of(ds, keywords: tuple[str, ...]) -> tuple[str, float] | None:
    """A sortable (date, seconds of the day) for ``ds`` from ``keywords`` (a DT, or an optional DA and a
    TM); None when the time is absent or unparsable."""
    import datetime

    from pydicom.valuerep import DT, TM

    try:
        if len(keywords) == 1:
            value = str(getattr(ds, keywords[0], "") or "").strip()
            if not value:
                return None
            when = DT(value)
            if when.tzinfo is not None:
                when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
            return when.strftime("%Y%m%d"), when.hour * 3600 + when.minute * 60 + when.second + when.microsecond / 1e6
        date_kw, time_kw = keywords
        value = str(getattr(ds, time_kw, "") or "").strip()
        if not value:
            return None
        when = TM(value)
        date = str(getattr(ds, date_kw, "") or "").strip()
        return date, when.hour * 3600 + when.minute * 60 + when.second + when.microsecond / 1e6
    except (TypeError, ValueError, OverflowError):
        return None


def order_dicom_frames(datasets: list[tuple[Path, object]], folder: Path) -> tuple[list, str]:
    """``datasets`` ((path, dataset) of single-frame files) in frame order, and the order used: see the
    module docstring (InstanceNumber; without it in every file, the first complete time, then the
    file name, with a warning)."""
    missing = [path for path, ds in datasets if _instance_number(ds) is None]
    if not missing:
        def by_number(item):
            path, ds = item
            when = _time_of(ds, TIME_KEYWORDS[1])
            return _instance_number(ds), when is not None, when or ("", 0.0), natural_key(path)

        return sorted(datasets, key=by_number), "InstanceNumber"
    for keywords in TIME_KEYWORDS:
        times = [_time_of(ds, keywords) for _, ds in datasets]
        if all(t is not None for t in times):
            key = {id(ds): t for (_, ds), t in zip(datasets, times)}
            ordered = sorted(datasets, key=lambda item: (key[id(item[1])], natural_key(item[0])))
            order = f"{'+'.join(keywords)}, then file name"
            break
    else:
        ordered, order = sorted(datasets, key=lambda item: natural_key(item[0])), "file name"
    shown = ", ".join(p.name for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
    warnings.warn(f"{folder}: {len(missing)} of {len(datasets)} files lack InstanceNumber ({shown}); "
                  f"frames ordered by {order}", UserWarning, stacklevel=3)
    return ordered, f"{order} (InstanceNumber missing in {len(missing)} of {len(datasets)} files)"


def read_dicom_series(folder: Path, budget: Budget | None = None) -> Series:
    """Single-frame DICOM files of one series, in the order of ``order_dicom_frames``."""
    budget = budget or Budget()
    files = _visible_files(folder)
    budget.check_frames(folder, len(files))
    datasets = [(path, _dcmread(path, budget)) for path in files]
    series_uids = sorted({str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in datasets})
    if len(series_uids) > 1:
        raise ValueError(f"{folder}: files of {len(series_uids)} series in one folder "
                         f"(SeriesInstanceUID {', '.join(series_uids)}); put each series in its own folder")
    budget.check_frames(folder, sum(_int_or(getattr(ds, "NumberOfFrames", 1), 1) for _, ds in datasets))
    datasets, frame_order = order_dicom_frames(datasets, folder)
    frames = []
    for path, ds in datasets:
        pixels = _scaled_pixels(ds, path)
        if frames and pixels.shape[1:] != frames[0].shape[1:]:
            raise ValueError(f"{path}: frame size {pixels.shape[2]}x{pixels.shape[1]} differs from "
                             f"{datasets[0][0].name} {frames[0].shape[2]}x{frames[0].shape[1]} (width x height)")
        frames.append(pixels)
    first = datasets[0][1]
    return Series(folder.name, folder, "dicom-series", np.concatenate(frames), [p for p, _ in datasets],
                  _frame_time(first), _pixel_spacing(first), [ds for _, ds in datasets], frame_order)
