"""``dias scribbles SRC_DIR``: write RDFA scribbles for a fully annotated release-layout folder.

Reads ``training/labels/label_s{ID}.png`` (binarised at >= 100) and writes
``training/scribble_labels/RDFA/label_s{ID}.png`` ({0 bg, 1 vessel, 255 unannotated}) with the
docs/REFERENCE.md §9 generator. Deterministic per ``--seed`` and sequence ID. The pixel thresholds
are the reference's for an 800x800 image; ``--scale area`` (default) scales them to each label's size
(areas by H W / 800^2, lengths by its square root), ``--scale absolute`` applies them as given
(``dias_dist.data.scribbles``; docs/DECISIONS.md "Scribble thresholds and the image size").
"""
from __future__ import annotations

import argparse

from . import dias
from .phantom import sequence_rng
from .phantom_cli import save_png
from .scribbles import REFERENCE_SIZE_PX, SCALES, rdfa_scribble


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src_dir", help="folder in the DIAS release layout")
    parser.add_argument("--split", default="training", choices=dias.SPLITS[:3])
    parser.add_argument("--seed", type=int, default=2022, help="reference generator seed (2022)")
    parser.add_argument("--erosion", type=int, nargs=2, default=(1, 2), metavar=("A", "B"),
                        help="erosion iterations k = ceil(A + u (B - A)) (reference main: 1 2)")
    parser.add_argument("--erosion-min-area", type=int, default=900,
                        help="erode a class only above this many px of an 800x800 image (reference: 900)")
    parser.add_argument("--shift-min-area", type=int, default=1000,
                        help="shift/rotate the vessel strokes only above this many px of an 800x800 image "
                             "(reference: 1000)")
    parser.add_argument("--min-component-px", type=int, default=15,
                        help="walk skeleton components longer than this (px at 800x800; reference: 15)")
    parser.add_argument("--max-shift-px", type=int, default=6,
                        help="random stroke shift in px at 800x800 (reference: 6; 0 = off)")
    parser.add_argument("--max-rotation-deg", type=float, default=15.0, help="random stroke rotation (0 = off)")
    parser.add_argument("--scale", choices=SCALES, default="area",
                        help="area (default): thresholds scaled to the image size, areas by H*W/800^2 and lengths "
                             "by its square root (identity at 800x800) | absolute: the reference's pixel counts "
                             "at every size")
    parser.add_argument("--reference-size-px", type=int, default=REFERENCE_SIZE_PX,
                        help=f"side of the image the thresholds describe (default {REFERENCE_SIZE_PX}, the DSA "
                             "release)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing RDFA files")


def main(args: argparse.Namespace) -> int:
    out_dir = dias.split_dir(args.src_dir, args.split) / "scribble_labels" / dias.SCRIBBLE_FOLDERS["rdfa"]
    written = 0
    for files in dias.list_sequences(args.src_dir, args.split):
        target = out_dir / f"label_s{files.seq_id}.png"
        if target.exists() and not args.overwrite:
            raise ValueError(f"{target}: exists (pass --overwrite to replace)")
        label = dias.read_label(files.label)
        rng = sequence_rng(args.seed, files.seq_id)
        scribble = rdfa_scribble(label, rng, erosion_range=tuple(args.erosion),
                                 erosion_min_area=args.erosion_min_area, min_component_px=args.min_component_px,
                                 shift_min_area=args.shift_min_area, max_shift_px=args.max_shift_px,
                                 max_rotation_deg=args.max_rotation_deg, scale=args.scale,
                                 reference_size_px=args.reference_size_px)
        save_png(target, scribble)
        written += 1
    print(f"wrote {written} RDFA scribbles to {out_dir} (thresholds: {args.scale})")
    return 0
