"""benchmarks/drive_weak.py's table logic: the paper's pairwise orderings tested seed by seed, and
each run's own validation-curve flatness (no training: hand-made results)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _run(method: str, seed: int, dsc: float, gain: float | None = None) -> dict:
    row = {"method": method, "scribble": "rdfa", "seed": seed, "scores": {"final_limited": {"dsc": dsc}}}
    if gain is not None:
        row["val_flat"] = {"gain_last_quarter": gain, "flat": gain < 0.005}
    return row


def test_orderings_pair_by_seed_and_follow_the_paper_direction():
    from drive_weak import orderings  # benchmarks/ is not a package: imported once its folder is on the path

    # paper RDFA: sscr 0.7651 > pce 0.7455 > ivm 0.6606
    results = [_run("sscr", 0, 0.70), _run("sscr", 1, 0.68), _run("pce", 0, 0.69), _run("pce", 1, 0.69),
               _run("ivm", 0, 0.71), _run("ivm", 1, 0.72), _run("ivm", 2, 0.50)]
    _, rows = orderings(results, ["rdfa"], ["pce", "ivm", "sscr"])
    by_pair = {(r["above"], r["below"]): r for r in rows}
    assert set(by_pair) == {("pce", "ivm"), ("sscr", "pce"), ("sscr", "ivm")}
    assert by_pair[("pce", "ivm")]["verdict"] == "reversed"  # below at both shared seeds; seed 2 unpaired
    assert [round(d, 4) for d in by_pair[("pce", "ivm")]["diffs"]] == [-0.02, -0.03]
    assert by_pair[("sscr", "pce")]["verdict"] == "mixed"  # +0.01 at seed 0, -0.01 at seed 1
    assert by_pair[("sscr", "ivm")]["verdict"] == "reversed"
    assert round(by_pair[("sscr", "pce")]["paper_gap"], 4) == 0.0196


def test_orderings_holds_only_when_every_seed_agrees():
    from drive_weak import orderings

    results = [_run("em", s, 0.66 + s / 100) for s in range(3)] + [_run("rloss", s, 0.65 + s / 100) for s in range(3)]
    md, rows = orderings(results, ["rdfa"], ["em", "rloss"])
    assert [r["verdict"] for r in rows] == ["holds"]  # paper: em 0.7458 > rloss 0.7146
    assert "| RDFA | em > rloss (+0.0312) |" in md
    assert md.rstrip().endswith("| holds | no |")  # the same gap at every seed: no spread, no t-test


def test_orderings_state_the_paired_t_test():
    from drive_weak import orderings

    gaps = (0.030, 0.031, 0.029)
    results = [_run("em", s, 0.66 + g) for s, g in enumerate(gaps)] + [_run("rloss", s, 0.66) for s in range(3)]
    md, rows = orderings(results, ["rdfa"], ["em", "rloss"])
    assert rows[0]["significant"] and rows[0]["paired"]["p"] < 0.01
    assert "+0.0300 ± 0.0010, t(2) = 51.96" in md


def test_own_flatness_counts_known_curves_only():
    from drive_weak import own_flatness

    assert own_flatness([_run("pce", 0, 0.7)]) == "-"  # a carried run without its curve
    assert own_flatness([_run("pce", 0, 0.7, 0.001), _run("pce", 1, 0.7, 0.02), _run("pce", 2, 0.7)]) \
        == "1/2 (max +0.0200)"


def test_budget_change_pairs_seeds_across_budgets_and_orders_methods():
    from drive_weak import budget_change

    short = {"runs": [dict(_run("pce", s, 0.68), steps=1000) for s in (0, 1)]
             + [dict(_run("sscr", s, 0.69), steps=1000) for s in (0, 1)]}
    long = [dict(_run("pce", 0, 0.72), steps=3000), dict(_run("sscr", 0, 0.70), steps=3000)]
    md = budget_change(long, short, ["rdfa"], ["pce", "sscr"])
    assert "| DSC at 1000 steps | DSC at 3000 steps |" in md
    assert "| RDFA | pce | [0] | 0.6800 | 0.7200 | +0.0400 | +0.0400 |" in md  # seed 1 ran at 1000 only
    assert "at 1000 steps: sscr > pce; at 3000 steps: pce > sscr." in md
