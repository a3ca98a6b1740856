#!/usr/bin/env python
"""Ray Tune sweeps for dias_dist (locally, or on a cluster via `ray submit configs/ray/cluster.yaml tune.py -- ...`).

  python tune.py sscr-sweep configs/weak/sscr.yaml [--grid method.params.lambda1=0.5,1,2 ...] [--num-samples N] [--scheduler asha|pbt]
  python tune.py rpst configs/semi/rpst.yaml [--labeled 1,3,10] [--max-rounds R]
  python tune.py folds configs/full/vss_net.yaml --k 5     (K-fold cross-validation + the folds' ensemble, dias_dist/cv.py)

Every trial is a full `dias_dist.trainer.run` (RPST: `dias_dist.semi.rpst.run_rpst`) nested as an MLflow
run under the sweep's parent run. Re-running the same --name resumes from Tune's experiment state;
training trials report checkpoints, so a restored or PBT-cloned trial continues from one.
--storage: a folder every node shares, or s3://bucket/prefix, gs://bucket/prefix (passed to Ray as is).
"""
from __future__ import annotations

import argparse
import sys

from dias_dist.sweep import SweepSpec, parse_grid, run_sweep

DEFAULT_SSCR_GRID = ["method.params.lambda1=0.5,1.0,2.0", "method.params.lambda2=0.0,0.5,1.0"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tune.py", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["sscr-sweep", "rpst", "folds"])
    parser.add_argument("config", help="base YAML config")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every trial")
    parser.add_argument("--grid", action="append", default=[], help="section.key=v1,v2 (repeatable)")
    parser.add_argument("--labeled", default="1,3,10", help="rpst: labelled-set sizes, one trial each")
    parser.add_argument("--k", type=int, default=5, help="folds: number of folds (one parallel trial each)")
    parser.add_argument("--max-rounds", type=int, default=3, help="rpst: re-training rounds per trial")
    parser.add_argument("--num-samples", type=int, default=1, help="repeats of the whole grid")
    parser.add_argument("--scheduler", choices=["fifo", "asha", "pbt"], default="fifo",
                        help="pbt: population-based training over the --grid keys (sscr-sweep)")
    parser.add_argument("--perturbation-interval", type=int, default=2,
                        help="pbt: validations between two exploit/explore steps of a trial")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=None,
                        help="GPUs one trial holds, shared equally by its workers (default: one per worker "
                             "if the Ray cluster has GPUs, else 0; decided after joining the cluster)")
    parser.add_argument("--workers-per-trial", type=int, default=1,
                        help=">1: Ray Train TorchTrainer per trial (DDP over that many workers)")
    parser.add_argument("--name", default=None, help="experiment name (same name = resume)")
    parser.add_argument("--address", default=None, help="join a running Ray cluster (e.g. auto)")
    parser.add_argument("--storage", default=None,
                        help="Tune experiment storage: a local/shared folder (made absolute) or a URI such as "
                             "s3://bucket/tune, gs://bucket/tune (unchanged); default <train.run_dir>/tune")
    args = parser.parse_args(argv)

    if args.workers_per_trial < 1:
        parser.error("--workers-per-trial must be >= 1")
    try:
        if args.kind == "folds":
            from dias_dist.cv import run_folds

            if args.grid or args.scheduler != "fifo" or args.num_samples != 1:
                raise ValueError("folds: --grid, --scheduler and --num-samples do not apply (the grid is data.fold)")
            out = run_folds(args.config, args.k, args.overrides, address=args.address, storage_path=args.storage,
                            name=args.name or "folds", cpus_per_trial=args.cpus_per_trial,
                            gpus_per_trial=args.gpus_per_trial, workers_per_trial=args.workers_per_trial)
            print(f"[tune] {len(out['rows'])} folds, {len(out['errors'])} failed; summary in {out['dir']}; "
                  f"MLflow parent run {out['parent_run_id']} (holds the ensemble's test metrics)")
            return 1 if len(out["errors"]) == len(out["rows"]) else 0
        if args.kind == "sscr-sweep":
            space = parse_grid(args.grid or DEFAULT_SSCR_GRID)
            kind, rounds = "train", 0
        else:
            sizes = [int(n) for n in args.labeled.split(",") if n.strip()]
            space = {"data.num_labeled": sizes, **parse_grid(args.grid)}
            kind, rounds = "rpst", args.max_rounds
        spec = SweepSpec(
            kind=kind, config=args.config, param_space=space, overrides=args.overrides,
            name=args.name or f"{args.kind}", num_samples=args.num_samples, scheduler=args.scheduler,
            perturbation_interval=args.perturbation_interval,
            cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
            workers_per_trial=args.workers_per_trial, max_rounds=rounds,
        )
        out = run_sweep(spec, address=args.address, storage_path=args.storage)
    except ValueError as err:
        print(f"tune.py: error: {err}", file=sys.stderr)
        return 2
    print(f"[tune] {len(out['rows'])} trials, {len(out['errors'])} failed; summary in {out['dir']}; "
          f"MLflow parent run {out['parent_run_id']}")
    return 1 if out["rows"] and len(out["errors"]) == len(out["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
