"""What the scribble thresholds' rule (``scale="area"`` or ``"absolute"``) does at 128 px, 565x584 and 800 px.

For each set of labels and each rule: the RDFA thresholds applied, the vessel strokes (8-connected
components of the vessel scribble), the fractions of vessel and of background pixels scribbled (RDFA,
mean over ``--seeds`` generator seeds) and the same fractions for the SALE-like generator (seed 0).
Label sets: DRIVE training vessel masks (565x584; ``--drive``, default ``$DIAS_DRIVE_DIR``, layout in
docs/TESTING.md), the same masks resized (nearest) to 800x800 (the structure the reference's
counts were set for) and to 128x128, and phantom v2 labels at 128 px (the demo's size) and 800 px
(seed 0). CPU only, about a minute:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scribble_scale.py --out benchmarks/results/scribble_scale_cpu.md
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from dias_dist.data.phantom import generate_sequence, sequence_rng
from dias_dist.data.scribbles import SCALES, rdfa_scribble, rdfa_thresholds, sale_scribble

ROOT = Path(__file__).resolve().parents[1]
EIGHT = np.ones((3, 3), bool)


def measure(label: np.ndarray, scale: str, seeds: int) -> list[float]:
    """[vessel strokes, vessel fraction, background fraction] of RDFA (mean over seeds), then SALE's two."""
    rows = []
    for seed in range(seeds):
        out = rdfa_scribble(label, np.random.default_rng(seed), scale=scale)
        rows.append([ndimage.label(out == 1, structure=EIGHT)[1], (out == 1).sum() / label.sum(),
                     (out == 0).sum() / (~label).sum()])
    sale = sale_scribble(label, np.random.default_rng(0), scale=scale)
    return [*np.mean(rows, axis=0), (sale == 1).sum() / label.sum(), (sale == 0).sum() / (~label).sum()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", default=os.environ.get("DIAS_DRIVE_DIR", ""),
                        help="DRIVE folder (docs/TESTING.md 'DRIVE'); default $DIAS_DRIVE_DIR")
    parser.add_argument("--masks", type=int, default=5, help="DRIVE training masks (the first, by name)")
    parser.add_argument("--phantom", type=int, default=5, help="phantom labels at 128 px (3 at 800 px)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sets = {}
    folder = Path(args.drive) / "training" / "vessel_masks" if args.drive else None
    if folder is not None and folder.is_dir():
        drive = [np.asarray(Image.open(p).convert("L")) >= 128 for p in sorted(folder.iterdir())[:args.masks]]
        sets["DRIVE training"] = drive
        for side in (800, 128):
            sets[f"DRIVE resized to {side}"] = [np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(
                (side, side), Image.NEAREST)) > 0 for m in drive]
    sets["phantom v2 128 px"] = [generate_sequence(128, sequence_rng(0, i)).label > 0 for i in range(args.phantom)]
    sets["phantom v2 800 px"] = [generate_sequence(800, sequence_rng(0, i)).label > 0 for i in range(3)]
    lines = ["| labels | H x W | vessel px | rule | erosion / shift min area | min component / max shift px "
             "| RDFA vessel strokes | RDFA vessel px scribbled | RDFA background px scribbled "
             "| SALE vessel px | SALE background px |", "|" + "---|" * 11]
    for name, labels in sets.items():
        shape = labels[0].shape
        for scale in SCALES[::-1]:
            t = rdfa_thresholds(shape, scale=scale)
            m = np.mean([measure(label, scale, args.seeds) for label in labels], axis=0)
            lines.append(f"| {name} ({len(labels)}) | {shape[0]}x{shape[1]} | {np.mean([x.sum() for x in labels]):.0f} "
                         f"| {scale} | {t['erosion_min_area']:.0f} / {t['shift_min_area']:.0f} "
                         f"| {t['min_component_px']:.1f} / {t['max_shift_px']} | {m[0]:.1f} | {m[1]:.3f} | {m[2]:.4f} "
                         f"| {m[3]:.3f} | {m[4]:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        from dias_dist.models.cpu_tuning import cpu_model

        Path(args.out).write_text("No training and no timing: scribble statistics, independent of the budget and, "
                                  f"up to floating point, of the CPU (written on {cpu_model()}).\n\n"
                                  "# Scribble thresholds by image size (`benchmarks/scribble_scale.py`)\n\n"
                                  f"Command: `benchmarks/scribble_scale.py --masks {args.masks} --phantom "
                                  f"{args.phantom} --seeds {args.seeds}`. SALE: the `scale` passed explicitly "
                                  "(its default is absolute).\n\n" + text)


if __name__ == "__main__":
    main()
