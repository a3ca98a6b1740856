"""Error overlays coloured as the paper's Fig. 7 and PNG/NPY writers for evaluation outputs.

True positive white, false negative red, false positive green. ``error_overlay`` draws them on
black (the paper's figure); ``anatomy_overlay`` draws them on the sequence's minimum-intensity
projection (contrast-filled vessels are the darkest pixels of a DSA sequence, so the MinIP shows the
anatomy in one image), dimmed so that the three colours stand out. ``write_overlay_figure`` and
``write_probability_figure`` turn maps into PNGs a person reads: title, legend or colour bar,
nearest-neighbour upscaling of small images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dias_dist.run.atomic import atomic_write

TP_COLOUR = (255, 255, 255)
FN_COLOUR = (255, 0, 0)
FP_COLOUR = (0, 255, 0)


def error_overlay(pred_bin: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """bool (H, W) prediction and {0,1} (H, W) ground truth -> uint8 RGB (H, W, 3) Fig. 7 overlay."""
    pred_bin = np.asarray(pred_bin).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred_bin.shape != gt.shape or pred_bin.ndim != 2:
        raise ValueError(f"overlay needs two 2-D maps of one shape, got {pred_bin.shape} and {gt.shape}")
    rgb = np.zeros(pred_bin.shape + (3,), np.uint8)
    rgb[pred_bin & gt] = TP_COLOUR
    rgb[~pred_bin & gt] = FN_COLOUR
    rgb[pred_bin & ~gt] = FP_COLOUR
    return rgb


def minimum_intensity_projection(image_THW: np.ndarray) -> np.ndarray:
    """float (T, H, W) frames -> float32 (H, W) in [0, 1]: the per-pixel minimum over time, contrast-stretched
    between its 1st and 99th percentiles (vessels dark, background bright)."""
    frames = np.asarray(image_THW, dtype=np.float32)
    if frames.ndim != 3:
        raise ValueError(f"minimum-intensity projection needs frames (T, H, W), got shape {frames.shape}")
    minip = frames.min(axis=0)
    low, high = np.percentile(minip, [1, 99])
    if high <= low:
        return np.full(minip.shape, 0.5, np.float32)
    return np.clip((minip - low) / (high - low), 0.0, 1.0).astype(np.float32)


ANATOMY_BRIGHTNESS = 0.55  # the MinIP's white becomes this grey: the anatomy stays visible under bright colours


def anatomy_overlay(image_THW: np.ndarray, pred_bin: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Frames (T, H, W), bool (H, W) prediction, {0,1} (H, W) ground truth -> uint8 RGB (H, W, 3):
    TP / FN / FP in the Fig. 7 colours over the dimmed minimum-intensity projection."""
    pred_bin = np.asarray(pred_bin).astype(bool)
    gt = np.asarray(gt).astype(bool)
    minip = minimum_intensity_projection(image_THW)
    if pred_bin.shape != gt.shape or pred_bin.shape != minip.shape:
        raise ValueError(f"overlay needs frames, prediction and label of one size, got {minip.shape}, "
                         f"{pred_bin.shape} and {gt.shape}")
    grey = np.round(minip * ANATOMY_BRIGHTNESS * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[pred_bin & gt] = TP_COLOUR
    rgb[~pred_bin & gt] = FN_COLOUR
    rgb[pred_bin & ~gt] = FP_COLOUR
    return rgb


MIN_FIGURE_PX = 420  # smaller images are upscaled (nearest neighbour) so that title and legend fit


def _figure(height: int, width: int, dpi: int = 100):
    """(figure, axes) sized so the image shows at least ``MIN_FIGURE_PX`` wide (native size above)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    scale = max(1.0, MIN_FIGURE_PX / max(width, 1))
    fig = Figure(figsize=(width * scale / dpi, height * scale / dpi), dpi=dpi)
    ax = fig.add_subplot()
    ax.set_axis_off()
    return fig, ax


def _save(fig, path: Path) -> None:
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=fig.dpi, bbox_inches="tight", pad_inches=0.05)  # room for title/legend


def write_overlay_figure(rgb: np.ndarray, path: str | Path, title: str) -> None:
    """An overlay (uint8 (H, W, 3), e.g. ``anatomy_overlay``) as a PNG with ``title`` and a TP/FN/FP legend."""
    from matplotlib.patches import Patch

    height, width = rgb.shape[:2]
    fig, ax = _figure(height, width)
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    legend = [Patch(facecolor=np.array(c) / 255, edgecolor="black", label=label) for c, label in (
        (TP_COLOUR, "TP: vessel found"), (FN_COLOUR, "FN: vessel missed"), (FP_COLOUR, "FP: false vessel"))]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8, frameon=False,
              handlelength=1.2, columnspacing=1.0)
    _save(fig, Path(path))


def write_probability_figure(prob: np.ndarray, path: str | Path, title: str) -> None:
    """A vessel probability map float (H, W) in [0, 1] as a PNG with ``title`` and a colour bar."""
    height, width = np.asarray(prob).shape
    fig, ax = _figure(height, width)
    image = ax.imshow(np.asarray(prob, dtype=np.float32), cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="vessel probability")
    _save(fig, Path(path))


def write_probability(prob: np.ndarray, path: str | Path) -> None:
    """Write a float32 (H, W) probability map as ``.npy`` (what ``dias score`` reads back), atomically."""
    with atomic_write(path, "wb") as handle:
        np.save(handle, np.asarray(prob, dtype=np.float32))
