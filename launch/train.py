"""torchrun entry point: ``torchrun --nproc_per_node=N launch/train.py CONFIG [key=value ...] [--dry-run]``.

Also runs as a plain single process (``python launch/train.py CONFIG``). The same command as
``dias train`` (``dias_dist.train_cli``): argument parsing, error reporting, the training loop and
the process-group teardown all live there.
"""
from __future__ import annotations

import sys

from dias_dist import cli

if __name__ == "__main__":
    sys.exit(cli.main(["train", *sys.argv[1:]]))
