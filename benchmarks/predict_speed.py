"""``dias predict`` seconds per series, this tree against an older one, same input and tile settings
(issue 25: the subtraction, frame choice, Gaussian blend and new outputs must stay within 10 %).

    git archive BASE | tar -x -C /tmp/base
    python benchmarks/predict_speed.py --old-root /tmp/base --out benchmarks/results/predict_speed_cpu.md

Input: one phantom sequence (``--size`` px, its frames repeated / cut to 8, as ``.npy`` uint8), full-size
VSS-Net with random weights (the time does not depend on them; the checkpoint is written by the old
tree so that both read its config), tile 64 / stride 32. Each measurement is a fresh process (the tree
on its ``PYTHONPATH``) that predicts the series once to warm up and then ``--inner`` more times, timing
``cli.main(["predict", ...])`` (read, preprocess, sliding window, every output written); old and new
alternate ``--repeats`` times and the minimum per-series time of each is kept. New is measured with
its default (Gaussian blend) and with ``--blend uniform`` (the old arithmetic). The result file starts
with the command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONCE = r"""
import json, sys, time, tempfile
from dias_dist import cli
ckpt, series, inner, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
times = []
with tempfile.TemporaryDirectory() as out:
    for i in range(inner + 1):
        tic = time.perf_counter()
        assert cli.main(["predict", ckpt, series, "--out", f"{out}/{i}", *extra]) == 0
        times.append(time.perf_counter() - tic)
print(json.dumps(min(times[1:])))
"""

MAKE = r"""
import sys, numpy as np, torch
from dias_dist import checkpoint
from dias_dist.config import load_config, to_dict
from dias_dist.models import build_model
from dias_dist.data.phantom import generate_sequence, sequence_rng
torch.manual_seed(0)
cfg = load_config(sys.argv[1] + "/configs/debug.yaml", ["model.params.width=32"])
net = build_model(cfg.model.name, **cfg.model.params)
checkpoint.save(sys.argv[2], {"model": net.state_dict(), "config": to_dict(cfg), "step": 0})
frames = generate_sequence(int(sys.argv[4]), sequence_rng(0, 1)).frames
np.save(sys.argv[3], np.resize(frames, (8, *frames.shape[1:])))
"""


def run(root: Path, code: str, *argv: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=root, env=env, check=True, capture_output=True,
                          text=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inner", type=int, default=1)
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/predict_speed.py", *sys.argv[1:]])
    old = Path(args.old_root).resolve()
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), platform.processor())
    with tempfile.TemporaryDirectory(prefix="dias-speed-") as tmp:
        ckpt, series = f"{tmp}/final.pt", f"{tmp}/run.npy"
        run(old, MAKE, str(old), ckpt, series, str(args.size))
        variants = [("old", old, []), ("new (default: gaussian blend)", ROOT, []),
                    ("new --blend uniform", ROOT, ["--blend", "uniform"])]
        times = {name: [] for name, *_ in variants}
        for _ in range(args.repeats):
            for name, root, extra in variants:
                times[name].append(float(run(root, ONCE, ckpt, series, str(args.inner), json.dumps(extra))))
    best = {name: min(values) for name, values in times.items()}
    lines = [f"`{command}`", "", f"CPU: {cpu} ({os.cpu_count()} logical cores visible, OMP_NUM_THREADS="
             f"{os.environ.get('OMP_NUM_THREADS', '1')}); full-size VSS-Net (random weights), one {args.size}x"
             f"{args.size} series of 8 frames (.npy uint8), tile 64 / stride 32, seconds per `dias predict` of the "
             f"series (read, preprocess, sliding window, all outputs), min of {args.repeats} interleaved runs.", "",
             "| code | min s | ratio to old | all runs (s) |", "|---|---|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {best[name]:.3f} | {best[name] / best['old']:.3f} | "
                     f"{', '.join(f'{v:.3f}' for v in values)} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
