"""torchrun entry point: ``torchrun --nproc_per_node=N launch/train.py CONFIG [key=value ...] [--dry-run]``.

Also runs as a plain single process (``python launch/train.py CONFIG``). All logic lives in
``dias_dist.trainer.run``; this file only parses arguments and tears the process group down.
"""
from __future__ import annotations

import argparse
import sys

from dias_dist import dist
from dias_dist.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML file under configs/")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as optim.lr=3e-4")
    parser.add_argument("--dry-run", action="store_true", help="build everything and run one step")
    args = parser.parse_intermixed_args(argv)  # options may sit between the overrides
    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as err:
        print(f"launch/train.py: error: {err}", file=sys.stderr)
        return 2
    from dias_dist.trainer import run

    try:
        result = run(cfg, dry_run=args.dry_run)
    except ValueError as err:
        print(f"launch/train.py: error: {err}", file=sys.stderr)
        return 2
    finally:
        dist.teardown()
    if dist.is_main():
        print({k: v for k, v in result.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
