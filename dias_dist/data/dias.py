"""Reader for the published DIAS release layout (docs/REFERENCE.md §2).

Layout::

    ROOT/{training,validation,test}/images/image_s{ID}_i{f}.png   8-bit frames, f = 0..T-1
    ROOT/{training,validation,test}/labels/label_s{ID}.png        8-bit, vessel where value >= 100
    ROOT/training/scribble_labels/{SALE,RDFA}/label_s{ID}.png     {0 bg, 1 vessel, 255 unannotated}
    ROOT/{training,validation,test}/fov/fov_s{ID}.png             optional field of view, inside where >= 100
    ROOT/unlabeled_DSA/image_s{ID}_i{f}.png                       (or unlabeled_DSA/images/...)

A field-of-view mask is not part of the DIAS release (its metrics count every pixel); 2D vessel data
sets imported with ``dias import`` (fundus images: DRIVE) bring one, and every metric is then computed
inside it. A split holds a mask for every sequence or for none.

IDs are global across splits. Frames per sequence vary (4-14 in DIAS; 1 is accepted so that
single-frame vessel data sets work too); frame numbers sort as integers (i10 after i9) and must
run 0..T-1 without gaps. Labels are binarised at >= 100 (the reference preprocessing threshold).
Every bad input raises ``ValueError`` naming the file and the fault; a frame or label named as
above with another extension (``image_s0_i13.jpg``) is such a fault, never silently left out.

Colour PNGs: a label whose channels differ (red vessels on black) is read channel-wise, a pixel is
vessel when its brightest channel is >= 100 (a luminance conversion would turn pure red, 76, into
background); frames in colour are converted to luminance. Both cases warn once per file.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("training", "validation", "test", "unlabeled")
LABEL_THRESHOLD = 100  # label pixel >= 100 -> vessel (reference: `label >= 100 -> 255`)
SCRIBBLE_VALUES = (0, 1, 255)  # background, vessel, unannotated
SCRIBBLE_FOLDERS = {"rdfa": "RDFA", "sale": "SALE"}  # scribble name -> folder in scribble_labels/

_FRAME_RE = re.compile(r"^image_s(\d+)_i(\d+)\.png$")
_LABEL_RE = re.compile(r"^label_s(\d+)\.png$")
_FOV_RE = re.compile(r"^fov_s(\d+)\.png$")
_EXTENSION_RE = re.compile(r"^(image_s\d+_i\d+|label_s\d+|fov_s\d+)\.(?!png$)[^.]+$")  # a frame/label name, not .png


def _check_extension(path: Path) -> None:
    """A file named like a frame or label but not ``.png`` would be left out of its sequence."""
    if _EXTENSION_RE.match(path.name):
        raise ValueError(f"{path}: frames and labels must be .png files (named {path.stem}.png); convert it, "
                         f"or move it out of the folder")


@dataclass
class SequenceFiles:
    """Paths of one sequence (nothing read yet). ``frames`` sorted by integer frame number."""

    split: str
    seq_id: int
    frames: list[Path]
    label: Path | None = None
    scribbles: dict[str, Path] = field(default_factory=dict)
    fov: Path | None = None


@dataclass
class Sequence:
    """One decoded sequence.

    frames    uint8 (T, H, W)
    label     uint8 {0,1} (H, W), or None (unlabeled split)
    scribbles name ("rdfa", "sale") -> uint8 (H, W) with values {0, 1, 255}
    source    the files it was read from (frames, then label, scribbles and field of view)
    fov       uint8 {0,1} (H, W) field of view, or None (every pixel counts)
    """

    split: str
    seq_id: int
    frames: np.ndarray
    label: np.ndarray | None
    scribbles: dict[str, np.ndarray]
    source: list[str]
    fov: np.ndarray | None = None


def split_dir(root: str | Path, split: str) -> Path:
    """Folder of ``split`` under ``root`` (``unlabeled`` -> ``unlabeled_DSA``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return Path(root) / ("unlabeled_DSA" if split == "unlabeled" else split)


def _image_dir(root: Path, split: str) -> Path:
    base = split_dir(root, split)
    if split == "unlabeled" and not (base / "images").is_dir():
        return base  # flat unlabeled_DSA/
    return base / "images"


def _ids_in(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    out: dict[int, Path] = {}
    if folder.is_dir():
        for path in folder.iterdir():
            _check_extension(path)
            match = pattern.match(path.name)
            if match:
                out[int(match.group(1))] = path
    return out


def list_sequences(root: str | Path, split: str) -> list[SequenceFiles]:
    """Paths of every sequence of ``split`` under ``root``, sorted by ID.

    Raises ValueError naming the folder/file for: a missing or empty split, a gap in frame
    numbers, a duplicate frame number, a label with no frames, frames with no label.
    """
    root = Path(root)
    image_dir = _image_dir(root, split)
    if not image_dir.is_dir():
        raise ValueError(f"{image_dir}: split {split!r} has no image folder")
    frames_by_id: dict[int, dict[int, Path]] = {}
    for path in image_dir.iterdir():
        _check_extension(path)
        match = _FRAME_RE.match(path.name)
        if not match:
            continue
        seq_id, frame = int(match.group(1)), int(match.group(2))
        seen = frames_by_id.setdefault(seq_id, {})
        if frame in seen:
            raise ValueError(f"{path}: frame number {frame} of sequence s{seq_id} also given by {seen[frame].name}")
        seen[frame] = path
    if not frames_by_id:
        raise ValueError(f"{image_dir}: split {split!r} has no sequences (no image_s{{ID}}_i{{f}}.png files)")
    labels: dict[int, Path] = {}
    scribbles: dict[str, dict[int, Path]] = {}
    if split != "unlabeled":
        label_dir = split_dir(root, split) / "labels"
        labels = _ids_in(label_dir, _LABEL_RE)
        for seq_id, path in sorted(labels.items()):
            if seq_id not in frames_by_id:
                raise ValueError(f"{path}: label of sequence s{seq_id} has no frames in {image_dir}")
        for seq_id in sorted(frames_by_id):
            if seq_id not in labels:
                raise ValueError(f"{label_dir / f'label_s{seq_id}.png'}: missing; sequence s{seq_id} has frames but no label")
        for name, folder in SCRIBBLE_FOLDERS.items():
            found = _ids_in(split_dir(root, split) / "scribble_labels" / folder, _LABEL_RE)
            for seq_id, path in sorted(found.items()):
                if seq_id not in frames_by_id:
                    raise ValueError(f"{path}: scribble of sequence s{seq_id} has no frames in {image_dir}")
            if found:
                scribbles[name] = found
    fovs = _ids_in(split_dir(root, split) / "fov", _FOV_RE) if split != "unlabeled" else {}
    for seq_id, path in sorted(fovs.items()):
        if seq_id not in frames_by_id:
            raise ValueError(f"{path}: field of view of sequence s{seq_id} has no frames in {image_dir}")
    if fovs:
        for seq_id in sorted(frames_by_id):
            if seq_id not in fovs:
                raise ValueError(f"{split_dir(root, split) / 'fov' / f'fov_s{seq_id}.png'}: missing; a split gives a "
                                 f"field of view for every sequence or for none")
    out = []
    for seq_id in sorted(frames_by_id):
        by_number = frames_by_id[seq_id]
        numbers = sorted(by_number)
        if numbers != list(range(len(numbers))):
            missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
            raise ValueError(f"{image_dir / f'image_s{seq_id}_i{missing[0]}.png'}: missing; frame numbers of "
                             f"sequence s{seq_id} must run 0..T-1 without gaps, found {numbers}")
        out.append(SequenceFiles(
            split=split, seq_id=seq_id, frames=[by_number[n] for n in numbers], label=labels.get(seq_id),
            scribbles={name: found[seq_id] for name, found in scribbles.items() if seq_id in found},
            fov=fovs.get(seq_id),
        ))
    return out


def read_png_gray(path: str | Path, *, colour: str = "luminance") -> np.ndarray:
    """8-bit PNG -> uint8 (H, W). Unreadable/truncated files and non-8-bit modes are ValueErrors.

    colour: how an image whose colour channels differ becomes one channel, with a warning:
    "luminance" (frames) or "max" (labels: the brightest channel, so coloured strokes stay strokes).
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "L":
                array = np.asarray(image)
            elif image.mode in ("RGB", "RGBA", "LA", "P"):
                rgb = np.asarray(image.convert("RGB"))  # alpha dropped, palette expanded
                coloured = bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())
                if not coloured:
                    array = rgb[..., 0]
                elif colour == "max":
                    array = rgb.max(axis=-1)
                    warnings.warn(f"{path}: colour label ({image.mode}); a pixel is vessel when its brightest "
                                  f"channel is >= {LABEL_THRESHOLD}", stacklevel=2)
                else:
                    array = np.asarray(image.convert("L"))
                    warnings.warn(f"{path}: colour frame ({image.mode}); converted to luminance", stacklevel=2)
            else:
                raise ValueError(f"{path}: PNG mode {image.mode!r} is not 8-bit grayscale")
    except ValueError:
        raise
    except Exception as err:  # PIL raises OSError / SyntaxError / UnidentifiedImageError on bad bytes
        raise ValueError(f"{path}: unreadable or truncated PNG ({type(err).__name__}: {err})") from None
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D grayscale image, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.uint8)


def read_label(path: str | Path) -> np.ndarray:
    """Label PNG -> uint8 (H, W) in {0, 1}: pixel >= ``LABEL_THRESHOLD`` is vessel (as the reference);
    for a colour label, the brightest channel is compared (see the module docstring)."""
    return (read_png_gray(path, colour="max") >= LABEL_THRESHOLD).astype(np.uint8)


def read_sequence(files: SequenceFiles) -> Sequence:
    """Read frames, label and scribbles of one sequence; see ``Sequence`` for shapes and dtypes."""
    frames = []
    for path in files.frames:
        frame = read_png_gray(path)
        if frames and frame.shape != frames[0].shape:
            raise ValueError(f"{path}: frame size {frame.shape} differs from {files.frames[0].name} "
                             f"{frames[0].shape} in sequence s{files.seq_id}")
        frames.append(frame)
    frames_thw = np.stack(frames)
    size = frames_thw.shape[1:]
    label = None
    source = [str(p) for p in files.frames]
    if files.label is not None:
        label = read_label(files.label)
        if label.shape != size:
            raise ValueError(f"{files.label}: label size {label.shape} differs from frame size {size}")
        source.append(str(files.label))
    scribbles = {}
    for name, path in files.scribbles.items():
        raw = read_png_gray(path)
        if raw.shape != size:
            raise ValueError(f"{path}: scribble size {raw.shape} differs from frame size {size}")
        bad = np.setdiff1d(np.unique(raw), SCRIBBLE_VALUES)
        if bad.size:
            raise ValueError(f"{path}: scribble values must be in {{0 background, 1 vessel, 255 unannotated}}, "
                             f"found {bad[:10].tolist()}")
        scribbles[name] = raw
        source.append(str(path))
    fov = None
    if files.fov is not None:
        fov = read_label(files.fov)
        if fov.shape != size:
            raise ValueError(f"{files.fov}: field-of-view size {fov.shape} differs from frame size {size}")
        if not fov.any():
            raise ValueError(f"{files.fov}: field of view is empty (no pixel >= {LABEL_THRESHOLD})")
        source.append(str(files.fov))
    return Sequence(files.split, files.seq_id, frames_thw, label, scribbles, source, fov)


def read_split(root: str | Path, split: str) -> list[Sequence]:
    """Every sequence of ``split``, read and validated, sorted by ID."""
    return [read_sequence(files) for files in list_sequences(root, split)]
