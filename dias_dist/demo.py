"""The README's main command (``bash scripts/demo.sh``): synthetic data -> shards -> baseline ->
2-process CPU training of a reduced-width VSS-Net -> test table, then the same model fed only the
first frame and only the last frame (the paper's Table VI input ablation) for comparison, and
finally ``dias predict`` on the unlabelled phantom series through the model training logged to
MLflow (``runs:/<id>/model``).

Every step is the public command line (``dias phantom``, ``dias shard``, ``dias baseline``,
``torchrun launch/train.py``), run as a subprocess from the repository root, so the demo shows
exactly what a user types. Outputs: ``data/demo``, ``shards/demo``, ``runs/demo-*`` (tables,
overlays, probability maps, checkpoints, ``predict/``), MLflow store ``runs/mlflow.db``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = (("all frames", "configs/demo/vss_net_cpu.yaml", "demo-vss_net", ()),
        ("first frame only", "configs/demo/vss_net_first_cpu.yaml", "demo-vss_net-first", ()),
        ("last frame only", "configs/demo/vss_net_cpu.yaml", "demo-vss_net-last", ("model.params.frames=last",)))
PAPER_DSC = {"all frames": 0.7822, "first frame only": 0.6232, "last frame only": 0.7604}  # Table VI


def _run(cmd: list[str], title: str) -> None:
    print(f"\n== {title}\n$ {' '.join(cmd)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def _summary(run_dir: Path) -> dict[str, tuple[float, float]]:
    import csv

    with open(run_dir / "eval" / "test" / "summary.csv") as handle:
        return {row["metric"]: (float(row["mean"]), float(row["std"])) for row in csv.DictReader(handle)}


def _predict_unlabelled(python: str, run_dir: Path, number: int) -> Path:
    """``dias predict runs:/<id>/model`` on the unlabelled phantom series (the model training logged
    to MLflow); returns the series' output folder."""
    from dias_dist.run import checkpoint

    run_id = checkpoint.load(run_dir / "checkpoints" / "final.pt").get("mlflow_run_id", "")
    if not run_id:
        raise SystemExit(f"{run_dir}: no MLflow run id in final.pt (was tracking off?)")
    out = run_dir / "predict"
    _run([python, "-m", "dias_dist.cli", "predict", f"runs:/{run_id}/model", "data/demo/unlabeled_DSA", "--out",
          str(out.relative_to(ROOT)), "--tracking-uri", "sqlite:///runs/mlflow.db"],
         f"{number}. an unlabelled series through the logged MLflow model")
    return out / "unlabeled_DSA"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="phantom frame side in px")
    parser.add_argument("--train", type=int, default=16, help="training sequences")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes")
    parser.add_argument("--skip-first-frame", "--skip-ablation", action="store_true",
                        help="skip the first-frame and last-frame comparison runs")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both training runs")
    args = parser.parse_args(argv)
    start = time.time()
    python = sys.executable
    torchrun = str(Path(python).with_name("torchrun"))
    stamp = time.strftime("%y%m%d_%H%M%S")
    _run([python, "-m", "dias_dist.cli", "phantom", "data/demo", "--size", str(args.size), "--train", str(args.train),
          "--val", "4", "--test", "8", "--unlabeled", "1", "--seed", "0", "--preview"], "1. synthetic DSA sequences")
    _run([python, "-m", "dias_dist.cli", "shard", "data/demo", "shards/demo", "--min-shards", str(args.nproc)],
         "2. WebDataset shards")
    _run([python, "-m", "dias_dist.cli", "baseline", "shards/demo", "--split", "test", "--no-images",
          "--out", f"runs/demo-baseline-{stamp}"], "3. MinIP-threshold baseline on the test split")
    results = {}
    for index, (label, config, name, extra) in enumerate(RUNS[:1] if args.skip_first_frame else RUNS):
        run_name = f"{name}-{stamp}"
        _run([torchrun, "--standalone", f"--nproc_per_node={args.nproc}", "launch/train.py", config,
              f"train.run_name={run_name}", *extra, *args.overrides],
             f"{4 + index}. VSS-Net ({label}): torchrun {args.nproc} CPU processes, train + test evaluation")
        results[label] = (ROOT / "runs" / run_name, _summary(ROOT / "runs" / run_name))
    label, (run_dir, summary) = next(iter(results.items()))
    print(f"\n== test split, VSS-Net ({label}), mean ± std over images")
    print((run_dir / "eval" / "test" / "summary.md").read_text(), end="")
    if len(results) > 1:
        print("\n== input ablation (paper Table VI): test metrics, mean ± std over images; the paper's DSC")
        for label, (_, summary) in results.items():
            print(f"  {label:<18} DSC {summary['dsc'][0]:.4f} ± {summary['dsc'][1]:.4f}   Sen {summary['sen'][0]:.4f}"
                  f"   AUC {summary['auc'][0]:.4f}   (paper DSC {PAPER_DSC[label]:.4f})")
    predicted = _predict_unlabelled(python, run_dir, len(results) + 4)
    print(f"\noverlays on each sequence's MinIP, with their legend and DSC: {run_dir / 'eval' / 'test' / 'overlay'}")
    print(f"probability maps: {run_dir / 'eval' / 'test' / 'prob'} (.npy), {run_dir / 'eval' / 'test' / 'prob_png'}")
    print(f"MLflow store: {ROOT / 'runs' / 'mlflow.db'}  (open: .venv/bin/mlflow ui --backend-store-uri "
          f"sqlite:///runs/mlflow.db, experiment dias-demo; README 'Comparing runs')")
    print("comparison table of the demo's runs: .venv/bin/dias report dias-demo")
    print(f"unlabelled series predicted through the MLflow model: mask {predicted / 'mask.png'}, "
          f"overlay {predicted / 'overlay.png'}")
    print(f"demo finished in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
