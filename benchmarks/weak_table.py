"""Table III on synthetic data: six scribble methods x {RDFA, SALE} into one MLflow experiment.

    .venv/bin/python benchmarks/weak_table.py --out runs/weak_table --seeds 0 1 2 \
        --result benchmarks/results/weak_table_cpu.md

Steps: ``dias phantom`` (a small synthetic DSA set with RDFA and SALE scribbles) -> ``dias shard``
-> one ``launch/train.py`` run per (method, scribble type) with ``configs/weak/<method>.yaml`` and the
same budget overrides for every method (steps, batch, patch, lr, width) -> ``dias report``.
Runs are named ``<method>-<rdfa|sale>-seed<S>`` (``train.seed=S``, the data stay the same); the
MLflow report lands in ``OUT/report`` and, with ``--result``, a table of the mean ± std over seeds of
each run's test means, next to the paper's DSC. Existing data and finished runs are reused, so an
interrupted table can be completed by running the command again.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("pce", "em", "rloss", "ivm", "dmpls", "sscr")
SCRIBBLES = ("rdfa", "sale")
PAPER_DSC = {"rdfa": {"pce": 0.7455, "em": 0.7458, "rloss": 0.7146, "ivm": 0.6606, "dmpls": 0.7471, "sscr": 0.7651},
             "sale": {"pce": 0.6396, "em": 0.6356, "rloss": 0.5916, "ivm": 0.6322, "dmpls": 0.6327, "sscr": 0.6574}}
METRICS = ("dsc", "sen", "spe", "auc", "cldice", "vc")


def seed_table(run_dir: Path, methods, scribbles, seeds) -> str:
    """Markdown: per (scribble, method) the mean ± std over seeds of the runs' test means."""
    lines = ["| scribbles | method | seeds | " + " | ".join(m.upper() if m != "cldice" else "clDice" for m in METRICS)
             + " | paper DSC |", "|---|---|---|" + "---|" * (len(METRICS) + 1)]
    for scribble in scribbles:
        for method in methods:
            runs = []
            for seed in seeds:
                path = run_dir / f"{method}-{scribble}-seed{seed}" / "eval" / "test" / "summary.csv"
                if path.is_file():
                    with open(path) as handle:
                        runs.append({row["metric"]: float(row["mean"]) for row in csv.DictReader(handle)})
            cells = []
            for m in METRICS:
                values = [r[m] for r in runs if m in r]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.4f} ± {std:.4f}" if values else "-")
            lines.append(f"| {scribble.upper()} | {method} | {len(runs)} | " + " | ".join(cells)
                         + f" | {PAPER_DSC[scribble][method]:.4f} |")
    return "\n".join(lines)


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
    parser.add_argument("--width", type=int, default=4, help="model.params.width of the UNet backbones (unet, unet_cct)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--scribbles", nargs="+", default=list(SCRIBBLES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed values (one run each)")
    parser.add_argument("--result", default="", help="write the mean ± std table here")
    parser.add_argument("--no-report", action="store_true", help="skip `dias report` (the MLflow table)")
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
    # method by method, every seed of one before the next, so an interrupted table has whole rows
    runs = [(seed, scribble, method) for method in args.methods for scribble in args.scribbles for seed in args.seeds]
    for seed, scribble, method in runs:
        name = f"{method}-{scribble}-seed{seed}"
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
           f"train.seed={seed}",
           f"train.run_dir={run_dir}", f"train.run_name={name}", "train.log_every_steps=10",
           f"optim.lr={args.lr}", "optim.warmup_epochs=0.2",
           "eval.select_from_epoch=0", "eval.overlays=false", "eval.batch_size=128",
           f"track.tracking_uri={uri}", f"track.experiment={args.experiment}",
           f"track.tags={{scribble: {scribble}}}", env=env)
        timings[name] = round(time.perf_counter() - tic, 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    if not args.no_report:
        sh(python, "-m", "dias_dist.cli", "report", args.experiment, "--tracking-uri", uri, "--out",
           str(out / "report"), env=env)
        print((out / "report" / "report.md").read_text())
    table = seed_table(run_dir, args.methods, args.scribbles, args.seeds)
    print(table)
    if args.result:
        load = os.getloadavg()
        note = (f"Table III on phantom v2 ({args.size} px, {args.train} train / {args.val} val / {args.test} test "
                f"sequences); every method {args.epochs * args.steps_per_epoch} steps, batch {args.batch_size}, "
                f"{args.patch} px patches, width {args.width}, lr {args.lr}; seeds {args.seeds}; mean ± std over "
                f"seeds of each run's test mean. Load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2-core VM, "
                f"shared). Reproduce:\n\n    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/weak_table.py "
                f"--out {args.out} --size {args.size} --train {args.train} --test {args.test} --epochs {args.epochs} "
                f"--steps-per-epoch {args.steps_per_epoch} --width {args.width} --seeds {' '.join(map(str, args.seeds))} "
                f"--result {args.result}\n\n")
        Path(args.result).write_text(note + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
