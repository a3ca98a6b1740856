"""``dias score PRED_DIR LABEL_DIR``: score any tool's probability maps with the paper's metrics.

Predictions: ``<name>.npy`` (2-D float in [0, 1]) or ``<name>.png`` (8-bit / 16-bit grayscale,
divided by 255 / 65535). Labels: ``<name>.png`` 8-bit grayscale, matched by file name (stem).
A label holding only the values {0, 1} is a 0/1 mask; otherwise vessel = value >= ``--label-threshold``
(100, the DIAS release rule). Every prediction needs a label and every label a prediction.
Writes a per-image CSV and prints the mean ± std table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from dias_dist.evaluation.tables import summarize, summary_markdown, write_csv
from dias_dist.metrics import METRIC_NAMES, image_metrics

PREDICTION_SUFFIXES = (".npy", ".png")


def read_probability(path: str | Path) -> np.ndarray:
    """A prediction file -> float32 (H, W) in [0, 1]; bad shapes, dtypes or ranges are ValueErrors."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            prob = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path}: not a plain numpy array ({err})") from None
        if prob.ndim != 2 or not np.issubdtype(prob.dtype, np.floating):
            raise ValueError(f"{path}: expected a 2-D float array, got {prob.dtype} {prob.shape}")
        if not np.all(np.isfinite(prob)) or prob.min() < 0 or prob.max() > 1:
            raise ValueError(f"{path}: probabilities must be finite and in [0, 1], "
                             f"got range [{np.nanmin(prob)}, {np.nanmax(prob)}]")
        return prob.astype(np.float32, copy=False)
    if path.suffix == ".png":
        pixels = _read_gray_png(path)
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}[pixels.dtype]
        return (pixels.astype(np.float32) / scale).astype(np.float32)
    raise ValueError(f"{path}: prediction must be .npy or .png")


def _read_gray_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        mode = image.mode
        if mode == "L":
            return np.asarray(image, dtype=np.uint8)
        if mode in ("I;16", "I;16B"):
            return np.asarray(image).astype(np.uint16)
    raise ValueError(f"{path}: expected an 8-bit or 16-bit single-channel PNG, got PIL mode {mode!r}")


def read_label(path: str | Path, label_threshold: int = 100) -> np.ndarray:
    """A label PNG -> uint8 {0, 1} (H, W) (see module docstring for the rule)."""
    path = Path(path)
    pixels = _read_gray_png(path)
    if pixels.size and pixels.max() <= 1:
        return pixels.astype(np.uint8)
    return (pixels >= label_threshold).astype(np.uint8)


def match_files(pred_dir: Path, label_dir: Path) -> list[tuple[str, Path, Path]]:
    """[(name, prediction path, label path)] sorted by name; any unmatched or doubled name is a ValueError."""
    for folder, what in ((pred_dir, "prediction"), (label_dir, "label")):
        if not folder.is_dir():
            raise ValueError(f"{what} folder {folder} does not exist")
    predictions: dict[str, Path] = {}
    for path in sorted(pred_dir.iterdir()):
        if path.suffix in PREDICTION_SUFFIXES and path.is_file():
            if path.stem in predictions:
                raise ValueError(f"{pred_dir}: two predictions named {path.stem!r} "
                                 f"({predictions[path.stem].name}, {path.name})")
            predictions[path.stem] = path
    labels = {path.stem: path for path in sorted(label_dir.glob("*.png")) if path.is_file()}
    if not predictions:
        raise ValueError(f"{pred_dir}: no .npy or .png predictions")
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
                  label_threshold: int = 100) -> list[dict]:
    """Per-image rows ``{"name", dsc ... vc}`` for matched prediction / label files."""
    rows = []
    for name, pred_path, label_path in match_files(Path(pred_dir), Path(label_dir)):
        prob = read_probability(pred_path)
        label = read_label(label_path, label_threshold)
        if prob.shape != label.shape:
            raise ValueError(f"size mismatch for {name!r}: prediction {pred_path} is {prob.shape[1]}x{prob.shape[0]}, "
                             f"label {label_path} is {label.shape[1]}x{label.shape[0]} (width x height)")
        rows.append({"name": name, **image_metrics(prob, label, threshold, dti)})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred_dir", metavar="PRED_DIR", help="folder of <name>.npy / <name>.png probability maps")
    parser.add_argument("label_dir", metavar="LABEL_DIR", help="folder of <name>.png labels")
    parser.add_argument("--dti", action="store_true", help="dual-threshold iteration (0.5/0.3, 8-connected)")
    parser.add_argument("--threshold", type=float, default=0.5, help="binarisation threshold (default 0.5)")
    parser.add_argument("--label-threshold", type=int, default=100,
                        help="label pixel value counted as vessel, for non-0/1 labels (default 100)")
    parser.add_argument("--out", default=None, help="per-image CSV (default: PRED_DIR/scores.csv)")


def main(args: argparse.Namespace) -> int:
    if not 0.0 < args.threshold < 1.0:
        raise ValueError(f"--threshold must be in (0, 1), got {args.threshold}")
    rows = score_folders(args.pred_dir, args.label_dir, threshold=args.threshold, dti=args.dti,
                         label_threshold=args.label_threshold)
    out = Path(args.out) if args.out else Path(args.pred_dir) / "scores.csv"
    write_csv(rows, out, ["name", *METRIC_NAMES])
    print(f"{len(rows)} images scored; per-image metrics in {out}")
    print(summary_markdown(summarize(rows)), end="")
    return 0
