"""DRIVE supervised reference (issue 24 §2): train, learning curves, test inside the field of view.

    .venv/bin/python benchmarks/drive_supervised.py --drive /data/DRIVE --work /tmp/drive \
        --run unet configs/drive/unet_cpu.yaml --run fr_unet configs/drive/fr_unet_cpu.yaml \
        --out benchmarks/results/drive_supervised_cpu

Steps: ``dias import`` (the data set's own train/test folders, 3 seeded validation images taken from
the training folder; the 20 test images are never used to choose anything) -> ``dias shard`` -> one
``launch/train.py`` run per ``--run LABEL CONFIG [key=value ...]`` (its best-validation checkpoint is
tested on the 20 test images at the end of the run, by the trainer) -> this script reads each run's
``metrics.jsonl`` and test probability maps and writes:

    OUT.md / OUT.json   per run: test metrics inside the FOV, mean over images and pooled over all
                        FOV pixels (the usual DRIVE report), next to the published numbers and the
                        second observer; wall and CPU minutes; where validation flattens; minutes
                        to validation DSC 0.78 / 0.80
    OUT_curves.png      validation DSC and AUC against steps and against wall minutes, every run

and logs ``drive_curves.png`` to each run's MLflow run. Finished runs (``eval/test/summary.csv``
present) are reused, so an interrupted table is completed by running the command again; their CPU
time then comes from the earlier ``OUT.json``.

Flattening (the issue's rule): the best validation DSC gained over the last quarter of the steps,
``max(val over all) - max(val up to 3/4 of the steps)``, is below 0.005.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import cpu_model, git_sha, load_average  # noqa: E402

from dias_dist.data.dias import read_label  # noqa: E402
from dias_dist.metrics import image_metrics  # noqa: E402

FLAT_GAIN = 0.005
TARGETS = (0.78, 0.80)
# Published DRIVE test numbers (first observer, inside the FOV, pooled over the 20 test images).
PUBLISHED = [
    {"method": "2nd human observer (computed from the shipped masks)", "f1": 0.7891, "acc": 0.9473},
    {"method": "U-Net, in published comparison tables", "f1": "0.814-0.817"},
    {"method": "SA-UNet (Guo et al., ICPR 2020)", "f1": 0.826},
    {"method": "FR-UNet (Liu et al., IEEE JBHI 2022; the DIAS authors' model = our fr_unet)",
     "f1": 0.8316, "acc": 0.9705, "auc": 0.9889, "sen": 0.8356, "spe": 0.9837},
]


def sh(*args: str) -> float:
    """Run ``args`` in the repository root; return the CPU seconds its process tree used."""
    print("+", " ".join(args), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, check=True, cwd=ROOT, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def prepare(drive: Path, work: Path, val: int) -> None:
    dias = str(Path(sys.executable).with_name("dias"))
    if not (work / "data" / "import.json").is_file():
        sh(dias, "import", str(drive), str(work / "data"), "--masks", "vessel_masks", "--fov", "fov_masks",
           "--val", str(val))
    if not (work / "shards" / "manifest.json").is_file():
        sh(dias, "shard", str(work / "data"), str(work / "shards"))


def read_records(run: Path) -> tuple[list[dict], list[dict]]:
    """(train records, validation records) of ``run/metrics.jsonl``, in step order."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == "train"], [r for r in rows if r.get("kind") == "val"]


def flattening(val: list[dict], key: str = "val_dsc") -> dict:
    """The issue's rule on the validation curve: best gained over the last quarter of the steps."""
    last = val[-1]["step"]
    early = [r[key] for r in val if r["step"] <= 0.75 * last]
    best_all = max(r[key] for r in val)
    gain = best_all - (max(early) if early else float("nan"))
    return {"best": best_all, "best_by_3_4": max(early) if early else None, "gain_last_quarter": gain,
            "flat": bool(gain < FLAT_GAIN)}


def minutes_to(val: list[dict], start: float, target: float, key: str = "val_dsc") -> float | None:
    """Wall minutes from the launch to the first validation at or above ``target`` (None: never)."""
    for r in val:
        if r[key] >= target:
            return (r["time"] - start) / 60
    return None


def pooled_test(run: Path, data: Path) -> dict:
    """Metrics pooled over every FOV pixel of the test images (AUC, F1, Acc, Sen, Spe) from the
    run's ``eval/test/prob/<key>.npy`` and the imported labels and FOV masks."""
    probs, gts = [], []
    for path in sorted((run / "eval" / "test" / "prob").glob("*.npy")):
        key = path.stem  # s00020
        seq = int(key.lstrip("s"))
        prob = np.load(path)
        gt = read_label(data / "test" / "labels" / f"label_s{seq}.png") > 0
        fov = read_label(data / "test" / "fov" / f"fov_s{seq}.png") > 0
        probs.append(prob[fov])
        gts.append(gt[fov])
    prob, gt = np.concatenate(probs)[None], np.concatenate(gts)[None]
    metrics = image_metrics(prob, gt.astype(np.uint8))
    return {k: metrics[k] for k in ("dsc", "acc", "sen", "spe", "auc")} | {"images": len(probs)}


def mean_test(run: Path) -> dict:
    with open(run / "eval" / "test" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {row["metric"]: float(row["mean"]) for row in rows} | {
        f"{row['metric']}_std": float(row["std"]) for row in rows if "std" in row}


def plot(results: list[dict], out_png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharey="row")
    for res in results:
        steps = [r["step"] for r in res["val"]]
        minutes = [(r["time"] - res["start"]) / 60 for r in res["val"]]
        for row, key in enumerate(("val_dsc", "val_auc")):
            values = [r[key] for r in res["val"]]
            axes[row, 0].plot(steps, values, marker=".", label=res["label"])
            axes[row, 1].plot(minutes, values, marker=".", label=res["label"])
    for col in range(2):
        for target in TARGETS:
            axes[0, col].axhline(target, color="grey", lw=0.6, ls=":")
        axes[0, col].axhline(0.7891, color="k", lw=0.8, ls="--", label="2nd observer (test F1)")
        axes[1, col].set_xlabel("optimizer step" if col == 0 else "wall minutes since launch (2-core CPU)")
    axes[0, 0].set_ylabel("validation DSC (inside FOV)")
    axes[1, 0].set_ylabel("validation AUC (inside FOV)")
    axes[0, 0].set_ylim(0.6, 0.86)
    axes[1, 0].set_ylim(0.93, 0.99)
    axes[0, 1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"DRIVE learning curves, 3 held-out training images ({cpu_model()})")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def log_to_mlflow(run: Path, png: Path) -> None:
    start = json.loads((run / "start.json").read_text())
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=start["tracking_uri"])
    client.log_artifact(start["mlflow_run_id"], str(png), artifact_path="drive")


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "never"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: list[dict], command: str) -> str:
    flat = [res["flat"]["flat"] for res in results]
    budget = (f"**{'At a flattened budget' if all(flat) else 'Not every run at a flattened budget'}**: "
              f"{sum(flat)} of {len(flat)} validation curves flat by the issue-24 rule (best validation DSC "
              f"gained over the last quarter of the steps < {FLAT_GAIN}); see the table's last columns.")
    lines = [budget, "", f"# DRIVE supervised reference ({cpu_model()}, 2 threads, one process, no GPU)", "",
             f"Command: `{command}` (git {git_sha()}).", "",
             "Test: the 20 DRIVE test images against the first observer, inside the field of view, "
             "best-validation checkpoint (3 held-out training images; the test images chose nothing). "
             "Pooled = every FOV pixel of the 20 images counted together (the usual DRIVE report); "
             "mean = mean over images.", "",
             "| run | steps | wall min | CPU min | test F1 pooled | F1 mean ± std | AUC pooled | Acc | Sen | Spe "
             "| clDice mean | val flat? (gain last ¼) | min to val 0.78 / 0.80 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        p, m, f = res["pooled"], res["mean"], res["flat"]
        lines.append(
            f"| {res['label']} | {res['steps']} | {res['wall_min']:.1f} | "
            f"{'n/a' if res.get('cpu_min') is None else format(res['cpu_min'], '.1f')} | "
            f"**{p['dsc']:.4f}** | {m['dsc']:.4f} ± {m.get('dsc_std', 0):.4f} | {p['auc']:.4f} | {p['acc']:.4f} | "
            f"{p['sen']:.4f} | {p['spe']:.4f} | {m['cldice']:.4f} | {'yes' if f['flat'] else 'no'} "
            f"({f['gain_last_quarter']:+.4f}) | {fmt(res['to'][0.78], 1)} / {fmt(res['to'][0.80], 1)} |")
    lines += ["", "Published (DRIVE test, first observer, inside the FOV):", "",
              "| method | F1 | Acc | AUC | Sen | Spe |", "|---|---|---|---|---|---|"]
    for pub in PUBLISHED:
        lines.append(f"| {pub['method']} | " + " | ".join(fmt(pub.get(k)) if k in pub else "-"
                                                        for k in ("f1", "acc", "auc", "sen", "spe")) + " |")
    lines += ["", "Runs (config and overrides):", ""]
    lines += [f"- `{res['label']}`: `{' '.join(res['argv'])}`" for res in results]
    lines += ["", "Learning curves: `drive_supervised_cpu_curves.png` (also `drive/drive_curves.png` in each "
              "run's MLflow artifacts)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", default=os.environ.get("DIAS_DRIVE_DIR", ""),
                        help="DRIVE folder (training/ and test/, docs/TESTING.md 'DRIVE'); default $DIAS_DRIVE_DIR")
    parser.add_argument("--work", default="/tmp/dias_drive")
    parser.add_argument("--val", type=int, default=3)
    parser.add_argument("--run", nargs="+", action="append", required=True, metavar="LABEL CONFIG [K=V ...]")
    parser.add_argument("--out", default="benchmarks/results/drive_supervised_cpu")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    if not args.drive:
        parser.error("--drive: give the DRIVE folder or set DIAS_DRIVE_DIR (docs/TESTING.md, 'DRIVE')")
    work = Path(args.work).resolve()
    out = Path(args.out)
    previous = {}
    if out.with_suffix(".json").is_file():
        previous = {r["label"]: r for r in json.loads(out.with_suffix(".json").read_text())["runs"]}
    prepare(Path(args.drive), work, args.val)
    results = []
    for spec in args.run:
        label, config, *overrides = spec
        run = work / "runs" / label
        run_argv = [config, f"data.shards={work / 'shards'}", f"train.run_dir={work / 'runs'}",
                f"train.run_name={label}", *overrides]
        load_before = load_average()
        if (run / "eval" / "test" / "summary.csv").is_file():
            cpu_s = previous.get(label, {}).get("cpu_min")
            cpu_s = None if cpu_s is None else cpu_s * 60
        else:
            start = time.time()
            cpu_s = sh(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                       "launch/train.py", *run_argv)
            (run / "launch_time.json").write_text(json.dumps({"start": start, "end": time.time()}))
        times = json.loads((run / "launch_time.json").read_text())
        train, val = read_records(run)
        res = {"label": label, "argv": run_argv, "start": times["start"], "val": val,
               "steps": train[-1]["step"] if train else 0, "wall_min": (times["end"] - times["start"]) / 60,
               "cpu_min": None if cpu_s is None else cpu_s / 60, "load_before": load_before,
               "load_after": load_average(), "flat": flattening(val),
               "to": {t: minutes_to(val, times["start"], t) for t in TARGETS},
               "pooled": pooled_test(run, work / "data"), "mean": mean_test(run)}
        results.append(res)
        print(json.dumps({k: res[k] for k in ("label", "steps", "wall_min", "cpu_min", "flat", "to", "pooled")}),
              flush=True)
    png = out.with_name(out.name + "_curves.png")
    plot(results, png)
    if not args.no_mlflow:
        for res in results:
            log_to_mlflow(work / "runs" / res["label"], png)
    command = "python benchmarks/drive_supervised.py " + " ".join(
        a if " " not in a else repr(a) for a in (argv or sys.argv[1:]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown(results, command))
    summary = {"device": cpu_model(), "git": git_sha(), "command": command, "published": PUBLISHED,
               "runs": [{k: v for k, v in r.items() if k not in ("val",)}
                        | {"val_curve": [{k: r2[k] for k in ("step", "time", "val_dsc", "val_auc")}
                                         for r2 in r["val"]]} for r in results]}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
