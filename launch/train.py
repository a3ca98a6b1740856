"""torchrun entry point: ``torchrun --nproc_per_node=N launch/train.py CONFIG [key=value ...] [--dry-run]``.

Also runs as a plain single process (``python launch/train.py CONFIG``) and under the DeepSpeed
launcher (``deepspeed launch/train.py CONFIG dist.engine=deepspeed``). The same command as
``python -m dias_dist.train`` and ``dias train``, which is what an installed package offers.
"""
from __future__ import annotations

import sys

from dias_dist.train import main

if __name__ == "__main__":
    sys.exit(main())
