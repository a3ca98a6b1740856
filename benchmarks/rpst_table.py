"""Table V on synthetic data: RPST teacher vs student (and student without strong augmentation) for several N.

    .venv/bin/python benchmarks/rpst_table.py --out runs/rpst_table --labeled 1 3 10 --ablate-sda --control

Steps: ``dias phantom`` (labelled, validation, test and unlabelled sequences) -> ``dias shard`` -> for each
N one RPST job (``dias_dist.semi.rpst.run_rpst``: teacher on the first N labelled sequences, pseudo labels
on all unlabelled ones, one student round) with ``configs/semi/rpst_cpu.yaml`` and the budget overrides
below; with ``--ablate-sda`` a second student per N trains on the same teacher's pseudo labels with
``rpst.strong_augment=false`` ("S w/o SDA"); with ``--control`` the teacher is also trained on for the
student's budget on labelled patches only ("T + steps", an equal-budget control: a student starts from
the teacher and trains as many steps again, so part of its gain may be the extra steps alone; the control
is nested under the job's parent with tag ``rpst.control=labelled_only``, no ``rpst.stage``). Every stage is an MLflow run (store ``OUT/mlflow.db``,
experiment ``--experiment``) nested under its job's parent run; the table (test metrics, mean over the test
images) goes to ``OUT/rpst_table.md`` / ``.csv``. Finished stages are reused, so an interrupted table is
completed by running the same command again.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_data(out: Path, args) -> Path:
    from dias_dist.data.phantom_cli import write_phantom_dataset
    from dias_dist.data.shards import write_shards

    src, shards = out / "src", out / "shards"
    if not (shards / "manifest.json").is_file():
        write_phantom_dataset(src, size=args.size, train=max(args.labeled), val=args.val, test=args.test,
                              unlabeled=args.unlabeled, seed=args.seed, preview=False)
        write_shards(src, shards)
    return shards


def ablation_job(cfg, base_job: str, job: str) -> None:
    """Start job ``job`` from ``base_job``'s teacher and pseudo labels (a new parent run, no student yet)."""
    from dias_dist.semi.rpst import STATE_FILE, job_dir, save_state

    if (job_dir(cfg, job) / STATE_FILE).is_file():
        return
    state = json.loads((job_dir(cfg, base_job) / STATE_FILE).read_text())
    save_state(cfg, {"job": job, "parent_run_id": "", "num_labeled": state["num_labeled"],
                     "stages": {k: v for k, v in state["stages"].items() if k in ("teacher", "pseudo1")}})


def control_run(cfg, job: str) -> None:
    """The teacher trained on (init from its final checkpoint) with the student's budget, labelled patches only."""
    from dias_dist.config import derive
    from dias_dist.semi.rpst import STATE_FILE, job_dir, labelled_source, save_state
    from dias_dist.trainer import run

    state = json.loads((job_dir(cfg, job) / STATE_FILE).read_text())
    if "control" in state["stages"]:
        return
    tags = {**cfg.track.tags, "rpst.control": "labelled_only", "rpst.num_labeled": str(cfg.data.num_labeled)}
    control_cfg = derive(cfg, {"train.run_name": f"{job}-control", "track.parent_run_id": state["parent_run_id"],
                               "track.tags": tags, "train.epochs": cfg.rpst.student_epochs or cfg.train.epochs})
    result = run(control_cfg, sources=[labelled_source(cfg)], init_from=state["stages"]["teacher"]["checkpoint"])
    state["stages"]["control"] = {"run_id": result.get("run_id", ""), "run_dir": result["run_dir"],
                                  "metrics": {k: v for k, v in result.items() if isinstance(v, (int, float))}}
    save_state(cfg, state)


def table_rows(cfg, jobs: list[tuple[str, str, int, int]]) -> list[dict]:
    """One row per (label, job, stage): Teacher (U = 0) and students (U = unlabelled sequences)."""
    from dias_dist.metrics import METRIC_NAMES
    from dias_dist.semi.rpst import STATE_FILE, job_dir

    rows = []
    for label, job, num_labeled, num_unlabeled in jobs:
        state = json.loads((job_dir(cfg, job) / STATE_FILE).read_text())
        stage = {"Teacher": "teacher", "T + steps": "control"}.get(label, "round1")
        metrics = state["stages"][stage]["metrics"]
        row = {"method": label, "L": num_labeled, "U": num_unlabeled if stage == "round1" else 0,
               "run_id": state["stages"][stage]["run_id"], "parent_run_id": state["parent_run_id"]}
        row.update({m: metrics[f"test_{m}"] for m in METRIC_NAMES})
        rows.append(row)
    return rows


def markdown(rows: list[dict], header_note: str) -> str:
    from dias_dist.evaluation.tables import format_mean_std, markdown_table
    from dias_dist.metrics import METRIC_NAMES, METRIC_TITLES
    from dias_dist.report import LOWER_IS_BETTER

    titles = ["Methods", "L", "U"] + [METRIC_TITLES[m] + ("↓" if m in LOWER_IS_BETTER else "↑") for m in METRIC_NAMES]
    body = [[row["method"], str(row["L"]), str(row["U"])]
            + [format_mean_std(row[m], None, 2 if m == "vc" else 4) for m in METRIC_NAMES] for row in rows]
    return header_note + "\n\n" + markdown_table(titles, body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/rpst_table", help="folder for data, shards, runs, MLflow store, table")
    parser.add_argument("--experiment", default="dias-rpst-table")
    parser.add_argument("--labeled", type=int, nargs="+", default=[1, 3, 10], help="N labelled sequences per job")
    parser.add_argument("--unlabeled", type=int, default=10, help="unlabelled sequences (all pseudo-labelled)")
    parser.add_argument("--val", type=int, default=2)
    parser.add_argument("--test", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="phantom frame side (px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablate-sda", action="store_true", help="also a student without strong augmentation")
    parser.add_argument("--control", action="store_true", help="also the teacher trained on for the student's budget")
    parser.add_argument("--results", default="benchmarks/results/rpst_table_cpu.md", help="copy of the table")
    parser.add_argument("overrides", nargs="*", help="config overrides for every stage (train.epochs=4 ...)")
    args = parser.parse_args()

    from dias_dist import dist
    from dias_dist.config import load_config
    from dias_dist.evaluation.tables import write_csv
    from dias_dist.semi.rpst import run_rpst, run_stage, load_state

    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shards = make_data(out, args)
    base = [f"data.shards={shards}", f"train.run_dir={out / 'runs'}", f"track.tracking_uri=sqlite:///{out / 'mlflow.db'}",
            f"track.experiment={args.experiment}", "rpst.rounds=1", f"rpst.num_unlabeled={args.unlabeled}",
            "train.epochs=3", "train.steps_per_epoch=20", "train.batch_size=16", "data.patches_per_sequence=16",
            "data.shuffle_buffer=64", "eval.patch_size_px=32", "eval.stride_px=16"]
    jobs, seconds = [], {}
    for num_labeled in args.labeled:
        overrides = base + [f"data.num_labeled={num_labeled}", f"train.run_name=rpst-L{num_labeled}"] + args.overrides
        cfg = load_config(ROOT / "configs" / "semi" / "rpst_cpu.yaml", overrides)
        start = time.perf_counter()
        run_rpst(cfg)
        seconds[f"L{num_labeled}"] = round(time.perf_counter() - start, 1)
        jobs += [("Teacher", f"rpst-L{num_labeled}", num_labeled, args.unlabeled),
                 ("Student", f"rpst-L{num_labeled}", num_labeled, args.unlabeled)]
        if args.control:
            start = time.perf_counter()
            control_run(cfg, f"rpst-L{num_labeled}")
            seconds[f"L{num_labeled}-control"] = round(time.perf_counter() - start, 1)
            jobs.append(("T + steps", f"rpst-L{num_labeled}", num_labeled, args.unlabeled))
        if args.ablate_sda:
            job = f"rpst-L{num_labeled}-nosda"
            cfg = load_config(ROOT / "configs" / "semi" / "rpst_cpu.yaml",
                              overrides + [f"train.run_name={job}", "rpst.strong_augment=false"])
            ablation_job(cfg, f"rpst-L{num_labeled}", job)
            state = load_state(cfg, job)
            if "round1" not in state["stages"]:
                start = time.perf_counter()
                run_stage(cfg, "round1", state=state)
                seconds[f"L{num_labeled}-nosda"] = round(time.perf_counter() - start, 1)
            jobs.append(("S w/o SDA", job, num_labeled, args.unlabeled))
    dist.teardown()

    rows = table_rows(cfg, jobs)
    load = os.getloadavg()
    note = (f"RPST on synthetic phantoms ({args.size} px; {args.test} test sequences; U = {args.unlabeled} unlabelled), "
            f"test metrics (mean over images); config configs/semi/rpst_cpu.yaml + {' '.join(base[4:] + args.overrides)}; "
            f"MLflow {out / 'mlflow.db'} experiment {args.experiment}; wall seconds per job {seconds}; "
            f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    text = markdown(rows, note)
    (out / "rpst_table.md").write_text(text)
    write_csv(rows, out / "rpst_table.csv")
    print(text)
    shutil.copy(out / "rpst_table.md", ROOT / args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
