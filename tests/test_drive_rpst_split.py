"""benchmarks/drive_rpst.py: the labelled / unlabelled split of an imported 2D data set (the first N
training IDs keep their masks, the rest become the unlabelled pool without them, and shard as such),
and the paired student-versus-control verdicts of its table."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dias_dist.data import dias
from dias_dist.data.import_2d import import_dataset
from dias_dist.data.shards import write_shards

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _source(folder: Path, rng) -> Path:
    for split, stems in (("training", ("21", "22", "23", "24", "25")), ("test", ("01",))):
        for stem in stems:
            for sub in ("images", "masks"):
                (folder / split / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (24, 28), dtype=np.uint8)).save(folder / split / "images" / f"{stem}.png")
            mask = np.zeros((24, 28), np.uint8)
            mask[10:14] = 255
            Image.fromarray(mask).save(folder / split / "masks" / f"{stem}.png")
    return folder


def test_split_pool_keeps_the_first_n_labelled_and_pools_the_rest_without_masks(tmp_path):
    from drive_rpst import split_pool  # benchmarks/ is not a package: imported once its folder is on the path

    import_dataset(_source(tmp_path / "src", np.random.default_rng(0)), tmp_path / "data", val=1, seed=0)
    training = [f.seq_id for f in dias.list_sequences(tmp_path / "data", "training")]
    split_pool(tmp_path / "data", tmp_path / "L1", 1)
    assert [f.seq_id for f in dias.list_sequences(tmp_path / "L1", "training")] == training[:1]
    pool = dias.list_sequences(tmp_path / "L1", "unlabeled")
    assert [f.seq_id for f in pool] == training[1:] and all(f.label is None for f in pool)
    assert not any((tmp_path / "L1" / "training" / "labels" / f"label_s{i}.png").exists() for i in training[1:])
    record = json.loads((tmp_path / "L1" / "import.json").read_text())
    assert [record["ids"][str(i)]["split"] for i in training] == ["training"] + ["unlabeled"] * (len(training) - 1)
    # the source is untouched, and the copy shards with an unlabeled split
    assert [f.seq_id for f in dias.list_sequences(tmp_path / "data", "training")] == training
    write_shards(tmp_path / "L1", tmp_path / "shards")
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert "unlabeled" in json.dumps(manifest)
    split_pool(tmp_path / "data", tmp_path / "L1", 1)  # done already: nothing changes
    assert len(dias.list_sequences(tmp_path / "L1", "unlabeled")) == len(training) - 1


def _row(method, labeled, seed, dsc):
    return {"method": method, "L": labeled, "seed": seed, "dsc": dsc, "sen": 0.8, "spe": 0.9, "auc": 0.95,
            "cldice": 0.8, "val_flat": {"flat": True, "gain_last_quarter": 0.001}, "wall_min": 2.0}


def test_verdict_pairs_student_and_control_by_seed():
    from drive_rpst import tables

    rows = [_row("Teacher", 1, s, 0.60) for s in (0, 1)] + [_row("Student", 1, 0, 0.66), _row("Student", 1, 1, 0.62)]
    rows += [_row("T + steps", 1, 0, 0.64), _row("T + steps", 1, 1, 0.63)]
    rows += [_row("Teacher", 3, 0, 0.70), _row("Student", 3, 0, 0.69), _row("T + steps", 3, 0, 0.71)]
    md, verdicts = tables(rows)
    assert [v["verdict"] for v in verdicts] == [
        "mixed over seeds", "the extra ground-truth steps beat pseudo labels at the one seed run (no spread measured)"]
    assert [round(d, 4) for d in verdicts[0]["student_minus_control"]] == [0.02, -0.01]
    assert [round(d, 4) for d in verdicts[1]["student_minus_teacher"]] == [-0.01]
    assert "| Student | 1 | 2 | 0.6400 ± 0.0283 |" in md


def test_verdict_states_whether_a_consistent_gap_is_significant():
    from drive_rpst import tables

    rows = []
    for seed, (student, control) in enumerate([(0.810, 0.800), (0.812, 0.801), (0.808, 0.799)]):
        rows += [_row("Teacher", 1, seed, 0.79), _row("Student", 1, seed, student), _row("T + steps", 1, seed, control)]
    for seed, (student, control) in enumerate([(0.801, 0.800), (0.812, 0.801), (0.800, 0.799)]):
        rows += [_row("Teacher", 3, seed, 0.79), _row("Student", 3, seed, student), _row("T + steps", 3, seed, control)]
    md, verdicts = tables(rows)
    assert verdicts[0]["verdict"].startswith("pseudo labels beat the extra ground-truth steps at every seed (paired")
    assert verdicts[0]["paired"]["p"] < 0.05
    assert "not significant at 5 %" in verdicts[1]["verdict"]  # +0.001, +0.011, +0.001: same sign, large spread
