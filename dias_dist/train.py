"""Training entry point for one or many processes: ``python -m dias_dist.train CONFIG [key=value ...] [--dry-run]``.

Several processes: ``torchrun --nproc_per_node=N -m dias_dist.train CONFIG ...`` (or the same
through ``launch/train.py``, or ``deepspeed launch/train.py ...``: the ``--local_rank`` that the
DeepSpeed launcher adds is accepted). Works from an installed package; CONFIG may name a
packaged config (``debug.yaml``, ``weak/pce.yaml``), see ``dias_dist.config.load_config``.
"""
from __future__ import annotations

import argparse
import sys

from dias_dist import train_cli
from dias_dist.cli import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dias_dist.train", description="Train as CONFIG describes (one process, or one rank of torchrun / deepspeed).",
                                     epilog="example: torchrun --nproc_per_node=2 -m dias_dist.train configs/debug.yaml")
    train_cli.add_arguments(parser)
    return run_command(train_cli, parser, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
