"""bf16 inference on CPU (``eval.cpu_bf16``): DSC change on the phantom test split, and its speed-up.

A VSS-Net (``--width``) is trained briefly in fp32 on phantom training sequences (plain loop:
AdamW, CE+Dice, the training stream of ``dias_dist.data.loader``), then the test split is scored
with the paper's sliding-window protocol twice, fp32 and with ``eval.cpu_bf16=true``, the two timed
in alternation (minimum of ``--repeats``). Reports mean DSC of each, the change (mean and largest
per image), the largest probability difference and the share of pixels whose thresholded label
flips. The full-size speed-up of the same flag is in ``roofline.py``'s ``bf16_speedup``.

    python benchmarks/bf16_inference.py --out benchmarks/results/bf16_inference_cpu.json
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from machine import describe, git_sha, has_bf16_matmul, load_average, write_result

from dias_dist.config import EvalConfig
from dias_dist.data.loader import TrainSource, eval_sequences, train_batches
from dias_dist.data.phantom_cli import write_phantom_dataset
from dias_dist.data.shards import write_shards
from dias_dist.evaluation.evaluate import evaluate_sequences, model_probability_fn
from dias_dist.losses import ce_dice_loss
from dias_dist.models import build_model, to_layout


def train(shard_dir: Path, *, width: int, steps: int, batch: int, patch: int, seed: int) -> tuple[torch.nn.Module, dict]:
    """A VSS-Net trained ``steps`` fp32 steps on ``shard_dir``'s training split; returns (model, info)."""
    torch.manual_seed(seed)
    model = build_model("vss_net", width=width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    stream = iter(train_batches(TrainSource(str(shard_dir)), batch_size=batch, patch_size=patch,
                                patches_per_sequence=16, shuffle_buffer=256, num_workers=0, seed=seed))
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        batch_ = next(stream)
        loss = ce_dice_loss(model(to_layout(batch_["image"], "sequence")), batch_["target"])["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval(), {"train_s": time.perf_counter() - start, "final_loss": loss.item()}


def score(model, sequences, eval_cfg: EvalConfig) -> tuple[list[dict], list[np.ndarray], float]:
    """(rows, probability maps, seconds) of one pass of the sliding-window protocol over ``sequences``."""
    maps = []
    with model_probability_fn(model, eval_cfg, "cpu") as probability:
        def recorded(image):
            maps.append(probability(image))
            return maps[-1]

        tic = time.perf_counter()
        rows = evaluate_sequences(recorded, sequences, eval_cfg)
        seconds = time.perf_counter() - tic
    return rows, maps, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="phantom side in pixels")
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=32, help="training patch side")
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="", help="keep the phantom and shards here (reused when present)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    load_before = load_average()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dias_bf16_"))
    if not (work / "shards/manifest.json").is_file():
        write_phantom_dataset(work / "phantom", size=args.size, train=args.train, val=0, test=args.test,
                              unlabeled=0, seed=args.seed, preview=False, progress=False)
        write_shards(work / "phantom", work / "shards", progress=False)
    model, info = train(work / "shards", width=args.width, steps=args.steps, batch=args.batch, patch=args.patch,
                        seed=args.seed)
    sequences = list(eval_sequences(work / "shards", "test", num_workers=0))
    fp32_cfg = EvalConfig(batch_size=args.eval_batch, overlays=False)
    bf16_cfg = replace(fp32_cfg, cpu_bf16=True)
    seconds = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        rows32, maps32, s32 = score(model, sequences, fp32_cfg)
        rows16, maps16, s16 = score(model, sequences, bf16_cfg)
        seconds["fp32"].append(s32)
        seconds["bf16"].append(s16)
    dsc32 = np.array([r["dsc"] for r in rows32])
    dsc16 = np.array([r["dsc"] for r in rows16])
    flips = sum(int(((a >= fp32_cfg.threshold) != (b >= fp32_cfg.threshold)).sum()) for a, b in zip(maps32, maps16))
    pixels = sum(a.size for a in maps32)
    result = {
        "benchmark": "bf16_inference",
        "device": describe(torch.device("cpu")), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpu_has_bf16": has_bf16_matmul(torch.device("cpu")),
        "load_average_1_5_15_before": load_before, "load_average_1_5_15_after": load_average(),
        "settings": {k: getattr(args, k) for k in ("size", "train", "test", "width", "steps", "batch", "patch",
                                                   "eval_batch", "repeats", "seed")},
        "training": info,
        "test_images": len(rows32),
        "dsc_fp32": float(dsc32.mean()), "dsc_bf16": float(dsc16.mean()),
        "dsc_change": float(dsc16.mean() - dsc32.mean()),
        "dsc_change_max_abs_per_image": float(np.abs(dsc16 - dsc32).max()),
        "probability_max_abs_diff": float(max(np.abs(a - b).max() for a, b in zip(maps32, maps16))),
        "pixels_flipped_fraction": flips / pixels,
        "seconds_min": {k: min(v) for k, v in seconds.items()},
        "bf16_speedup": min(seconds["fp32"]) / min(seconds["bf16"]),
        "git_sha": git_sha(),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
