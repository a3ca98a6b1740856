"""``dias shard SRC_DIR shards/NAME``: pack a DIAS release-layout folder into WebDataset shards."""
from __future__ import annotations

import argparse
import time

from .shards import write_shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src_dir", help="folder in the DIAS release layout (the real release or the output of dias phantom)")
    parser.add_argument("out_dir", help="shard set folder to write, e.g. shards/demo")
    parser.add_argument("--shard-size-mb", type=float, default=256, help="start a new shard past this size")
    parser.add_argument("--min-shards", type=int, default=1,
                        help="at least this many shards per split (when it has that many sequences), "
                             "e.g. ranks x workers")
    parser.add_argument("--splits", nargs="+", default=None, help="splits to shard (default: every one present)")


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    manifest = write_shards(args.src_dir, args.out_dir, shard_size_mb=args.shard_size_mb,
                            min_shards=args.min_shards, splits=args.splits)
    for split, entry in manifest["splits"].items():
        size = sum(s["bytes"] for s in entry["shards"]) / 2 ** 20
        print(f"{split:<11} {entry['num_samples']:>5} sequences  {entry['num_shards']:>4} shards  {size:9.1f} MB")
    print(f"wrote {args.out_dir}/manifest.json in {time.perf_counter() - start:.1f} s")
    return 0
