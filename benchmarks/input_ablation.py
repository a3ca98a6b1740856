"""Table VI on synthetic data: VSS-Net fed first | last | first_last | mean | min | all frames, several seeds,
next to the thresholded-MinIP baseline.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/input_ablation.py --out runs/input_ablation \\
        --result benchmarks/results/input_ablation_cpu.md

(the budget is the demo config's, 400 steps; a budget override such as ``train.epochs=4`` goes last: options before the config overrides: ``--inputs`` and ``--seeds`` take several values, so an override
written right after them is read as one more of those)

Steps: ``dias phantom`` (the demo's data: 128 px, 16 train / 4 val / 8 test, seed 0) -> ``dias shard`` ->
``dias baseline`` on the test split -> one ``launch/train.py configs/demo/vss_net_cpu.yaml`` run per
(input, seed) with ``model.params.frames`` and ``train.seed`` changed and everything else equal (same
steps, batch, patch, lr). Each run's test ``summary.csv`` holds the mean over test images; the table
reports, per input, the mean ± std of those over seeds. Finished runs are reused, so an interrupted
table is completed by running the command again.
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
INPUTS = ("first", "last", "first_last", "mean", "min", "all")
METRICS = ("dsc", "sen", "spe", "auc", "vc")
PAPER = {"first": 0.6232, "last": 0.7604, "first_last": 0.7777, "mean": 0.7790, "min": 0.7802, "all": 0.7822}


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT)


def summary(path: Path) -> dict[str, float]:
    with open(path) as handle:
        return {row["metric"]: float(row["mean"]) for row in csv.DictReader(handle)}


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/input_ablation", help="folder for data, shards and runs")
    parser.add_argument("--result", default="", help="write the markdown table here (and .json next to it)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS))
    parser.add_argument("--config", default="configs/demo/vss_net_cpu.yaml")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: write the table from the runs already finished (rows say how many seeds)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run (the budget)")
    args = parser.parse_args()

    out = (ROOT / args.out).resolve()
    src, shards, run_dir = out / "src", out / "shards", out / "runs"
    python = sys.executable
    if not (src / "test").is_dir():
        sh(python, "-m", "dias_dist.cli", "phantom", str(src), "--size", str(args.size), "--train", str(args.train),
           "--val", "4", "--test", "8", "--unlabeled", "0", "--seed", "0", "--no-preview")
    if not (shards / "manifest.json").is_file():
        sh(python, "-m", "dias_dist.cli", "shard", str(src), str(shards))
    baseline_dir = out / "baseline"
    if not (baseline_dir / "summary.csv").is_file():
        sh(python, "-m", "dias_dist.cli", "baseline", str(shards), "--split", "test", "--no-images",
           "--out", str(baseline_dir))
    timings = {}
    for seed in ([] if args.table_only else args.seeds):
        for frames in args.inputs:
            name = f"{frames}-seed{seed}"
            if (run_dir / name / "eval" / "test" / "summary.csv").is_file():
                continue
            tic = time.perf_counter()
            sh(python, "launch/train.py", args.config, f"data.shards={shards}", "data.num_workers=0",
               f"model.params.frames={frames}", f"train.seed={seed}", f"train.run_dir={run_dir}",
               f"train.run_name={name}", "train.progress=false", "eval.overlays=false", "track.enabled=false",
               *args.overrides)
            timings[name] = round(time.perf_counter() - tic, 1)
            print(f"{name}: {timings[name]} s", flush=True)

    rows, raw = [], {}
    for frames in args.inputs:
        runs = [summary(p) for seed in args.seeds
                if (p := run_dir / f"{frames}-seed{seed}" / "eval" / "test" / "summary.csv").is_file()]
        raw[frames] = runs
        rows.append(f"| {frames} | {len(runs)} | " + " | ".join(mean_std([r[m] for r in runs]) for m in METRICS)
                    + f" | {PAPER[frames]:.4f} |")
    base = summary(baseline_dir / "summary.csv")
    load = os.getloadavg()
    table = "\n".join([
        "| input | seeds | DSC | Sen | Spe | AUC | VC | paper DSC |", "|---|---|---|---|---|---|---|---|", *rows,
        f"| MinIP threshold (`dias baseline`, no training) | - | {base['dsc']:.4f} | {base['sen']:.4f} | "
        f"{base['spe']:.4f} | {base['auc']:.4f} | {base['vc']:.2f} | - |"])
    print(table)
    if args.result:
        result = Path(args.result)
        result.parent.mkdir(parents=True, exist_ok=True)
        header = (f"Table VI input ablation on phantom v2 ({args.size} px, {args.train} train / 4 val / 8 test "
                  f"sequences), {args.config} {' '.join(args.overrides)}; seeds {args.seeds}; mean ± std over "
                  f"seeds of the per-run test means. Load average at the end: {load[0]:.1f} {load[1]:.1f} "
                  f"{load[2]:.1f} (2-core VM, shared).\n\n    OMP_NUM_THREADS=1 .venv/bin/python "
                  f"benchmarks/input_ablation.py --out {args.out} --seeds {' '.join(map(str, args.seeds))} --inputs "
                  f"{' '.join(args.inputs)} --result {args.result} {' '.join(args.overrides)}\n\n")
        result.write_text(header + table + "\n")
        result.with_suffix(".json").write_text(json.dumps({"runs": raw, "baseline": base, "timings_s": timings,
                                                           "load_average": load}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
