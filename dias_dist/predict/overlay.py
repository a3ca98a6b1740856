"""``overlay.png`` of ``dias predict``: two panels side by side over one caption strip.

Left: the plain minimum-intensity projection of the frames the model saw (linear from its minimum to
its maximum, as the frames hold it). Right: the same MinIP windowed between its 1st and 99th
percentiles, with the mask's outline (pixels of the mask with a background 4-neighbour) in
Okabe-Ito orange and, when ``--min-size`` removed components, their outline in Okabe-Ito blue: the
anatomy inside a vessel stays visible, and orange and blue are told apart by every common form of
colour blindness. The caption names the series, the threshold, and holds the legend. Images under
``MIN_SIDE`` px are enlarged (nearest neighbour) so that the text fits.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ORANGE = (230, 159, 0)  # Okabe-Ito
BLUE = (0, 114, 178)  # Okabe-Ito
MIN_SIDE = 320
GAP = 6


def outline(mask_hw: np.ndarray) -> np.ndarray:
    """bool (H, W): mask pixels with a 4-neighbour outside the mask (the image border counts as outside)."""
    mask = np.asarray(mask_hw, dtype=bool)
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _gray(minip: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = np.clip((minip - low) / max(high - low, 1e-12), 0.0, 1.0)
    return np.repeat(np.round(scaled * 255).astype(np.uint8)[..., None], 3, axis=2)


def predict_overlay(frames_thw: np.ndarray, mask_hw: np.ndarray, *, title: str, threshold: float,
                    removed_hw: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB (caption + H', 2 W' + GAP, 3): the two panels of the module docstring."""
    minip = np.asarray(frames_thw, dtype=np.float64).min(axis=0)
    plain = _gray(minip, float(minip.min()), float(minip.max()))
    low, high = np.percentile(minip, [1, 99])
    windowed = _gray(minip, float(low), float(high))
    scale = max(1, -(-MIN_SIDE // max(minip.shape[1], 1)))
    mask = np.asarray(mask_hw, dtype=bool)
    removed = None if removed_hw is None else np.asarray(removed_hw, dtype=bool)
    if scale > 1:
        plain, windowed = (np.kron(a, np.ones((scale, scale, 1), np.uint8)) for a in (plain, windowed))
        mask = np.kron(mask, np.ones((scale, scale), bool))
        removed = None if removed is None else np.kron(removed, np.ones((scale, scale), bool))
    windowed[outline(mask)] = ORANGE
    if removed is not None and removed.any():
        windowed[outline(removed)] = BLUE
    height, width = plain.shape[:2]
    font = ImageFont.load_default(size=13)
    lines = [title, f"left: MinIP (plain)   right: MinIP windowed 1-99 %, mask outline at p >= {threshold:.2f}"]
    caption = 18 * (len(lines) + 1) + 4
    canvas = Image.new("RGB", (2 * width + GAP, height + caption), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate(lines):
        draw.text((4, 3 + 18 * row), text, fill=(0, 0, 0), font=font)
    legend_y = 3 + 18 * len(lines)
    x = 4
    for colour, text in ((ORANGE, "vessel (model mask)"),
                         *(((BLUE, "removed by --min-size"),) if removed is not None and removed.any() else ())):
        draw.rectangle((x, legend_y + 2, x + 12, legend_y + 12), outline=colour, width=2)
        draw.text((x + 17, legend_y), text, fill=(0, 0, 0), font=font)
        x += 24 + int(draw.textlength(text, font=font))
    canvas.paste(Image.fromarray(plain), (0, caption))
    canvas.paste(Image.fromarray(windowed), (width + GAP, caption))
    return np.asarray(canvas)
