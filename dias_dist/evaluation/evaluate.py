"""The paper's test protocol over a split of a shard set, spread over ranks (docs/REFERENCE.md §5).

Each rank evaluates its own disjoint share of the sequences (``dias_dist.data.loader.eval_sequences``
splits them), the per-image rows are gathered on every rank, and rank 0 alone writes:

    OUT/metrics.csv          one row per image (key, id, dsc ... vc), full precision
    OUT/summary.csv / .md    mean ± population std over images
    OUT/prob/<key>.npy       float32 (H, W) vessel probability (``dias score`` reads these back)
    OUT/prob_png/<key>.png   the same map to look at (colour bar; image key in the title)
    OUT/overlay/<key>.png    Fig. 7 colours (TP white, FN red, FP green, with a legend) on the
                             sequence's minimum-intensity projection; the image's DSC in the title
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from dias_dist import dist
from dias_dist.config import EvalConfig
from dias_dist.data.shards import check_key
from dias_dist.evaluation.overlay import (anatomy_overlay, write_overlay_figure, write_probability,
                                         write_probability_figure)
from dias_dist.evaluation.tables import summarize, summary_markdown, write_csv, write_summary
from dias_dist.evaluation.tiling import model_predict_fn, sliding_window_probability
from dias_dist.metrics import METRIC_NAMES, binarize, binary_gt, image_metrics
from dias_dist.models import input_layout
from dias_dist.progress import bar

ProbabilityFn = Callable[[object], np.ndarray]  # image float32 (T, H, W) -> prob float32 (H, W)


def evaluate_sequences(probability_fn: ProbabilityFn, sequences: Iterable[dict], eval_cfg: EvalConfig, *,
                       out_dir: str | Path | None = None, write_images: bool = True) -> list[dict]:
    """Score this rank's ``sequences`` and gather the rows of all ranks (sorted by key).

    sequences: dicts ``{"key", "id", "image": float32 (T, H, W), "label": uint8 {0,1} (H, W) or None}``
    and optionally ``"fov"`` uint8 {0,1} (H, W): the metrics then count the field of view only, and
    the row says so (``"fov": True``). Rows of labelled images hold the 8 metrics; unlabelled ones only
    key and id. Raises if any key
    was evaluated twice over all ranks. With ``out_dir`` rank 0 writes the files listed in the
    module docstring (images only when ``write_images``; overlays only when ``eval_cfg.overlays``).
    """
    overlays = out_dir is not None and write_images and eval_cfg.overlays
    local_rows, local_images = [], []
    for sample in sequences:
        prob = np.asarray(probability_fn(sample["image"]), dtype=np.float32)
        label = sample.get("label")
        label = None if label is None else np.asarray(label)
        fov = sample.get("fov")
        fov = None if fov is None else np.asarray(fov)
        row = {"key": str(sample["key"]), "id": sample.get("id")}
        pred_bin = None
        if label is not None:
            pred_bin = binarize(prob, eval_cfg.threshold, eval_cfg.dti)  # once: metrics and overlay share it
            row.update(image_metrics(prob, label, eval_cfg.threshold, eval_cfg.dti, pred_bin=pred_bin, fov=fov))
            if fov is not None:
                row["fov"] = True
        local_rows.append(row)
        if out_dir is not None and write_images:
            overlay = None if not overlays or label is None else anatomy_overlay(sample["image"], pred_bin,
                                                                                 binary_gt(label))
            local_images.append((row["key"], prob, overlay, row.get("dsc")))

    rows = sorted((row for part in dist.all_gather_object(local_rows) for row in part), key=lambda r: r["key"])
    duplicates = sorted(key for key, count in Counter(row["key"] for row in rows).items() if count > 1)
    if duplicates:  # the loader must hand each sequence to exactly one rank
        raise RuntimeError(f"sequences evaluated more than once across ranks: {duplicates[:10]}")
    if out_dir is not None:
        _write_images_on_main(local_images, Path(out_dir))
        if dist.is_main():
            _write_tables(rows, Path(out_dir))
    return rows


def _write_images_on_main(local_images: list, out_dir: Path) -> None:
    """Rank 0 writes every rank's maps; one image per rank per round bounds the memory in flight.

    local_images: (key, prob float32 (H, W), overlay uint8 (H, W, 3) or None, DSC or None) of this rank. Only
    rank 0 receives them (``gather_object``); the round count is agreed on by every rank.
    """
    num_rounds = max(dist.all_gather_object(len(local_images)))
    for index in range(num_rounds):
        item = local_images[index] if index < len(local_images) else None
        for gathered in dist.gather_object(item, dst=0) or []:
            if gathered is None:
                continue
            key, prob, overlay, dsc = gathered
            key = check_key(key, f"writing into {out_dir}")  # keys become file names
            write_probability(prob, out_dir / "prob" / f"{key}.npy")
            write_probability_figure(prob, out_dir / "prob_png" / f"{key}.png", f"{key}: vessel probability")
            if overlay is not None:
                write_overlay_figure(overlay, out_dir / "overlay" / f"{key}.png", f"{key}: DSC {dsc:.3f}")


def _write_tables(rows: list[dict], out_dir: Path) -> None:
    labelled = all(name in row for row in rows for name in METRIC_NAMES)
    columns = ["key", "id", *METRIC_NAMES] if labelled else ["key", "id"]
    if any(row.get("fov") for row in rows):
        columns.append("fov")  # True: this image's metrics count its field of view only
    write_csv(rows, out_dir / "metrics.csv", columns)
    if labelled and rows:
        write_summary(summarize(rows), out_dir)


@contextmanager
def model_probability_fn(model: nn.Module, eval_cfg: EvalConfig, device: torch.device | str,
                         amp: bool = False) -> Iterator[ProbabilityFn]:
    """``with model_probability_fn(...) as probability``: the paper's sliding-window prediction of ``model``.

    probability_fn: image float32 (T, H, W) (numpy or tensor) -> vessel probability np.float32 (H, W):
    the image goes to ``device`` once (tiles are cut there), ``eval_cfg.patch_size_px`` /
    ``stride_px`` tiles with zero padding, ``batch_size`` tiles per forward, overlap-averaged
    softmax (``eval_cfg.blend``: uniform, the paper's protocol, or gaussian tile weights); ``amp``: bf16 autocast (also on when ``eval_cfg.cpu_bf16`` and ``device`` is a CPU);
    ``eval_cfg.compile``: the forward through ``torch.compile``. A DDP/DeepSpeed wrapper is bypassed (``.module``) so that
    ranks with different image counts never meet in a collective inside forward. The network is in
    eval mode inside the ``with`` block and gets its training mode back on leaving it.
    """
    network = getattr(model, "module", model)
    was_training = network.training
    network.eval()
    amp = bool(amp) or (eval_cfg.cpu_bf16 and torch.device(device).type == "cpu")
    predict = model_predict_fn(network, device, input_layout(network), amp, compile=eval_cfg.compile,
                               softmax=eval_cfg.softmax)

    def probability(image_THW) -> np.ndarray:
        # tile on the model's device: one host->device copy per image instead of one per batch
        image_THW = torch.as_tensor(image_THW).to(device, non_blocking=True)
        prob = sliding_window_probability(predict, image_THW, patch=eval_cfg.patch_size_px,
                                          stride=eval_cfg.stride_px, batch_size=eval_cfg.batch_size,
                                          blend=eval_cfg.blend)
        return prob.cpu().numpy()

    try:
        yield probability
    finally:
        network.train(was_training)


def evaluate_split(model: nn.Module, shard_dir: str | Path, split: str, eval_cfg: EvalConfig, *,
                   device: torch.device | str, out_dir: str | Path | None = None, write_images: bool = True,
                   amp: bool = False, progress: bool | None = False, cache_dir: str = "",
                   verify: bool = True, keys: set[str] | None = None) -> list[dict]:
    """Evaluate ``model`` on every sequence of ``split`` in ``shard_dir`` (a folder or a URL; remote
    shards copied into ``cache_dir`` when given; ``verify``: sha256 check as ``data.verify``; see
    ``data.shards.open_shard``) with the paper's protocol.

    Sliding window (``eval_cfg.patch_size_px`` / ``stride_px``, zero pad, ``batch_size`` tiles per
    forward), overlap-averaged softmax vessel probability, threshold ``eval_cfg.threshold`` (or DTI),
    the 8 metrics per image. ``amp``: bf16 autocast on ``device`` (callers pass
    ``cfg.train.bf16_autocast(device)``: on CUDA as the reference tester).
    Prediction: ``model_probability_fn`` (a DDP/DeepSpeed wrapper is bypassed). Returns the
    per-image rows of ALL ranks (see ``evaluate_sequences``); rank 0 writes the outputs when ``out_dir`` is given. ``progress``: a
    bar over this rank's images (pass False on other ranks; None = only on a terminal). ``keys``: only these
    sequences of the split (a fold's held-out part, ``data/folds.py``).
    """
    from dias_dist.data import loader as data_loader  # imported late: evaluation without data code stays importable

    with model_probability_fn(model, eval_cfg, device, amp) as probability:
        sequences = bar(data_loader.eval_sequences(shard_dir, split, cache_dir=cache_dir, verify=verify, keys=keys), desc=f"eval {split}", unit="img",
                        enabled=progress, leave=False)  # total: len() of this rank's share
        rows = evaluate_sequences(probability, sequences, eval_cfg, out_dir=out_dir, write_images=write_images)
    if not rows:
        raise ValueError(f"split {split!r} of shard set {shard_dir} holds no sequences")
    return rows


def evaluate_summary(model: nn.Module, shard_dir: str | Path, split: str, eval_cfg: EvalConfig,
                     **kwargs) -> tuple[list[dict], dict]:
    """``evaluate_split`` (same arguments) and its summary: (rows, {metric: (mean, population std)})."""
    rows = evaluate_split(model, shard_dir, split, eval_cfg, **kwargs)
    return rows, summarize(rows)


def print_summary(rows: list[dict], title: str) -> None:
    """Print the mean ± std table of labelled rows (rank 0 only)."""
    if dist.is_main():
        print(f"{title} ({len(rows)} images)")
        print(summary_markdown(summarize(rows)), end="")
