"""Effect of ``dias predict``'s picture options on the phantom test split: Gaussian tile blending against
the paper's uniform average, flip TTA, and the ``--min-size`` clean-up (mean DSC and VC, issue 25 part 4).

    python benchmarks/predict_options.py --out benchmarks/results/predict_options_cpu.md

Builds a small phantom release (``--size`` px, ``--train`` / ``--test`` sequences, seed 0), packs it,
trains VSS-Net (``--width``) for ``--steps`` steps with configs/debug.yaml's recipe (or takes
``--checkpoint``), then predicts every test sequence (its PNG frames, through ``series_probability``
exactly as ``dias predict`` does: tile 64, stride 32) under each setting and scores it against the
label with the paper's metrics (threshold 0.5). VC = (#components(pred) + 1) / (#components(gt) + 1):
1 is ideal, above 1 = fragments. The result file starts with the command that wrote it.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dias_dist.metrics import binarize, image_metrics  # noqa: E402

SETTINGS = [  # (name, blend, tta, min_size_px)
    ("uniform (paper)", "uniform", False, 0),
    ("gaussian (predict default)", "gaussian", False, 0),
    ("gaussian + TTA flips", "gaussian", True, 0),
    ("gaussian + min-size 20px", "gaussian", False, 20),
    ("gaussian + TTA + min-size 20px", "gaussian", True, 20),
]


def train(work: Path, args) -> Path:
    from dias_dist import trainer
    from dias_dist.config import load_config

    cfg = load_config(ROOT / "configs" / "debug.yaml", [
        f"data.shards={work / 'shards'}", f"train.run_dir={work / 'runs'}", "train.run_name=bench",
        f"train.epochs={max(1, args.steps // 25)}", "train.steps_per_epoch=25", "eval.val_every_epochs=1000",
        "eval.test_split=", f"model.params.width={args.width}", "optim.warmup_epochs=1"])
    trainer.run(cfg)
    return work / "runs" / "bench" / "checkpoints" / "final.pt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/predict_options.py", *sys.argv[1:]])

    from dias_dist.data import dias
    from dias_dist.data.phantom_cli import write_phantom_dataset
    from dias_dist.predict.model import load_trained_model, series_probability
    from dias_dist.predict.postprocess import remove_small

    with tempfile.TemporaryDirectory(prefix="dias-bench-") as tmp:
        work = Path(tmp)
        write_phantom_dataset(work / "src", size=args.size, train=args.train, val=2, test=args.test, unlabeled=0,
                              seed=0, preview=False, progress=False)
        tic = time.perf_counter()
        if args.checkpoint:
            checkpoint = Path(args.checkpoint)
        else:
            subprocess.run([sys.executable, "-m", "dias_dist.cli", "shard", str(work / "src"), str(work / "shards")],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            checkpoint = train(work, args)
        train_s = time.perf_counter() - tic
        model = load_trained_model(str(checkpoint))
        sequences = [dias.read_sequence(files) for files in dias.list_sequences(work / "src", "test")]
        rows = {name: [] for name, *_ in SETTINGS}
        seconds = {name: 0.0 for name, *_ in SETTINGS}
        for sequence in sequences:
            frames = sequence.frames / 255.0
            for name, blend, tta, min_px in SETTINGS:
                tic = time.perf_counter()
                prob = series_probability(model, frames, blend=blend, tta=tta)
                seconds[name] += time.perf_counter() - tic
                mask = binarize(prob, 0.5, False)
                if min_px:
                    mask, _, _ = remove_small(mask, min_px)
                rows[name].append(image_metrics(prob, sequence.label, 0.5, False, pred_bin=mask))
    base = {key: np.mean([r[key] for r in rows["uniform (paper)"]]) for key in ("dsc", "vc", "cldice")}
    lines = [f"`{command}`", "",
             f"Phantom test split: {len(sequences)} sequences of {args.size}x{args.size} (seed 0), VSS-Net width "
             f"{args.width} trained {args.steps} steps on {args.train} sequences (configs/debug.yaml recipe; "
             f"{train_s:.0f} s), tile 64 / stride 32, threshold 0.5. Mean over sequences; delta against the "
             "uniform average. VC: 1 ideal, above 1 = fragments.", "",
             "| setting | DSC | delta DSC | VC | delta VC | clDice | seconds / sequence |", "|---|---|---|---|---|---|---|"]
    for name, *_ in SETTINGS:
        means = {key: np.mean([r[key] for r in rows[name]]) for key in ("dsc", "vc", "cldice")}
        lines.append(f"| {name} | {means['dsc']:.4f} | {means['dsc'] - base['dsc']:+.4f} | {means['vc']:.3f} | "
                     f"{means['vc'] - base['vc']:+.3f} | {means['cldice']:.4f} | "
                     f"{seconds[name] / len(sequences):.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
