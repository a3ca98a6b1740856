"""Table III on synthetic data: six scribble methods x {RDFA, SALE} into one MLflow experiment.

    .venv/bin/python benchmarks/weak_table.py --out runs/weak_table

Steps: ``dias phantom`` (a small synthetic DSA set with RDFA and SALE scribbles) -> ``dias shard``
-> one ``launch/train.py`` run per (method, scribble type) with ``configs/weak/<method>.yaml`` and the
same budget overrides for every method (steps, batch, patch, lr, width) -> ``dias report``.
Runs are named ``<method>-<rdfa|sale>``; the report lands in ``OUT/report``. Existing data and
finished runs are reused, so an interrupted table can be completed by running the command again.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("pce", "em", "rloss", "ivm", "dmpls", "sscr")
SCRIBBLES = ("rdfa", "sale")


def sh(*args: str, env: dict | None = None) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/weak_table", help="folder for data, shards, runs and report")
    parser.add_argument("--experiment", default="dias-weak-table")
    parser.add_argument("--size", type=int, default=128, help="phantom frame side (px)")
    parser.add_argument("--train", type=int, default=8, help="training sequences")
    parser.add_argument("--val", type=int, default=2)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=4, help="model.params.width of fr_unet and unet_cct")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--scribbles", nargs="+", default=list(SCRIBBLES))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    out = (ROOT / args.out).resolve()
    src, shards, run_dir = out / "src", out / "shards", out / "runs"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    python = sys.executable
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    if not (src / "training").is_dir():
        sh(python, "-m", "dias_dist.cli", "phantom", str(src), "--size", str(args.size), "--train", str(args.train),
           "--val", str(args.val), "--test", str(args.test), "--unlabeled", "0", "--no-preview")
    if not (shards / "manifest.json").is_file():
        sh(python, "-m", "dias_dist.cli", "shard", str(src), str(shards))
    timings = {}
    for scribble in args.scribbles:
        for method in args.methods:
            name = f"{method}-{scribble}"
            if (run_dir / name / "checkpoints" / "final.pt").is_file():
                print(f"{name}: finished earlier, kept", flush=True)
                continue
            tic = time.perf_counter()
            sh(python, "launch/train.py", f"configs/weak/{method}.yaml",
               f"data.shards={shards}", f"data.target=scribble_{scribble}", f"data.patch_size_px={args.patch}",
               "data.patches_per_sequence=16", "data.shuffle_buffer=128", "data.num_workers=0",
               f"model.params.width={args.width}",
               f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps_per_epoch}",
               f"train.batch_size={args.batch_size}", f"train.device={args.device}", "train.progress=false",
               f"train.run_dir={run_dir}", f"train.run_name={name}", "train.log_every_steps=10",
               f"optim.lr={args.lr}", "optim.warmup_epochs=0.2",
               "eval.select_from_epoch=0", "eval.overlays=false", "eval.batch_size=128",
               f"track.tracking_uri={uri}", f"track.experiment={args.experiment}",
               f"track.tags={{scribble: {scribble}}}", env=env)
            timings[name] = round(time.perf_counter() - tic, 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    sh(python, "-m", "dias_dist.cli", "report", args.experiment, "--tracking-uri", uri, "--out", str(out / "report"),
       env=env)
    print((out / "report" / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
