"""``dias rpst CONFIG [key=value ...] [--stage STAGE]``: random-patch self-training.

Without ``--stage`` every stage of the job that is not finished yet runs in order (teacher, pseudo1,
round1, ... roundR). ``--stage teacher|pseudoK|roundK`` runs one stage of the job named by
``train.run_name`` (its earlier stages must be finished). Several processes:
``torchrun --nproc_per_node=N -m dias_dist.cli rpst CONFIG ...``.
"""
from __future__ import annotations

import argparse

from dias_dist import dist
from dias_dist.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file, e.g. configs/semi/rpst.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as data.num_labeled=3 rpst.rounds=2")
    parser.add_argument("--stage", default="all",
                        help="all (default) or one stage: teacher, pseudo1, round1, pseudo2, round2, ...")


def main(args: argparse.Namespace) -> int:
    from dias_dist.semi import rpst

    cfg = load_config(args.config, args.overrides)
    if args.stage != "all":
        rpst.stage_round(args.stage)  # ValueError for a malformed stage name before any work
        if not cfg.train.run_name and args.stage != "teacher":
            raise ValueError(f"--stage {args.stage} continues an existing job: set train.run_name=<job>")
    try:
        if args.stage == "all":
            state = rpst.run_rpst(cfg)
        else:
            dist.init(cfg.dist, cfg.train.device)
            state = rpst.load_state(cfg, rpst.job_name(cfg))
            rpst.run_stage(cfg, args.stage, state=state)  # validates cfg before any work
    finally:
        dist.teardown()
    if dist.is_main():
        print(f"rpst job {state['job']} (parent MLflow run {state['parent_run_id'] or '-'}):")
        for stage, entry in state["stages"].items():
            metrics = entry.get("metrics", {})
            shown = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("test_dsc", "test_auc") if k in metrics)
            print(f"  {stage}: run {entry.get('run_id') or '-'} {shown or entry.get('out_dir', '')}")
    return 0
