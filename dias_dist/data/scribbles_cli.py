"""``dias scribbles SRC_DIR``: write RDFA scribbles for a fully annotated release-layout folder.

Reads ``training/labels/label_s{ID}.png`` (binarised at >= 100) and writes
``training/scribble_labels/RDFA/label_s{ID}.png`` ({0 bg, 1 vessel, 255 unannotated}) with the
docs/REFERENCE.md §9 generator. Deterministic per ``--seed`` and sequence ID.
"""
from __future__ import annotations

import argparse

from . import dias
from .phantom import sequence_rng
from .phantom_cli import save_png
from .scribbles import rdfa_scribble


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src_dir", help="folder in the DIAS release layout")
    parser.add_argument("--split", default="training", choices=dias.SPLITS[:3])
    parser.add_argument("--seed", type=int, default=2022, help="reference generator seed (2022)")
    parser.add_argument("--erosion", type=int, nargs=2, default=(1, 2), metavar=("A", "B"),
                        help="erosion iterations k = ceil(A + u (B - A)) (reference main: 1 2)")
    parser.add_argument("--erosion-min-area", type=int, default=900)
    parser.add_argument("--min-component-px", type=int, default=15)
    parser.add_argument("--max-shift-px", type=int, default=6, help="random stroke shift (0 = off)")
    parser.add_argument("--max-rotation-deg", type=float, default=15.0, help="random stroke rotation (0 = off)")
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
                                 max_shift_px=args.max_shift_px, max_rotation_deg=args.max_rotation_deg)
        save_png(target, scribble)
        written += 1
    print(f"wrote {written} RDFA scribbles to {out_dir}")
    return 0
