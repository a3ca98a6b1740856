"""Table V over several training seeds: mean ± std of ``rpst_table.py`` runs, next to the paper's DSC.

    for s in 0 1 2; do OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rpst_table.py --out runs/rpst_table_s$s \\
        --labeled 1 3 10 --control --results runs/rpst_table_seed$s.md train.seed=$s; done
    .venv/bin/python benchmarks/rpst_seeds.py runs/rpst_table_s0 runs/rpst_table_s1 runs/rpst_table_s2 \\
        --out benchmarks/results/rpst_table_cpu.md

The longer budget of ``rpst_table_long_cpu.md`` adds ``train.epochs=10`` (200 steps per stage instead of
60) to every ``rpst_table.py`` call, with ``--out runs/rpst_long_s$s``.

Each folder holds one ``rpst_table.csv`` (rows: Teacher, Student, T + steps per N). The verdict line per
N says whether the student (teacher + pseudo-labelled steps) beats the equal-steps control (teacher +
the same number of labelled-only steps) by more than the spread over seeds.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
from pathlib import Path

METRICS = ("dsc", "sen", "spe", "auc", "cldice", "vc")
PAPER_DSC = {("Teacher", 1): 0.6266, ("Student", 1): 0.6502, ("Teacher", 3): 0.6919, ("Student", 3): 0.7275,
             ("Teacher", 10): 0.7402, ("Student", 10): 0.7579}  # Table V, students with U = 60


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="rpst_table.py --out folders, one per seed")
    parser.add_argument("--out", default="", help="markdown result")
    args = parser.parse_args()
    groups: dict[tuple[str, int], list[dict]] = {}
    notes = []
    for folder in args.folders:
        path = Path(folder) / "rpst_table.csv"
        if not path.is_file():
            notes.append(f"{folder}: no rpst_table.csv (not finished)")
            continue
        with open(path) as handle:
            for row in csv.DictReader(handle):
                groups.setdefault((row["method"], int(row["L"])), []).append(row)
    order = {"Teacher": 0, "Student": 1, "T + steps": 2, "S w/o SDA": 3}
    lines = ["| method | L | seeds | " + " | ".join(m.upper() if m != "cldice" else "clDice" for m in METRICS)
             + " | paper DSC |", "|---|---|---|" + "---|" * (len(METRICS) + 1)]
    for (method, labeled), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 9))):
        cells = ["{:.4f} ± {:.4f}".format(*mean_std([float(r[m]) for r in rows])) for m in METRICS]
        paper = PAPER_DSC.get((method, labeled))
        paper_cell = f"{paper:.4f}" if paper else "-"
        lines.append(f"| {method} | {labeled} | {len(rows)} | " + " | ".join(cells) + f" | {paper_cell} |")
    verdicts = []
    for labeled in sorted({key[1] for key in groups}):
        student, control = groups.get(("Student", labeled)), groups.get(("T + steps", labeled))
        teacher = groups.get(("Teacher", labeled))
        if not (student and control and teacher):
            continue
        s, s_std = mean_std([float(r["dsc"]) for r in student])
        c, c_std = mean_std([float(r["dsc"]) for r in control])
        t, _ = mean_std([float(r["dsc"]) for r in teacher])
        margin = max(s_std, c_std)
        word = ("pseudo labels beat the extra steps" if s - c > margin else
                "the extra labelled steps beat pseudo labels" if c - s > margin else "no difference beyond the spread")
        verdicts.append(f"- N = {labeled}: teacher {t:.4f}, student {s:.4f}, equal-steps control {c:.4f} "
                        f"(student − control {s - c:+.4f}, spread {margin:.4f}): {word}.")
    load = os.getloadavg()
    budget = []  # the first seed's own header names the data, the config and the budget of every stage
    first_table = Path(args.folders[0]) / "rpst_table.md"
    if first_table.is_file():
        budget = ["", f"Budget and data (first line of {first_table}): " + first_table.read_text().splitlines()[0]]
    text = "\n".join([f"Table V on phantom v2, mean ± std over {len(args.folders)} training seeds "
                      f"({', '.join(args.folders)}); load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
                      "(2-core VM, shared).", *budget, "", *lines, "", *verdicts, *notes]) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
