"""Any 2D vessel data set (one image per case, a vessel mask, optionally a field-of-view mask) into
the DIAS release layout as single-frame sequences, so that `dias shard`, training, `dias evaluate`
and `dias predict` take it as they take DSA (``dias import``; the real-vessel benchmark is DRIVE).

Source layout: a folder of images, a folder of masks and optionally a folder of field-of-view masks,
matched by file stem (``21.png`` <-> ``21.gif``); with ``split="folders"`` one such set per split
folder (``training/``, ``test/``). Output (``dias_dist.data.dias``)::

    OUT/{training,validation,test}/images/image_s{ID}_i0.png   8-bit grey (one channel: ``channel``)
    OUT/{training,validation,test}/labels/label_s{ID}.png      0/255 (mask pixel >= 128)
    OUT/{training,validation,test}/fov/fov_s{ID}.png           0/255, when field-of-view masks are given
    OUT/import.json                                            source file of every ID, split rule, channel

Splits: ``folders`` (the data set's own train/test folders; ``val`` training cases, drawn with
``seed``, become the validation split), ``random`` (``fractions`` of the cases, drawn with ``seed``)
or ``lists`` (text files naming the stems of each split). IDs count from 0 over training,
validation and test, each sorted by stem. Every mismatch is a ValueError naming the file: an image
without a mask or a mask without an image, two files of one stem in a folder, a size mismatch, a
colour mask, an empty field of view, a stem in two split lists. Preprocessing choices and the
reference's defaults: docs/DECISIONS.md ("2D vessel data sets").
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dias_dist.data.dias import SPLITS

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".bmp", ".ppm")
CHANNELS = ("grey", "green")
SPLIT_RULES = ("folders", "random", "lists")
MASK_THRESHOLD = 128  # mask pixel >= 128 -> vessel / inside (DRIVE's GIF masks are 0/255)


@dataclass(frozen=True)
class Case:
    """One image with its masks (paths; nothing read yet)."""

    stem: str
    image: Path
    mask: Path
    fov: Path | None


def files_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem; ValueError when the folder is missing or two files share a stem."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in out:
            raise ValueError(f"{path}: duplicate name: {out[path.stem].name} has the same stem {path.stem!r}")
        out[path.stem] = path
    if not out:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return out


def match_cases(root: Path, images: str, masks: str, fov: str | None) -> list[Case]:
    """Cases of one source set under ``root`` (sub-folders ``images``, ``masks``, ``fov``), sorted by stem."""
    found = files_by_stem(root / images)
    labels = files_by_stem(root / masks)
    fovs = files_by_stem(root / fov) if fov else {}
    for stem, path in found.items():
        if stem not in labels:
            raise ValueError(f"{root / masks}: no mask for image {path} (masks are matched by file stem, {stem!r})")
        if fov and stem not in fovs:
            raise ValueError(f"{root / fov}: no field-of-view mask for image {path}")
    for folder, paths in ((masks, labels), (fov, fovs)):
        for stem, path in paths.items():
            if stem not in found:
                raise ValueError(f"{path}: no image of stem {stem!r} in {root / images}")
    return [Case(stem, found[stem], labels[stem], fovs.get(stem)) for stem in sorted(found)]


def read_image(path: Path, channel: str) -> np.ndarray:
    """uint8 (H, W): the luminance (``grey``) or the green channel (``green``) of an image file."""
    if channel not in CHANNELS:
        raise ValueError(f"channel {channel!r}: choose one of {', '.join(CHANNELS)}")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "RGB", "RGBA", "P", "LA", "I;16", "I"):
                raise ValueError(f"image mode {image.mode!r} is not supported")
            if channel == "green" and image.mode in ("RGB", "RGBA", "P"):
                return np.asarray(image.convert("RGB"))[..., 1].copy()
            if image.mode in ("I;16", "I"):
                array = np.asarray(image, dtype=np.float64)
                return np.round(255 * (array - array.min()) / max(array.max() - array.min(), 1)).astype(np.uint8)
            return np.asarray(image.convert("L")).copy()
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    except Exception as err:  # PIL: OSError / UnidentifiedImageError on bad bytes
        raise ValueError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None


def read_mask(path: Path, what: str) -> np.ndarray:
    """bool (H, W) of a grey or binary mask file; a colour mask is an error (which colour is vessel?)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGB", "RGBA", "P"):
                rgb = np.asarray(image.convert("RGB"))
                if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any():
                    raise ValueError(f"colour {what} ({image.mode}); give a grey or binary mask (0 outside, 255 inside)")
                array = rgb[..., 0]
            else:
                array = np.asarray(image.convert("L"))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path}: unreadable {what} ({type(err).__name__}: {err})") from None
    return array >= MASK_THRESHOLD


def assign_splits(sets: dict[str, list[Case]], rule: str, *, val: int = 0, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                  lists: dict[str, list[str]] | None = None) -> dict[str, list[Case]]:
    """{"training", "validation", "test"} -> cases, by ``rule`` (module docstring).

    sets: ``folders``: {"training": cases, "test": cases}; otherwise {"all": cases}.
    """
    rng = np.random.default_rng(seed)
    if rule == "folders":
        training = list(sets["training"])
        if not 0 <= val < len(training):
            raise ValueError(f"--val {val}: need 0 <= val < {len(training)} (the training cases)")
        chosen = set(rng.choice(len(training), size=val, replace=False).tolist()) if val else set()
        return {"training": [c for i, c in enumerate(training) if i not in chosen],
                "validation": [c for i, c in enumerate(training) if i in chosen], "test": list(sets["test"])}
    cases = list(sets["all"])
    if rule == "random":
        if len(fractions) != 3 or any(f < 0 for f in fractions) or not abs(sum(fractions) - 1) < 1e-6:
            raise ValueError(f"--fractions {fractions}: three non-negative numbers (train, val, test) adding up to 1")
        order = rng.permutation(len(cases))
        n_train = int(round(fractions[0] * len(cases)))
        n_val = int(round(fractions[1] * len(cases)))
        pick = lambda idx: sorted((cases[i] for i in idx), key=lambda c: c.stem)  # noqa: E731
        return {"training": pick(order[:n_train]), "validation": pick(order[n_train:n_train + n_val]),
                "test": pick(order[n_train + n_val:])}
    if rule == "lists":
        by_stem = {c.stem: c for c in cases}
        out, seen = {}, {}
        for split in ("training", "validation", "test"):
            out[split] = []
            for stem in (lists or {}).get(split, []):
                if stem not in by_stem:
                    raise ValueError(f"split list {split}: {stem!r} is not an image stem of the source")
                if stem in seen:
                    raise ValueError(f"split list {split}: {stem!r} is in the {seen[stem]} list too")
                seen[stem] = split
                out[split].append(by_stem[stem])
        return out
    raise ValueError(f"split rule {rule!r}: choose one of {', '.join(SPLIT_RULES)}")


def write_release(splits: dict[str, list[Case]], out: Path, *, channel: str, record: dict) -> dict:
    """Write the layout of the module docstring into ``out`` (refused when it exists and is not empty;
    written beside it and renamed into place when complete). Returns the import record."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; choose another output or remove it")
    stage = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    ids: dict[str, dict] = {}
    try:
        next_id = 0
        for split in ("training", "validation", "test"):
            assert split in SPLITS
            for case in splits.get(split, []):
                image = read_image(case.image, channel)
                mask = read_mask(case.mask, "vessel mask")
                if mask.shape != image.shape:
                    raise ValueError(f"{case.mask}: size {mask.shape[::-1]} differs from image {case.image} "
                                     f"{image.shape[::-1]} (width, height)")
                base = stage / split
                for folder in ("images", "labels") + (("fov",) if case.fov else ()):
                    (base / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(base / "images" / f"image_s{next_id}_i0.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(base / "labels" / f"label_s{next_id}.png")
                entry = {"split": split, "stem": case.stem, "image": str(case.image), "mask": str(case.mask)}
                if case.fov is not None:
                    fov = read_mask(case.fov, "field-of-view mask")
                    if fov.shape != image.shape:
                        raise ValueError(f"{case.fov}: size {fov.shape[::-1]} differs from image {case.image} "
                                         f"{image.shape[::-1]} (width, height)")
                    if not fov.any():
                        raise ValueError(f"{case.fov}: field of view is empty")
                    Image.fromarray(fov.astype(np.uint8) * 255).save(base / "fov" / f"fov_s{next_id}.png")
                    entry["fov"] = str(case.fov)
                ids[str(next_id)] = entry
                next_id += 1
        record = {**record, "channel": channel, "ids": ids,
                  "counts": {split: len(splits.get(split, [])) for split in ("training", "validation", "test")}}
        (stage / "import.json").write_text(json.dumps(record, indent=1))
        if out.exists():
            out.rmdir()
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return record


def import_dataset(src: str | Path, out: str | Path, *, images: str = "images", masks: str = "masks",
                   fov: str | None = None, split: str = "folders", train_dir: str = "training",
                   test_dir: str = "test", val: int = 0, seed: int = 0,
                   fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                   lists: dict[str, list[str]] | None = None, channel: str = "grey") -> dict:
    """``dias import``: read, match and split the source, write the release layout; returns the record."""
    src = Path(src)
    if channel not in CHANNELS:
        raise ValueError(f"--channel {channel!r}: choose one of {', '.join(CHANNELS)}")
    if split == "folders":
        sets = {"training": match_cases(src / train_dir, images, masks, fov),
                "test": match_cases(src / test_dir, images, masks, fov)}
    elif split in SPLIT_RULES:
        sets = {"all": match_cases(src, images, masks, fov)}
    else:
        raise ValueError(f"--split {split!r}: choose one of {', '.join(SPLIT_RULES)}")
    chosen = assign_splits(sets, split, val=val, seed=seed, fractions=fractions, lists=lists)
    record = {"source": str(src.resolve()), "split_rule": split, "seed": seed, "val": val,
              "fractions": list(fractions) if split == "random" else None}
    return write_release(chosen, Path(out), channel=channel, record=record)
