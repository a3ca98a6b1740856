"""``dias score PRED_DIR LABEL_DIR``: score any tool's probability maps with the paper's metrics.

Predictions, matched to labels by file name (stem):

- ``<name>.npy``: 2-D float in [0, 1] (a NaN is an error that says how many there are);
- ``<name>.npz``: an nnU-Net probability file, the class-1 channel of its ``probabilities`` array;
- ``<name>.png`` (8- or 16-bit grayscale): only the values {0, 1} is a 0/1 mask; otherwise 8-bit is a
  0-255 and 16-bit a 0-65535 probability. Values that fit neither (small integers such as {0, 1, 2}
  that look like class ids, or a 16-bit file holding only 8-bit values) are an error;
  ``--pred-scale S`` overrides the rule (probability = value / S).

A ``dias predict`` output folder is read directly: each ``PRED_DIR/<name>/`` that carries predict's
marker (``.dias-predict``) contributes its ``prob.npy`` as prediction ``<name>`` (and its ``mask.png`` is
not read: the metrics threshold the probability as ``--threshold`` / ``--dti`` say).

Labels: ``<name>.png`` 8- or 16-bit grayscale. Only {0, 1}: a 0/1 mask; otherwise vessel = value >=
``--label-threshold`` (100, the DIAS release rule). A label with non-zero values that all lie below
the threshold (class ids such as {0, 1, 2}) would be all background, so it is an error that names the
values (``--label-threshold 1`` makes every non-zero id vessel). A label without any vessel pixel is
scored with a warning (DSC, sensitivity and clDice of such an image are 0 or undefined).
Every prediction needs a label and every label a prediction. Writes a per-image CSV and prints the
mean ± std table.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from dias_dist.evaluation.tables import summarize, summary_markdown, write_csv
from dias_dist.metrics import METRIC_NAMES, image_metrics
from dias_dist.predict.writers import is_predict_result

PREDICTION_SUFFIXES = (".npy", ".npz", ".png")
CLASS_ID_MAX = 16  # an 8-bit PNG whose values all lie below this (and are not just {0, 1}) looks like class ids


def _checked_probability(prob: np.ndarray, path: Path) -> np.ndarray:
    if prob.ndim != 2 or not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"{path}: expected a 2-D float array, got {prob.dtype} {prob.shape}")
    nan = int(np.count_nonzero(np.isnan(prob)))
    if nan:
        raise ValueError(f"{path}: {nan} of {prob.size} probabilities are NaN")
    if not np.all(np.isfinite(prob)) or prob.min() < 0 or prob.max() > 1:
        raise ValueError(f"{path}: probabilities must be finite and in [0, 1], got range [{prob.min()}, {prob.max()}]")
    return prob.astype(np.float32, copy=False)


def read_probability(path: str | Path, pred_scale: float | None = None) -> np.ndarray:
    """A prediction file -> float32 (H, W) in [0, 1] (rules: module docstring); bad shapes, dtypes,
    values or ranges are ValueErrors naming the file."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            prob = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path}: not a plain numpy array ({err})") from None
        return _checked_probability(prob, path)
    if path.suffix == ".npz":
        return _checked_probability(_nnunet_vessel_channel(path), path)
    if path.suffix == ".png":
        pixels = _read_gray_png(path)
        if pred_scale is not None:
            if pred_scale <= 0 or pixels.max(initial=0) > pred_scale:
                raise ValueError(f"{path}: --pred-scale {pred_scale} must be > 0 and at least the largest "
                                 f"value {pixels.max(initial=0)}")
            return (pixels.astype(np.float64) / pred_scale).astype(np.float32)
        values = np.unique(pixels)
        if values.size and values.max() <= 1:
            return pixels.astype(np.float32)  # a 0/1 mask
        if pixels.dtype == np.uint8 and values.max() < CLASS_ID_MAX:
            raise ValueError(f"{path}: values {values.tolist()[:10]} are neither a 0/1 mask nor a 0-255 "
                             f"probability (class ids?); convert it or give --pred-scale")
        if pixels.dtype == np.uint16 and values.max() <= 255:
            raise ValueError(f"{path}: 16-bit PNG holding only values up to {values.max()}: neither a 0/1 mask "
                             f"nor a 0-65535 probability; give --pred-scale (e.g. 255)")
        scale = 255.0 if pixels.dtype == np.uint8 else 65535.0
        return (pixels.astype(np.float32) / scale).astype(np.float32)
    raise ValueError(f"{path}: prediction must be .npy, .npz or .png")


def _nnunet_vessel_channel(path: Path) -> np.ndarray:
    """nnU-Net's ``probabilities`` (C, H, W) or (C, 1, H, W) -> channel 1 as float32 (H, W)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "probabilities" not in archive.files:
                raise ValueError(f"{path}: no 'probabilities' array (keys: {', '.join(archive.files) or 'none'})")
            prob = archive["probabilities"]
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 — a truncated or foreign archive
        raise ValueError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") from None
    if prob.ndim == 4 and prob.shape[1] == 1:
        prob = prob[:, 0]
    if prob.ndim != 3 or prob.shape[0] < 2:
        raise ValueError(f"{path}: 'probabilities' must be (classes >= 2, H, W) or (classes, 1, H, W), "
                         f"got {prob.shape}")
    return np.asarray(prob[1], dtype=np.float32)


def _read_gray_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        mode = image.mode
        if mode == "L":
            return np.asarray(image, dtype=np.uint8)
        if mode in ("I;16", "I;16B"):
            return np.asarray(image).astype(np.uint16)
    raise ValueError(f"{path}: expected an 8-bit or 16-bit single-channel PNG, got PIL mode {mode!r}")


def read_label(path: str | Path, label_threshold: int = 100) -> np.ndarray:
    """A label PNG -> uint8 {0, 1} (H, W) (see module docstring for the rules and the warning)."""
    path = Path(path)
    pixels = _read_gray_png(path)
    if not pixels.any():
        warnings.warn(f"{path}: label has no vessel pixel (all zero); DSC, sensitivity and clDice of this "
                      f"image are 0 or undefined", UserWarning, stacklevel=2)
        return pixels.astype(np.uint8)
    if pixels.max() <= 1:
        return pixels.astype(np.uint8)
    if pixels.max() < label_threshold:
        values = np.unique(pixels).tolist()
        raise ValueError(f"{path}: label values {values[:10]} all lie below --label-threshold {label_threshold}, "
                         f"so the whole label would be background (class ids?); give --label-threshold 1 to "
                         f"count every non-zero value as vessel, or save a 0/1 or 0/255 mask")
    return (pixels >= label_threshold).astype(np.uint8)


def match_files(pred_dir: Path, label_dir: Path) -> list[tuple[str, Path, Path]]:
    """[(name, prediction path, label path)] sorted by name; any unmatched or doubled name is a ValueError."""
    for folder, what in ((pred_dir, "prediction"), (label_dir, "label")):
        if not folder.is_dir():
            raise ValueError(f"{what} folder {folder} does not exist")
    predictions: dict[str, Path] = {}
    for path in sorted(pred_dir.iterdir()):
        if is_predict_result(path) and (path / "prob.npy").is_file():  # a dias predict result folder
            if path.name in predictions:
                raise ValueError(f"{pred_dir}: two predictions named {path.name!r} "
                                 f"({predictions[path.name].name}, {path.name}/prob.npy)")
            predictions[path.name] = path / "prob.npy"
            continue
        if path.suffix in PREDICTION_SUFFIXES and path.is_file():
            if path.stem in predictions:
                raise ValueError(f"{pred_dir}: two predictions named {path.stem!r} "
                                 f"({predictions[path.stem].name}, {path.name})")
            predictions[path.stem] = path
    labels = {path.stem: path for path in sorted(label_dir.glob("*.png")) if path.is_file()}
    if not predictions:
        raise ValueError(f"{pred_dir}: no .npy, .npz or .png predictions and no dias predict result folders")
    missing_labels = sorted(set(predictions) - set(labels))
    missing_predictions = sorted(set(labels) - set(predictions))
    if missing_labels or missing_predictions:
        problems = []
        if missing_labels:
            problems.append(f"no label in {label_dir} for {_names(missing_labels)}")
        if missing_predictions:
            problems.append(f"no prediction in {pred_dir} for {_names(missing_predictions)}")
        raise ValueError("file names do not match: " + "; ".join(problems))
    return [(name, predictions[name], labels[name]) for name in sorted(predictions)]


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def score_folders(pred_dir: str | Path, label_dir: str | Path, *, threshold: float = 0.5, dti: bool = False,
                  label_threshold: int = 100, pred_scale: float | None = None,
                  fov_dir: str | Path | None = None) -> list[dict]:
    """Per-image rows ``{"name", dsc ... vc}`` for matched prediction / label files; with ``fov_dir``
    (``<name>.png`` field-of-view masks, inside where >= 128) every metric counts the field of view
    only, as ``dias evaluate`` does for an imported data set, and rows get ``"fov": True``."""
    rows = []
    for name, pred_path, label_path in match_files(Path(pred_dir), Path(label_dir)):
        prob = read_probability(pred_path, pred_scale)
        label = read_label(label_path, label_threshold)
        if prob.shape != label.shape:
            raise ValueError(f"size mismatch for {name!r}: prediction {pred_path} is {prob.shape[1]}x{prob.shape[0]}, "
                             f"label {label_path} is {label.shape[1]}x{label.shape[0]} (width x height)")
        fov = None if fov_dir is None else _read_fov(Path(fov_dir) / f"{name}.png", label.shape)
        row = {"name": name, **image_metrics(prob, label, threshold, dti, fov=fov)}
        if fov is not None:
            row["fov"] = True
        rows.append(row)
    return rows


def _read_fov(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """uint8 {0, 1} (H, W) field of view from ``path``; ValueError naming it when missing, of another size or empty."""
    if not path.is_file():
        raise ValueError(f"{path}: no field-of-view mask for this image (--fov names a folder of <name>.png)")
    fov = (read_label(path, 128) > 0).astype(np.uint8)
    if fov.shape != shape:
        raise ValueError(f"{path}: field of view {fov.shape[1]}x{fov.shape[0]} differs from the label "
                         f"{shape[1]}x{shape[0]} (width x height)")
    if not fov.any():
        raise ValueError(f"{path}: field of view is empty")
    return fov


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred_dir", metavar="PRED_DIR",
                        help="folder of <name>.npy / .npz (nnU-Net) / .png probability maps or masks, or a dias "
                             "predict --out folder (<name>/prob.npy)")
    parser.add_argument("label_dir", metavar="LABEL_DIR", help="folder of <name>.png labels")
    parser.add_argument("--dti", action="store_true", help="dual-threshold iteration (0.5/0.3, 8-connected)")
    parser.add_argument("--threshold", type=float, default=0.5, help="binarisation threshold (default 0.5)")
    parser.add_argument("--label-threshold", type=int, default=100,
                        help="label pixel value counted as vessel, for non-0/1 labels (default 100)")
    parser.add_argument("--pred-scale", type=float, default=None,
                        help="PNG predictions: probability = value / this (overrides the 0/1 mask and 0-255 rule)")
    parser.add_argument("--fov", default=None, metavar="FOV_DIR",
                        help="folder of <name>.png field-of-view masks: every metric inside them (DRIVE protocol)")
    parser.add_argument("--out", default=None, help="per-image CSV (default: PRED_DIR/scores.csv)")


def main(args: argparse.Namespace) -> int:
    if not 0.0 < args.threshold < 1.0:
        raise ValueError(f"--threshold must be in (0, 1), got {args.threshold}")
    rows = score_folders(args.pred_dir, args.label_dir, threshold=args.threshold, dti=args.dti,
                         label_threshold=args.label_threshold, pred_scale=args.pred_scale, fov_dir=args.fov)
    out = Path(args.out) if args.out else Path(args.pred_dir) / "scores.csv"
    write_csv(rows, out, ["name", *METRIC_NAMES, *(["fov"] if args.fov else [])])
    print(f"{len(rows)} images scored{' inside each field of view' if args.fov else ''}; per-image metrics in {out}")
    print(summary_markdown(summarize(rows)), end="")
    return 0
