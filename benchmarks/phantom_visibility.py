"""How much of the labelled tree each frame of phantom v2 shows, and how fast an 800x800 sequence is made.

Visibility of a frame = fraction of labelled pixels whose vessel has opacity >= 0.5 in it
(``PhantomSequence.visible``), averaged over sequences; "large" = vessels of radius >= 3 px at 800 px
(scaled by sqrt(size / 800) as the generator scales radii). Frames are counted from the first
(frame 1, 2, ...) and from the last (last, last-1), because T differs between sequences.
Seconds per sequence: process CPU time (one core, so other jobs on the machine do not decide it)
and wall time, generation only (no PNG writing).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/phantom_visibility.py --size 800 --sequences 20 \\
        --out benchmarks/results/phantom_visibility_cpu.md
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from dias_dist.data.phantom import generate_sequence, sequence_rng


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--sequences", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame-rate", type=float, default=4.0)
    parser.add_argument("--out", default="", help="markdown result (a .json with the raw numbers is written next to it)")
    args = parser.parse_args()
    large_radius = 3.0 * np.sqrt(args.size / 800)
    from_start, from_end, large_first, union, counts, cpu, wall, density = {}, {}, [], [], [], [], [], []
    generate_sequence(args.size, sequence_rng(args.seed, 10_000))  # warm-up (imports, caches)
    for seq_id in range(args.sequences):
        tic_cpu, tic = time.process_time(), time.perf_counter()
        seq = generate_sequence(args.size, sequence_rng(args.seed, seq_id), frame_rate=args.frame_rate)
        cpu.append(time.process_time() - tic_cpu)
        wall.append(time.perf_counter() - tic)
        label = seq.label > 0
        shown = [float(v[label].mean()) for v in seq.visible]
        for k, value in enumerate(shown):
            from_start.setdefault(k + 1, []).append(value)
            from_end.setdefault(len(shown) - k, []).append(value)
        large = seq.radius >= large_radius
        large_first.append(float(seq.visible[0][large].mean()) if large.any() else float("nan"))
        union.append(float(seq.visible.any(0)[label].mean()))
        counts.append(len(shown))
        density.append(float(label.mean()))
    load = os.getloadavg()
    lines = [f"Phantom v2 visibility per frame: {args.sequences} sequences of {args.size}x{args.size} px, seed "
             f"{args.seed}, {args.frame_rate:g} frames/s. Load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
             "(2-core VM shared with other jobs).", "",
             "    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/phantom_visibility.py "
             f"--size {args.size} --sequences {args.sequences} --out {args.out or 'RESULT.md'}", "",
             "| frame | sequences | labelled pixels shown (mean ± std) |", "|---|---|---|"]
    for k in sorted(from_start):
        lines.append(f"| {k} | {len(from_start[k])} | {np.mean(from_start[k]):.3f} ± {np.std(from_start[k]):.3f} |")
    for k in (2, 1):
        name = "last" if k == 1 else "last - 1"
        lines.append(f"| {name} | {len(from_end[k])} | {np.mean(from_end[k]):.3f} ± {np.std(from_end[k]):.3f} |")
    lines += ["", f"- first frame, vessels of radius >= 3 px (at 800 px): {np.nanmean(large_first):.3f} shown "
              f"(min over sequences {np.nanmin(large_first):.3f})",
              f"- union over frames: {np.mean(union):.3f} (min {np.min(union):.3f}; 1 by construction)",
              f"- frames per sequence: {dict(sorted(Counter(counts).items()))} (mean {np.mean(counts):.1f})",
              f"- labelled fraction of the image: {np.mean(density):.3f} ± {np.std(density):.3f}",
              f"- seconds per sequence: CPU {np.mean(cpu):.2f} (max {np.max(cpu):.2f}), wall {np.mean(wall):.2f} "
              f"(max {np.max(wall):.2f})"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps({
            "size": args.size, "sequences": args.sequences, "seed": args.seed, "frame_rate": args.frame_rate,
            "visible_from_start": {k: v for k, v in from_start.items()},
            "visible_from_end": {k: v for k, v in from_end.items()}, "large_first": large_first, "union": union,
            "frames": counts, "label_fraction": density, "cpu_s": cpu, "wall_s": wall, "load_average": load},
            indent=1) + "\n")


if __name__ == "__main__":
    main()
