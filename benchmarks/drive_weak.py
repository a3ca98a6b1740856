"""Table III on real vessels (issue 24 §3): the six scribble methods trained on DRIVE scribbles.

    .venv/bin/python benchmarks/drive_weak.py --drive "$DIAS_DRIVE_DIR" --work /tmp/dias_drive \
        --steps 1000 --seeds 0 1 2 --scribbles rdfa --out benchmarks/results/drive_weak_cpu

Needs the imported DRIVE folder ``WORK/data``: made here from ``--drive`` (or ``$DIAS_DRIVE_DIR``; where
DRIVE comes from and its layout: docs/TESTING.md, "DRIVE") as
``benchmarks/drive_supervised.py`` makes it (``dias import --val 3``) when it is missing. Steps:
copy it to ``WORK/weak_data``, write RDFA scribbles with ``dias scribbles`` (thresholds scaled to the
565x584 images, docs/DECISIONS.md) and SALE-like scribbles with ``data.scribbles.sale_scribble``
(seeded per image) for the training images, shard, then one ``launch/train.py`` run per (method,
scribble, seed) with ``configs/weak/<method>.yaml`` and the DRIVE supervised recipe
(``configs/drive/unet_cpu.yaml``: 48 px patches, batch 32, lr 3e-3, width 16) at ``--steps``.

Every run is scored on the 20 test images against the full first-observer masks, inside the FOV, four
ways: its final and its best-validation checkpoint (validation = 3 held-out training images with full
masks), each with the reference's limited softmax (channels 0..1 renormalised) and with the full softmax
over all channels (``eval.softmax=full``): the difference is the threshold-calibration effect of the
third, unannotated channel (zero for DMPLS's two-channel head). Finished runs are reused; ``--previous
FILE.json`` carries the scores of runs made by an earlier invocation whose folders are gone (the table
says which). Each run's own validation curve is checked with the issue's flatness rule (best validation
DSC gained over the last quarter of the steps < 0.005), and the paper's pairwise orderings of Table III
are tested seed by seed (paired: same seed, same scribbles).

Several invocations may run side by side on the same ``--work`` (e.g. one per seed with
``OMP_NUM_THREADS=1``) once the data is prepared; a last one with every seed and no training left
writes the combined table.
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

from drive_supervised import FLAT_GAIN, flattening, read_records  # noqa: E402
from machine import cpu_model, git_sha, load_average  # noqa: E402
from paired import describe, paired, significant  # noqa: E402
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


def prepare(work: Path, scribbles: list[str], seed: int = 2022, drive: str = "") -> Path:
    """``WORK/weak_data`` with scribbles, sharded into ``WORK/weak_shards``; returns the shard folder."""
    data, shards = work / "weak_data", work / "weak_shards"
    dias_cli = str(Path(sys.executable).with_name("dias"))
    if not (work / "data" / "import.json").is_file():
        if not drive:
            raise SystemExit(f"{work / 'data'} is not an imported DRIVE folder: pass --drive DRIVE_DIR "
                             "(or set DIAS_DRIVE_DIR)")
        sh(dias_cli, "import", drive, str(work / "data"), "--masks", "vessel_masks", "--fov", "fov_masks",
           "--val", "3")
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


def run_one(work: Path, shards: Path, method: str, scribble: str, seed: int, steps: int, experiment: str,
            runs_dir: str = "weak_runs") -> dict:
    name = f"{method}-{scribble}-seed{seed}"
    run = work / runs_dir / name
    times = run / "launch_time.json"
    if not times.is_file():
        # An invocation stopped mid-run (a killed job, a machine going away) left last.pt behind: the next
        # one resumes from it (train.resume=auto), and its wall time then counts the resumed part only.
        resumed = (run / "checkpoints" / "last.pt").is_file()
        start = time.time()
        sh(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "launch/train.py",
           f"configs/weak/{method}.yaml", f"data.shards={shards}", f"data.target=scribble_{scribble}", *RECIPE,
           f"train.epochs={max(1, steps // 100)}", "train.steps_per_epoch=100", f"train.seed={seed}",
           f"train.run_dir={work / runs_dir}", f"train.run_name={name}", f"track.experiment={experiment}",
           f"track.tags={{scribble: {scribble}, data: drive}}", "train.resume=auto")
        times.write_text(json.dumps({"start": start, "end": time.time(), "resumed": resumed}))
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
    _, val = read_records(run)
    return {"name": name, "method": method, "scribble": scribble, "seed": seed, "steps": steps,
            "wall_min": (t["end"] - t["start"]) / 60, "resumed": t.get("resumed", False), "scores": scores,
            "val_flat": flattening(val), "git": git_sha()}


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def own_flatness(rows: list[dict]) -> str:
    """How many of the rows' own validation curves are flat, with their largest last-quarter gain."""
    known = [r["val_flat"] for r in rows if r.get("val_flat")]
    if not known:
        return "-"
    return f"{sum(f['flat'] for f in known)}/{len(known)} (max +{max(f['gain_last_quarter'] for f in known):.4f})"


def table(results: list[dict], scribbles, methods, seeds) -> str:
    lines = ["| scribbles | method | seeds | DSC final (limited) | DSC final (full softmax) | DSC best (limited) "
             "| DSC best (full) | Sen final | Spe final | clDice final | val curve flat | paper DSC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for scribble in scribbles:
        for method in methods:
            rows = [r for r in results if r["method"] == method and r["scribble"] == scribble]
            if not rows:
                continue
            cells = [mean_std([r["scores"][k]["dsc"] for r in rows]) for k in SCORINGS]
            cells += [mean_std([r["scores"]["final_limited"][m] for r in rows]) for m in ("sen", "spe", "cldice")]
            cells.append(own_flatness(rows))
            lines.append(f"| {scribble.upper()} | {method} | {len(rows)} | " + " | ".join(cells)
                         + f" | {PAPER_DSC[scribble][method]:.4f} |")
    return "\n".join(lines)


def orderings(results: list[dict], scribbles, methods, key: str = "final_limited") -> tuple[str, list[dict]]:
    """Every pair the paper's Table III orders (A above B), tested on DRIVE seed by seed.

    Per pair: the paired differences A - B over the seeds both have (same seed, same scribbles) and a
    verdict: ``holds`` (A above B at every seed), ``reversed`` (below at every seed) or ``mixed``.
    Returns (markdown table, rows).
    """
    rows = []
    for scribble in scribbles:
        by = {(r["method"], r["seed"]): r["scores"][key]["dsc"] for r in results if r["scribble"] == scribble}
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                hi, lo = (a, b) if PAPER_DSC[scribble][a] > PAPER_DSC[scribble][b] else (b, a)
                seeds = sorted({s for (m, s) in by if m == hi} & {s for (m, s) in by if m == lo})
                if not seeds:
                    continue
                diffs = [by[(hi, s)] - by[(lo, s)] for s in seeds]
                verdict = "holds" if all(d > 0 for d in diffs) else "reversed" if all(d < 0 for d in diffs) \
                    else "mixed"
                test = paired(diffs)
                rows.append({"scribble": scribble, "above": hi, "below": lo,
                             "paper_gap": PAPER_DSC[scribble][hi] - PAPER_DSC[scribble][lo],
                             "diffs": diffs, "paired": test, "significant": significant(test), "verdict": verdict})
    lines = ["| scribbles | paper: above > below (gap) | DRIVE difference per seed | mean ± std, paired t | verdict "
             "| p < 0.05 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scribble'].upper()} | {r['above']} > {r['below']} ({r['paper_gap']:+.4f}) | "
                     + ", ".join(f"{d:+.4f}" for d in r["diffs"]) + f" | {describe(r['paired'])} | "
                     f"{r['verdict']} | {'yes' if r['significant'] else 'no'} |")
    return "\n".join(lines), rows


def budget_change(results: list[dict], other: dict, scribbles, methods, key: str = "final_limited") -> str:
    """How each method moved between another invocation's budget (``other``: its results JSON) and this
    one's, on the seeds both ran (paired by seed), and the methods' order at each budget.

    Returns markdown: one row per (scribbles, method) with both means, the per-seed change and its mean.
    """
    other_steps = {r.get("steps") for r in other["runs"]} - {None}
    steps = {r.get("steps") for r in results} - {None}
    label = lambda values: "/".join(str(v) for v in sorted(values)) or "?"  # noqa: E731
    lines = [f"| scribbles | method | seeds | DSC at {label(other_steps)} steps | DSC at {label(steps)} steps "
             "| change per seed | mean change |", "|---|---|---|---|---|---|---|"]
    orders = []
    for scribble in scribbles:
        then = {(r["method"], r["seed"]): r["scores"][key]["dsc"] for r in other["runs"] if r["scribble"] == scribble}
        now = {(r["method"], r["seed"]): r["scores"][key]["dsc"] for r in results if r["scribble"] == scribble}
        means_then, means_now = {}, {}
        for method in methods:
            seeds = sorted(s for (m, s) in now if m == method and (m, s) in then)
            if not seeds:
                continue
            a = [then[(method, s)] for s in seeds]
            b = [now[(method, s)] for s in seeds]
            means_then[method], means_now[method] = statistics.mean(a), statistics.mean(b)
            change = [y - x for x, y in zip(a, b)]
            lines.append(f"| {scribble.upper()} | {method} | {seeds} | {means_then[method]:.4f} | "
                         f"{means_now[method]:.4f} | " + ", ".join(f"{d:+.4f}" for d in change)
                         + f" | {statistics.mean(change):+.4f} |")
        if means_now:
            orders.append(f"- {scribble.upper()} at {label(other_steps)} steps: "
                          + " > ".join(sorted(means_then, key=means_then.get, reverse=True))
                          + f"; at {label(steps)} steps: "
                          + " > ".join(sorted(means_now, key=means_now.get, reverse=True)) + ".")
    return "\n".join(lines + [""] + orders)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", default=os.environ.get("DIAS_DRIVE_DIR", ""),
                        help="the DRIVE folder, imported into WORK/data when that is missing")
    parser.add_argument("--work", default="/tmp/dias_drive")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--scribbles", nargs="+", default=["rdfa", "sale"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--experiment", default="dias-drive-weak")
    parser.add_argument("--supervised", default="", help="a supervised run folder at the same budget, for the table")
    parser.add_argument("--out", default="benchmarks/results/drive_weak_cpu")
    parser.add_argument("--runs-dir", default="weak_runs", help="run folders go to WORK/RUNS_DIR (one per budget)")
    parser.add_argument("--previous", nargs="*", default=[], metavar="JSON",
                        help="results files of earlier invocations: their runs are used where the run folder is gone")
    parser.add_argument("--compare", default="", metavar="JSON",
                        help="results file of another budget: a table of each method's change on the shared seeds")
    parser.add_argument("--flat-steps", type=int, default=3000,
                        help="the budget at which the supervised DRIVE curve flattened (drive_supervised_cpu.md)")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    shards = prepare(work, args.scribbles, drive=args.drive)
    carried = {}
    for path in args.previous:
        previous = json.loads(Path(path).read_text())
        for r in previous["runs"]:
            carried[(r["method"], r["scribble"], r["seed"])] = r | {"carried_from": path,
                                                                    "git": r.get("git", previous["git"])}
    load_before = load_average()
    results = []
    # seed by seed, so an interrupted table has whole rows of methods for the seeds done
    for seed in args.seeds:
        for scribble in args.scribbles:
            for method in args.methods:
                old = carried.get((method, scribble, seed))
                if old is not None and not (work / args.runs_dir / old["name"] / "launch_time.json").is_file():
                    results.append(old)
                    continue
                results.append(run_one(work, shards, method, scribble, seed, args.steps, args.experiment,
                                       args.runs_dir))
                print(json.dumps(results[-1]), flush=True)
    stats = {s: scribble_stats(work / "weak_data", s) for s in args.scribbles}
    threads = os.environ.get("OMP_NUM_THREADS", "torch's default")
    command = f"OMP_NUM_THREADS={threads} python benchmarks/drive_weak.py " + " ".join(argv or sys.argv[1:])
    flat_runs = [r["val_flat"]["flat"] for r in results if r.get("val_flat")]
    budget = (f"**At the flattened budget**: {args.steps} steps per run, the budget at which the supervised DRIVE "
              f"UNet's validation curve flattened (`drive_supervised_cpu.md`)" if args.steps >= args.flat_steps else
              f"**Not at a flattened budget**: {args.steps} steps per run, below the {args.flat_steps} steps at which "
              f"the supervised DRIVE UNet's validation curve flattened (`drive_supervised_cpu.md`)")
    budget += (f"; {sum(flat_runs)} of {len(flat_runs)} runs whose curve is on disk are flat by their own validation "
               f"curve (gain < {FLAT_GAIN} over the last quarter)" if flat_runs else "")
    budget += f"; seeds {args.seeds} of the issue's 3; scribbles {', '.join(s.upper() for s in args.scribbles)}."
    n_carried = sum("carried_from" in r for r in results)
    order_md, order_rows = orderings(results, args.scribbles, args.methods)
    order_best_md, order_best_rows = orderings(results, args.scribbles, args.methods, key="best_limited")
    head = [budget, "", f"# Table III on DRIVE ({cpu_model()}, one process per run, {threads} thread(s), no GPU)", "",
            f"Command: `{command}` (git {git_sha()}); load average before {load_before}, after {load_average()}."
            + (f" {n_carried} runs carried from an earlier invocation (`--previous`; their git in the JSON)."
               if n_carried else ""), "",
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
    body += ("\n\n## The paper's pairwise orderings on DRIVE (final checkpoint, limited softmax, paired by seed)\n\n"
             + order_md + "\n\n## The same with every method's best-validation checkpoint\n\n" + order_best_md)
    if args.compare:
        body += (f"\n\n## Against another budget (`{args.compare}`; final checkpoint, limited softmax, paired by seed)"
                 "\n\n" + budget_change(results, json.loads(Path(args.compare).read_text()), args.scribbles,
                                         args.methods))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(head) + "\n" + body + "\n")
    out.with_suffix(".json").write_text(json.dumps({"device": cpu_model(), "git": git_sha(), "command": command,
                                                     "scribble_stats": stats, "orderings": order_rows,
                                                     "orderings_best": order_best_rows,
                                                     "runs": results}, indent=1) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
