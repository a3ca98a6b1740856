"""Training-loader patches/s, this tree's ``dias_dist/data/loader.py`` against the one at git revision ``--base``,
run alternately in one process on the same memory-mapped shards; also checks they give identical batches.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loader_ab.py --base 6d2f7b2 --seconds 3 --repeats 8

The old module is read with ``git show BASE:dias_dist/data/loader.py`` into a temporary file and loaded
beside the package (it imports the package's other modules). Shards: ``--workdir`` (written there as in
``data_throughput.py`` when absent: 800 px phantom, 12 training sequences, 4 shards). Each repeat runs
old then new for ``--seconds``; rates are per wall second and per CPU second of this process, the best
repeat of each is kept; the ratio new/old is printed last as JSON.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dias_dist.data import loader as new
from dias_dist.data.phantom_cli import write_phantom_dataset
from dias_dist.data.shards import write_shards

ROOT = Path(__file__).resolve().parents[1]


def old_loader(base: str, folder: Path):
    """The module ``dias_dist/data/loader.py`` of git revision ``base``, loaded as ``dias_dist.data._loader_base``."""
    source = subprocess.run(["git", "show", f"{base}:dias_dist/data/loader.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = folder / "loader_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("dias_dist.data._loader_base", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def stream(module, shard_dir: Path, seed: int = 0):
    return iter(module.train_batches(module.TrainSource(str(shard_dir)), batch_size=64, patches_per_sequence=64,
                                     shuffle_buffer=2048, num_workers=0, seed=seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="6d2f7b2", help="git revision of the old loader")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--check-batches", type=int, default=50, help="batches compared for equality first")
    parser.add_argument("--workdir", default="", help="shard folder's parent, kept (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        shard_dir = work / "shards"
        if not (shard_dir / "manifest.json").is_file():
            write_phantom_dataset(work / "phantom", size=800, train=12, val=0, test=0, unlabeled=0, seed=0,
                                  preview=False)
            write_shards(work / "phantom", shard_dir, splits=["training"], min_shards=4)
        old = old_loader(args.base, Path(tmp))
        a, b = stream(old, shard_dir, seed=1), stream(new, shard_dir, seed=1)
        for _ in range(args.check_batches):
            x, y = next(a), next(b)
            assert all(torch.equal(x[key], y[key]) for key in x), "the loaders' batches differ"
        streams = {"old": stream(old, shard_dir), "new": stream(new, shard_dir)}
        for s in streams.values():
            for _ in range(40):  # fill the shuffle buffer and the page cache
                next(s)
        runs: dict[str, list] = {name: [] for name in streams}
        for _ in range(args.repeats):
            for name, s in streams.items():
                patches, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
                while time.perf_counter() - wall0 < args.seconds:
                    patches += next(s)["image"].shape[0]
                runs[name].append((round(patches / (time.perf_counter() - wall0)),
                                   round(patches / (time.process_time() - cpu0))))
    best = {name: (max(r[0] for r in rs), max(r[1] for r in rs)) for name, rs in runs.items()}
    print(json.dumps({"base": args.base, "identical_batches_checked": args.check_batches, "runs": runs,
                      "old_patches_per_s": best["old"][0], "new_patches_per_s": best["new"][0],
                      "ratio_wall": round(best["new"][0] / best["old"][0], 3),
                      "ratio_cpu": round(best["new"][1] / best["old"][1], 3)}))


if __name__ == "__main__":
    main()
