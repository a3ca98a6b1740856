"""``dias phantom OUT_DIR``: write a synthetic DSA data set in the DIAS release layout.

IDs are global as in the release: training s0.., validation next, test next, unlabeled next.
Training sequences also get ``scribble_labels/RDFA`` (docs/REFERENCE.md §9 generator, reference
settings, thresholds as absolute pixel counts: ``scale="absolute"``, phantom v2's scribbles, on which
the committed phantom results were measured; docs/DECISIONS.md "Scribble thresholds and the image
size") and ``scribble_labels/SALE`` (SALE-like strokes). Sequence ``s`` is generated from
``SeedSequence([seed, s])`` alone, so any subset regenerates bit-identically.

``--native`` also writes each sequence's unsubtracted run as the angiography system stores it:
``native/native_s{ID}.npy`` uint16 (1 + T, H, W), frame 0 the mask exposure, frame 1 + t the live
exposure of frame t (``PhantomSequence.native``); ``dias predict native_s3.npy --native --subtract
mask=0`` subtracts it. The release files are the same with or without it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..progress import bar
from .phantom import generate_sequence, sequence_rng
from .scribbles import rdfa_scribble, sale_scribble


def save_png(path: Path, array: np.ndarray, compress_level: int = 1) -> None:
    """Write uint8 (H, W) as an 8-bit grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(path, compress_level=compress_level)


def preview_image(frames: np.ndarray, label: np.ndarray, scribbles: dict[str, np.ndarray],
                  frame_times: np.ndarray | None = None, columns: int = 6) -> np.ndarray:
    """uint8 RGB grid of labelled panels: every frame, the MinIP, the label, then the scribbles
    (red vessel, green background, grey unlabelled vessel). frames uint8 (T, H, W), label {0,1} (H, W).

    Each panel has a caption strip above it ("frame 1/T  t=0.25 s", "MinIP (all frames)", "label",
    "scribble RDFA"); at most ``columns`` panels per row.
    """
    from PIL import ImageDraw, ImageFont

    height, width = label.shape
    panels: list[tuple[str, np.ndarray]] = []
    for f, frame in enumerate(frames):
        when = f"  t={frame_times[f]:.2f} s" if frame_times is not None else ""
        panels.append((f"frame {f + 1}/{len(frames)}{when}", np.repeat(frame[..., None], 3, axis=2)))
    panels.append(("MinIP (all frames)", np.repeat(frames.min(axis=0)[..., None], 3, axis=2)))
    panels.append((f"label ({int(label.sum())} px)", np.repeat((label * 255)[..., None], 3, axis=2).astype(np.uint8)))
    for name, scribble in scribbles.items():
        tile = np.zeros(label.shape + (3,), dtype=np.uint8)
        tile[label > 0] = 60
        tile[scribble == 1] = (255, 0, 0)
        tile[scribble == 0] = (0, 255, 0)
        panels.append((f"scribble {name}", tile))
    font = ImageFont.load_default(size=max(10, width // 20))
    caption = font.size + 6
    gap = 4
    cols = min(columns, len(panels))
    rows = -(-len(panels) // cols)
    canvas = Image.new("RGB", (cols * (width + gap), rows * (height + caption + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (title, tile) in enumerate(panels):
        x, y = (i % cols) * (width + gap), (i // cols) * (height + caption + gap)
        draw.text((x + 2, y + 2), title, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(tile), (x, y + caption))
    return np.asarray(canvas)


def write_phantom_dataset(out_dir: str | Path, *, size: int = 800, train: int = 30, val: int = 10, test: int = 20,
                          unlabeled: int = 60, seed: int = 0, preview: bool = True, min_frames: int = 4,
                          max_frames: int = 14, motion_px: float = 1.0, frame_rate: float = 4.0,
                          late_phase: bool = False, native: bool = False, progress: bool | None = None) -> dict:
    """Generate and write the data set; returns counts and timing. uint8 PNGs in the release layout.

    ``progress``: a bar over the sequences (None: only on a terminal, see ``progress.bar``).
    """
    out = Path(out_dir)
    for name, count in (("train", train), ("val", val), ("test", test), ("unlabeled", unlabeled)):
        if count < 0:
            raise ValueError(f"--{name} must be >= 0, got {count}")
    plan = [("training", train), ("validation", val), ("test", test), ("unlabeled", unlabeled)]
    start = time.perf_counter()
    frames_written = 0
    todo = [split for split, count in plan for _ in range(count)]  # sequence id = index
    for seq_id, split in enumerate(bar(todo, desc="phantom", unit="seq", enabled=progress)):
        seq = generate_sequence(size, sequence_rng(seed, seq_id), min_frames=min_frames, max_frames=max_frames,
                                motion_px=motion_px, frame_rate=frame_rate, late_phase=late_phase, native=native)
        if native:
            (out / "native").mkdir(parents=True, exist_ok=True)
            np.save(out / "native" / f"native_s{seq_id}.npy", seq.native)
        image_dir = out / "unlabeled_DSA" if split == "unlabeled" else out / split / "images"
        for f, frame in enumerate(seq.frames):
            save_png(image_dir / f"image_s{seq_id}_i{f}.png", frame)
        frames_written += len(seq.frames)
        if split != "unlabeled":
            save_png(out / split / "labels" / f"label_s{seq_id}.png", seq.label * 255)
        if split == "training":
            scribble_rng = sequence_rng(seed, seq_id, 1)
            scribbles = {"RDFA": rdfa_scribble(seq.label, scribble_rng, scale="absolute"),  # phantom v2's
                         "SALE": sale_scribble(seq.label, scribble_rng)}
            for folder, scribble in scribbles.items():
                save_png(out / split / "scribble_labels" / folder / f"label_s{seq_id}.png", scribble)
            if preview and seq_id == 0:
                panels = preview_image(seq.frames, seq.label, scribbles, seq.frame_times)
                Image.fromarray(panels).save(out / "preview.png")
    elapsed = time.perf_counter() - start
    return {"sequences": len(todo), "frames": frames_written, "seconds": round(elapsed, 2),
            "sequences_per_s": round(len(todo) / elapsed, 3) if elapsed > 0 else None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder to write (release layout)")
    parser.add_argument("--size", type=int, default=800, help="frame side in px (default 800)")
    parser.add_argument("--train", type=int, default=30, help="labelled training sequences (default 30)")
    parser.add_argument("--val", type=int, default=10, help="validation sequences (default 10)")
    parser.add_argument("--test", type=int, default=20, help="test sequences (default 20)")
    parser.add_argument("--unlabeled", type=int, default=60, help="unlabelled sequences (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same data")
    parser.add_argument("--min-frames", type=int, default=4, help="fewest frames per sequence (default 4)")
    parser.add_argument("--max-frames", type=int, default=14, help="most frames per sequence (default 14)")
    parser.add_argument("--motion-px", type=float, default=1.0,
                        help="median patient motion between mask and live frames, in px of an 800x800 frame "
                             "(0.3 mm/px; scaled with --size; log-normal between sequences; 0 = perfect registration)")
    parser.add_argument("--frame-rate", type=float, default=4.0, help="frames per second (the release: 4)")
    parser.add_argument("--late-phase", action="store_true",
                        help="add capillary blush and early veins to the last frames (not labelled)")
    parser.add_argument("--native", action="store_true",
                        help="also write native/native_s{ID}.npy: the unsubtracted run (frame 0 the mask exposure), "
                             "uint16, for dias predict --native --subtract mask=0")
    parser.add_argument("--preview", action=argparse.BooleanOptionalAction, default=True,
                        help="write preview.png: the frames of s0, their MinIP, its label and scribbles, "
                             "each panel captioned")


def main(args: argparse.Namespace) -> int:
    stats = write_phantom_dataset(args.out_dir, size=args.size, train=args.train, val=args.val, test=args.test,
                                  unlabeled=args.unlabeled, seed=args.seed, preview=args.preview,
                                  min_frames=args.min_frames, max_frames=args.max_frames, motion_px=args.motion_px,
                                  frame_rate=args.frame_rate, late_phase=args.late_phase, native=args.native)
    print(f"wrote {stats['sequences']} sequences ({stats['frames']} frames) to {args.out_dir} in "
          f"{stats['seconds']} s ({stats['sequences_per_s']} sequences/s)")
    return 0
