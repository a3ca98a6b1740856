"""Is the phantom task non-trivial? First frame only vs the whole sequence (the paper's Table VI question).

The same small fully convolutional CNN (plain torch) is trained twice on patches from the
training stream (``dias_dist.data.loader``): once on all 8 (resampled) frames, once on frame 0
only; both are scored (Dice, per image, mean) on whole test sequences. Two training-free baselines
add context: Otsu threshold of the minimum-intensity projection (all frames) and of frame 0.
"Frame 0" is frame 0 of the T=8 resampled sequence (for T <= 8 exactly the first acquired frame).

    .venv/bin/python benchmarks/phantom_difficulty.py --out benchmarks/results/phantom_difficulty_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage.filters import threshold_otsu
from torch import nn

from dias_dist.data.loader import TrainSource, eval_sequences, train_batches
from dias_dist.data.phantom_cli import write_phantom_dataset
from dias_dist.data.shards import write_shards


def small_cnn(in_channels: int, width: int = 24) -> nn.Module:
    """x (B, C, H, W) -> logits (B, 2, H, W); receptive field ~35 px via dilations."""
    layers, channels = [], in_channels
    for dilation in (1, 2, 4, 8, 1):
        layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        channels = width
    return nn.Sequential(*layers, nn.Conv2d(width, 2, 1))


def dice(pred: np.ndarray, label: np.ndarray) -> float:
    inter = np.logical_and(pred, label).sum()
    total = pred.sum() + label.sum()
    return 1.0 if total == 0 else float(2 * inter / total)


def train_and_score(shard_dir, frames: slice, steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = small_cnn(len(range(8)[frames]))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    stream = iter(train_batches(TrainSource(str(shard_dir)), batch_size=32, patches_per_sequence=16,
                                shuffle_buffer=256, num_workers=0, seed=seed))
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        batch = next(stream)
        loss = nn.functional.cross_entropy(model(batch["image"][:, frames]), batch["target"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_s = time.perf_counter() - start
    model.eval()
    scores = []
    with torch.no_grad():
        for sample in eval_sequences(shard_dir, "test", num_workers=0):
            prob = torch.softmax(model(sample["image"][None, frames]), dim=1)[0, 1].numpy()
            scores.append(dice(prob >= 0.5, sample["label"].numpy() > 0))
    return {"dice_mean": round(float(np.mean(scores)), 4), "dice_std": round(float(np.std(scores)), 4),
            "final_loss": round(loss.item(), 4), "train_s": round(train_s, 1)}


def otsu_dice(shard_dir, use_all_frames: bool) -> float:
    scores = []
    for sample in eval_sequences(shard_dir, "test", num_workers=0):
        image = sample["image"].numpy()
        projection = image.min(axis=0) if use_all_frames else image[0]
        scores.append(dice(projection < threshold_otsu(projection), sample["label"].numpy() > 0))
    return round(float(np.mean(scores)), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dias_difficulty_"))
    if not (work / "shards/manifest.json").is_file():
        write_phantom_dataset(work / "phantom", size=args.size, train=args.train, val=0, test=args.test,
                              unlabeled=0, seed=args.seed, preview=False)
        write_shards(work / "phantom", work / "shards")
    shard_dir = work / "shards"
    all_frames = train_and_score(shard_dir, slice(0, 8), args.steps, args.seed)
    first_frame = train_and_score(shard_dir, slice(0, 1), args.steps, args.seed)
    result = {"benchmark": "phantom_difficulty", "size": args.size, "train_sequences": args.train,
              "test_sequences": args.test, "steps": args.steps, "batch": 32, "patch": 64,
              "cnn_all_frames": all_frames, "cnn_first_frame": first_frame,
              "otsu_minip_all_frames_dice": otsu_dice(shard_dir, True),
              "otsu_first_frame_dice": otsu_dice(shard_dir, False),
              "load_average_1m": round(os.getloadavg()[0], 2)}
    line = json.dumps(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
