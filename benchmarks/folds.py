"""K-fold ensemble against the single split at equal total steps, and folds as parallel Ray Tune trials
against one after another (issue 26 §4), on the demo's phantom data.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/folds.py --out runs/folds_bench \\
        --result benchmarks/results/folds_cpu.md

Steps: ``dias phantom`` (the demo's data: 128 px, 16 train / 4 val / 8 test, seed 0) -> ``dias shard`` ->
one single-split run of ``configs/demo/vss_net_cpu.yaml`` (``--steps`` steps, 1 process) -> ``tune.py folds
--k K`` twice with ``--steps / K`` steps per fold: ``--cpus-per-trial 1`` (as many folds at once as the
machine has cores) and ``--cpus-per-trial <all cores>`` (one fold at a time) -> ``dias report`` over the
experiment (mean ± std, paired Wilcoxon over the test images between the single run and the folds'
ensemble). Wall times include Ray's start-up and the ensemble's test evaluation.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(*args: str, env: dict | None = None) -> float:
    print("+", " ".join(args), flush=True)
    tic = time.perf_counter()
    subprocess.run(args, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - tic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/folds_bench")
    parser.add_argument("--result", default="")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400, help="total optimizer steps (single run; sum over folds)")
    parser.add_argument("--config", default="configs/demo/vss_net_cpu.yaml")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if not (out / "shards" / "manifest.json").is_file():
        sh(py, "-m", "dias_dist.cli", "phantom", str(out / "data"), "--size", "128", "--train", "16", "--val", "4",
           "--test", "8", "--unlabeled", "0", "--seed", "0", env=env)
        sh(py, "-m", "dias_dist.cli", "shard", str(out / "data"), str(out / "shards"), env=env)
    store = f"sqlite:///{out / 'runs' / 'mlflow.db'}"
    common = [f"data.shards={out / 'shards'}", f"train.run_dir={out / 'runs'}", f"track.tracking_uri={store}",
              "track.experiment=folds-bench", "data.num_workers=0", "train.progress=false", "eval.overlays=false"]
    per_fold = args.steps // args.k
    times = {}
    times["single"] = sh(py, "-m", "dias_dist.train", args.config, *common, "train.run_name=single",
                         "train.epochs=8", f"train.steps_per_epoch={args.steps // 8}", "train.resume=never", env=env)
    cores = os.cpu_count() or 1
    for name, cpus in (("parallel", 1), ("sequential", cores)):
        times[f"folds_{name}"] = sh(py, "tune.py", "folds", args.config, *common, "train.epochs=2",
                                    f"train.steps_per_epoch={per_fold // 2}", "--k", str(args.k), "--name",
                                    f"folds-{name}", "--cpus-per-trial", str(cpus), "--storage", str(out / "tune"),
                                    env=env)
    sh(py, "-m", "dias_dist.cli", "report", "folds-bench", "--tracking-uri", store, "--out", str(out / "report"),
       "--no-log", env=env)
    settings = list(csv.DictReader(open(out / "report" / "report_settings.csv")))
    lines = [f"# {args.k}-fold ensemble vs single split, {args.steps} total steps ({cores} CPU cores)\n",
             f"Wall time: single run {times['single']:.0f} s; {args.k} folds as parallel trials "
             f"({min(cores, args.k)} at once) {times['folds_parallel']:.0f} s; one after another "
             f"{times['folds_sequential']:.0f} s (both with Ray start-up and the ensemble's test evaluation).\n",
             (out / "report" / "report.md").read_text()]
    text = "\n".join(lines)
    print(text)
    if args.result:
        Path(args.result).write_text(text)
        Path(args.result).with_suffix(".json").write_text(json.dumps({"times_s": times, "settings": settings}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
