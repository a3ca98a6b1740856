"""Table III on real vessels (issue 24 §3): the six scribble methods trained on DRIVE scribbles.

    .venv/bin/python benchmarks/drive_weak.py --work /tmp/dias_drive --steps 1000 --seeds 0 \
        --scribbles rdfa --out benchmarks/results/drive_weak_cpu

Needs the imported DRIVE folder ``WORK/data`` that ``benchmarks/drive_supervised.py`` makes. Steps:
copy it to ``WORK/weak_data``, write RDFA scribbles with ``dias scribbles`` (thresholds scaled to the
565x584 images, docs/DECISIONS.md) and SALE-like scribbles with ``data.scribbles.sale_scribble``
(seeded per image) for the training images, shard, then one ``launch/train.py`` run per (method,
scribble, seed) with ``configs/weak/<method>.yaml`` and the DRIVE supervised recipe
(``configs/drive/unet_cpu.yaml``: 48 px patches, batch 32, lr 3e-3, width 16) at ``--steps``.

Every run is scored on the 20 test images against the full first-observer masks, inside the FOV, four
ways: its final and its best-validation checkpoint (validation = 3 held-out training images with full
masks), each with the reference's limited softmax (channels 0..1 renormalised) and with the full softmax
over all channels (``eval.softmax=full``): the difference is the threshold-calibration effect of the
third, unannotated channel (zero for DMPLS's two-channel head). Finished runs are reused.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import cpu_model, git_sha, load_average  # noqa: E402
from weak_table import METHODS, PAPER_DSC  # noqa: E402  (the phantom table's method list and paper numbers)

from dias_dist.data import dias  # noqa: E402
from dias_dist.data.phantom_cli import save_png  # noqa: E402
from dias_dist.data.scribbles import sale_scribble  # noqa: E402

SCORINGS = {"final_limited": ("final", "limited"), "final_full": ("final", "full"),
            "best_limited": ("best", "limited"), "best_full": ("best", "full")}
RECIPE = ["data.patch_size_px=48", "data.patches_per_sequence=32", "data.shuffle_buffer=512", "data.num_workers=1",
          "model.params.width=16", "optim.lr=3.0e-3", "optim.warmup_epochs=1", "train.batch_size=32",
          "train.device=cpu", "train.log_every_steps=20", "eval.select_metric=dsc", "eval.select_from_epoch=0",
          "eval.batch_size=64", "eval.test_checkpoint=final", "eval.overlays=false", "train.amp=false"]


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT, env={**os.environ, "DS_ACCELERATOR": "cpu"})


def prepare(work: Path, scribbles: list[str], seed: int = 2022) -> Path:
    """``WORK/weak_data`` with scribbles, sharded into ``WORK/weak_shards``; returns the shard folder."""
    data, shards = work / "weak_data", work / "weak_shards"
    dias_cli = str(Path(sys.executable).with_name("dias"))
    if not (data / "import.json").is_file():
        shutil.copytree(work / "data", data)
    if "rdfa" in scribbles and not (data / "training" / "scribble_labels" / "RDFA").is_dir():
        sh(dias_cli, "scribbles", str(data), "--split", "training")
    sale_dir = data / "training" / "scribble_labels" / "SALE"
    if "sale" in scribbles and not sale_dir.is_dir():
        sale_dir.mkdir(parents=True)
        for files in dias.list_sequences(data, "training"):
            label = dias.read_label(files.label)
            rng = np.random.default_rng([seed, files.seq_id])
            save_png(sale_dir / f"label_s{files.seq_id}.png", sale_scribble(label, rng))
    if not (shards / "manifest.json").is_file():
        sh(dias_cli, "shard", str(data), str(shards))
    return shards


def read_summary(path: Path) -> dict:
    with open(path) as handle:
        return {row["metric"]: float(row["mean"]) for row in csv.DictReader(handle)}


def scribble_stats(data: Path, scribble: str) -> dict:
    """Share of vessel and background pixels the training scribbles annotate."""
    vessel, background = [], []
    folder = dias.SCRIBBLE_FOLDERS[scribble]
    for files in dias.list_sequences(data, "training"):
        label = dias.read_label(files.label) > 0
        s = dias.read_png_gray(data / "training" / "scribble_labels" / folder / f"label_s{files.seq_id}.png")
        vessel.append(np.mean(s[label] == 1))
        background.append(np.mean(s[~label] == 0))
    return {"vessel_px_annotated": float(np.mean(vessel)), "background_px_annotated": float(np.mean(background))}


def run_one(work: Path, shards: Path, method: str, scribble: str, seed: int, steps: int, experiment: str) -> dict:
    name = f"{method}-{scribble}-seed{seed}"
    run = work / "weak_runs" / name
    times = run / "launch_time.json"
    if not times.is_file():
        start = time.time()
        sh(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "launch/train.py",
           f"configs/weak/{method}.yaml", f"data.shards={shards}", f"data.target=scribble_{scribble}", *RECIPE,
           f"train.epochs={max(1, steps // 100)}", "train.steps_per_epoch=100", f"train.seed={seed}",
           f"train.run_dir={work / 'weak_runs'}", f"train.run_name={name}", f"track.experiment={experiment}",
           f"track.tags={{scribble: {scribble}, data: drive}}")
        times.write_text(json.dumps({"start": start, "end": time.time()}))
    dias_cli = str(Path(sys.executable).with_name("dias"))
    scores = {}
    for label, (checkpoint, softmax) in SCORINGS.items():
        out = run / "eval" / f"test_{label}"
        if label == "final_limited":
            out = run / "eval" / "test"  # the trainer's own test evaluation (eval.test_checkpoint=final)
        if not (out / "summary.csv").is_file():
            sh(dias_cli, "evaluate", str(run / "checkpoints" / f"{checkpoint}.pt"), "--split", "test", "--out",
               str(out), "--no-images", f"eval.softmax={softmax}", f"data.shards={shards}")
        scores[label] = read_summary(out / "summary.csv")
    t = json.loads(times.read_text())
    return {"name": name, "method": method, "scribble": scribble, "seed": seed,
            "wall_min": (t["end"] - t["start"]) / 60, "scores": scores}


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def table(results: list[dict], scribbles, methods, seeds) -> str:
    lines = ["| scribbles | method | seeds | DSC final (limited) | DSC final (full softmax) | DSC best (limited) "
             "| DSC best (full) | Sen final | Spe final | clDice final | paper DSC |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for scribble in scribbles:
        for method in methods:
            rows = [r for r in results if r["method"] == method and r["scribble"] == scribble]
            if not rows:
                continue
            cells = [mean_std([r["scores"][k]["dsc"] for r in rows]) for k in SCORINGS]
            cells += [mean_std([r["scores"]["final_limited"][m] for r in rows]) for m in ("sen", "spe", "cldice")]
            lines.append(f"| {scribble.upper()} | {method} | {len(rows)} | " + " | ".join(cells)
                         + f" | {PAPER_DSC[scribble][method]:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/dias_drive")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--scribbles", nargs="+", default=["rdfa", "sale"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--experiment", default="dias-drive-weak")
    parser.add_argument("--supervised", default="", help="a supervised run folder at the same budget, for the table")
    parser.add_argument("--out", default="benchmarks/results/drive_weak_cpu")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    shards = prepare(work, args.scribbles)
    load_before = load_average()
    results = []
    # seed by seed, so an interrupted table has whole rows of methods for the seeds done
    for seed in args.seeds:
        for scribble in args.scribbles:
            for method in args.methods:
                results.append(run_one(work, shards, method, scribble, seed, args.steps, args.experiment))
                print(json.dumps(results[-1]), flush=True)
    stats = {s: scribble_stats(work / "weak_data", s) for s in args.scribbles}
    command = "python benchmarks/drive_weak.py " + " ".join(argv or sys.argv[1:])
    head = [f"# Table III on DRIVE ({cpu_model()}, one process, 2 threads, no GPU)", "",
            f"Command: `{command}` (git {git_sha()}); load average before {load_before}, after {load_average()}.", "",
            f"Every method: `configs/weak/<method>.yaml` (UNet width 16; UNet_CCT for DMPLS) with the DRIVE "
            f"supervised recipe, {args.steps} steps, seeds {args.seeds}. Test: 20 DRIVE test images, full "
            "first-observer masks, inside the FOV, mean over images. `final`/`best` = last checkpoint / best "
            "validation DSC (3 held-out training images with full masks); `limited` = the reference's softmax "
            "over channels 0..1, `full` = softmax over all channels (the third channel's share is not "
            "renormalised into the vessel probability).", "",
            "Training scribbles annotate: " + "; ".join(
                f"{s.upper()} {v['vessel_px_annotated']:.3f} of vessel and {v['background_px_annotated']:.3f} of "
                f"background pixels" for s, v in stats.items()) + ".", ""]
    body = table(results, args.scribbles, args.methods, args.seeds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(head) + body + "\n")
    out.with_suffix(".json").write_text(json.dumps({"device": cpu_model(), "git": git_sha(), "command": command,
                                                     "scribble_stats": stats, "runs": results}, indent=1) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
