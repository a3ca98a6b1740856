"""Training-patch throughput: shard stream vs the PNG folder path.

Both paths produce the same thing: K random 64x64x8 patches per sequence with the weak augmentation.
- shard path: ``dias_dist.data.loader.train_batches`` in this process (num_workers=0), memory-mapped
  float16 frames, batches of 64, shuffle buffer 2048; measured with float32 batches (the contract)
  and with float16 batches (conversion left to the GPU).
- PNG path: read the frame PNGs + label PNG, preprocess (resample to 8 + z-score), cut K patches,
  augment -- what a loader without shards does per sequence.

Rates are given per wall second and per CPU second of this process (the machine may be shared;
``load_average`` says how busy it was). The last line printed is the JSON result.

    .venv/bin/python benchmarks/data_throughput.py --out benchmarks/results/data_throughput_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from dias_dist.data import dias
from dias_dist.data.augment import apply_weak, weak_params
from dias_dist.data.loader import TrainSource, train_batches
from dias_dist.data.phantom_cli import write_phantom_dataset
from dias_dist.data.preprocess import preprocess_sequence
from dias_dist.data.shards import write_shards


def measure(run, seconds):
    """Call ``run()`` (returns patches made) until ``seconds`` of wall time passed; (wall rate, CPU rate)."""
    patches, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        patches += run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return patches / wall, patches / cpu


def shard_rate(shard_dir, image_dtype, seconds, patches_per_sequence):
    stream = iter(train_batches(TrainSource(str(shard_dir)), batch_size=64, patches_per_sequence=patches_per_sequence,
                                shuffle_buffer=2048, num_workers=0, seed=0, image_dtype=image_dtype))
    for _ in range(40):  # fill the shuffle buffer and the page cache
        next(stream)
    return measure(lambda: next(stream)["image"].shape[0], seconds)


def png_rate(src, seconds, patches_per_sequence, patch=64):
    files = dias.list_sequences(src, "training")
    rng = np.random.default_rng(0)

    def one_sequence():
        seq = dias.read_sequence(files[int(rng.integers(len(files)))])
        frames, _ = preprocess_sequence(seq.frames)
        height, width = seq.label.shape
        tops = rng.integers(0, height - patch, patches_per_sequence)
        lefts = rng.integers(0, width - patch, patches_per_sequence)
        flip_h, flip_w, turns = weak_params(rng, patches_per_sequence)
        images = [apply_weak(frames[:, t:t + patch, l:l + patch], flip_h[i], flip_w[i], turns[i])
                  for i, (t, l) in enumerate(zip(tops, lefts))]
        targets = [apply_weak(seq.label[t:t + patch, l:l + patch], flip_h[i], flip_w[i], turns[i])
                   for i, (t, l) in enumerate(zip(tops, lefts))]
        np.stack(images).astype(np.float32), np.stack(targets).astype(np.int64)
        return patches_per_sequence

    one_sequence()
    return measure(one_sequence, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--train", type=int, default=12, help="training sequences to generate")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per path")
    parser.add_argument("--patches-per-sequence", type=int, default=64)
    parser.add_argument("--workdir", default="", help="keep the generated data here (default: a temp folder)")
    parser.add_argument("--out", default="", help="also write the JSON result to this file")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dias_throughput_"))
    src, shard_dir = work / "phantom", work / "shards"
    if not (shard_dir / "manifest.json").is_file():
        write_phantom_dataset(src, size=args.size, train=args.train, val=0, test=0, unlabeled=0, seed=0, preview=False)
        write_shards(src, shard_dir, splits=["training"])
    k = args.patches_per_sequence
    shard32 = shard_rate(shard_dir, "float32", args.seconds, k)
    shard16 = shard_rate(shard_dir, "float16", args.seconds, k)
    png = png_rate(src, args.seconds, k)
    result = {
        "benchmark": "data_throughput", "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores "
                                                   f"(CPU, no GPU)",
        "load_average_1m": round(os.getloadavg()[0], 2), "size": args.size, "patches_per_sequence": k,
        "patch": [8, 64, 64], "loader_processes": 1,
        "shard_float32_patches_per_s": round(shard32[0]), "shard_float32_patches_per_cpu_s": round(shard32[1]),
        "shard_float16_patches_per_s": round(shard16[0]), "shard_float16_patches_per_cpu_s": round(shard16[1]),
        "png_patches_per_s": round(png[0]), "png_patches_per_cpu_s": round(png[1]),
        "speedup_float32_wall": round(shard32[0] / png[0], 1), "speedup_float32_cpu": round(shard32[1] / png[1], 1),
    }
    line = json.dumps(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
