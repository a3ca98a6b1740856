"""``dias train CONFIG [key=value ...] [--dry-run]``: train in this one process.

For several processes use ``torchrun --nproc_per_node=N -m dias_dist.train CONFIG ...`` (or
``launch/train.py``): the same command; the result is printed by the main rank only.
"""
from __future__ import annotations

import argparse

from dias_dist import dist
from dias_dist.config import load_config
from dias_dist.run.folder import describe_os_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file, e.g. configs/debug.yaml (or a packaged one: debug.yaml)")
    parser.add_argument("overrides", nargs="*", default=[], help="optional dotted overrides such as optim.lr=3e-4")
    parser.add_argument("--dry-run", action="store_true", help="build everything and run one step")
    # the DeepSpeed launcher passes --local_rank=N (and sets LOCAL_RANK, which dias_dist.dist reads)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


class SameOnEveryRank(ValueError):
    """A user error every process of a launch meets alike (a bad config): under torchrun only local
    rank 0 prints it (``cli.run_command``), so the console shows it once per node, not once per rank."""

    same_on_every_rank = True


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as err:  # the same file and overrides on every rank: the same error
        raise SameOnEveryRank(str(err)) from None
    from dias_dist.trainer import run

    try:
        result = run(cfg, dry_run=args.dry_run)
    except ValueError:
        raise  # already one line (checkpoint.CheckpointWriteError is both a ValueError and an OSError)
    except OSError as err:  # a full disk or an unwritable folder: one line naming path and cause
        raise ValueError(describe_os_error(err)) from None
    finally:
        dist.teardown()
    if dist.is_main():
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0
