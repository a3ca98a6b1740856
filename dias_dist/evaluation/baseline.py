"""``dias baseline``: a trivial, training-free vessel segmenter to put model numbers in context.

Minimum-intensity projection (MinIP, ``np.min`` over frames as the DIAS ``MIP.py``): contrast-filled
vessels are dark in DSA, and the MinIP keeps every vessel at its darkest moment. The MinIP is
turned into a vessel "probability" by a monotone decreasing piecewise-linear map that sends the
image's Otsu level to 0.5, its minimum to 1 and its maximum to 0; thresholding that at 0.5 is
Otsu-thresholding the MinIP, and AUC (rank-based) is that of the raw inverted MinIP.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skimage.filters import threshold_otsu

from dias_dist.config import EvalConfig


def minip_probability(image_THW) -> np.ndarray:
    """float32 (T, H, W) frames -> float32 (H, W) in [0, 1], >= 0.5 exactly where MinIP <= Otsu level."""
    frames = np.asarray(image_THW, dtype=np.float32)
    if frames.ndim != 3:
        raise ValueError(f"expected a sequence (T, H, W), got shape {frames.shape}")
    minip = frames.min(axis=0)
    low, high = float(minip.min()), float(minip.max())
    if high == low:  # a flat image: nothing to segment
        return np.zeros_like(minip)
    level = float(threshold_otsu(minip))
    prob = np.empty_like(minip)
    dark = minip <= level
    prob[dark] = 0.5 + 0.5 * (level - minip[dark]) / max(level - low, np.finfo(np.float32).tiny)
    prob[~dark] = 0.5 * (high - minip[~dark]) / max(high - level, np.finfo(np.float32).tiny)
    return np.clip(prob, 0.0, 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shard_dir", metavar="SHARD_DIR", help="shard set written by dias shard (a folder or its URL)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--out", default=None, help="output folder for tables, probability maps and overlays")
    parser.add_argument("--dti", action="store_true", help="dual-threshold (0.5/0.3) post-processing")
    parser.add_argument("--no-images", action="store_true", help="write only the tables")


def main(args: argparse.Namespace) -> int:
    from dias_dist.data import loader as data_loader
    from dias_dist.evaluation.evaluate import evaluate_sequences, print_summary

    from dias_dist.data.location import is_local

    shard_dir = args.shard_dir  # a folder or a URL (README, "Shards from anywhere")
    if is_local(shard_dir) and not Path(shard_dir).is_dir():
        raise ValueError(f"shard set {shard_dir} does not exist")
    eval_cfg = EvalConfig(dti=args.dti)
    rows = evaluate_sequences(minip_probability, data_loader.eval_sequences(shard_dir, args.split), eval_cfg,
                              out_dir=args.out, write_images=not args.no_images)
    if not rows:
        raise ValueError(f"split {args.split!r} of shard set {shard_dir} holds no sequences")
    print_summary(rows, f"MinIP-Otsu baseline on {shard_dir} / {args.split}" + (" (DTI)" if args.dti else ""))
    if args.out:
        print(f"wrote {args.out}/metrics.csv, summary.csv, summary.md" + ("" if args.no_images else ", prob/, overlay/"))
    return 0
