"""K-fold cross-validation: the fold assignment is a deterministic, patient-grouped partition; a fold trains
without its held-out part and validates on it; `tune.py folds --k 2` trains both folds as Ray Tune trials
under one parent run and evaluates their ensemble on the test split like one model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dias_dist import cli
from dias_dist.config import load_config
from dias_dist.data import folds
from dias_dist.data import loader
from dias_dist.data.loader import TrainSource

ROOT = Path(__file__).resolve().parents[1]


def test_fold_assignment_is_a_deterministic_balanced_partition_that_keeps_patients_together():
    keys = [f"s{i:05d}" for i in range(23)]
    groups = {"s00000": "p1", "s00001": "p1", "s00002": "p1", "s00010": "p2", "s00011": "p2"}
    fold_of = folds.assign_folds(keys, 5, groups)
    assert sorted(fold_of) == keys  # every sequence exactly once
    assert set(fold_of.values()) == set(range(5))
    assert fold_of == folds.assign_folds(list(reversed(keys)), 5, dict(groups))  # order does not matter
    assert len({fold_of[k] for k in ("s00000", "s00001", "s00002")}) == 1  # a patient is one fold
    assert fold_of["s00010"] == fold_of["s00011"]
    sizes = np.bincount(list(fold_of.values()))
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 23
    in_id_order = [fold_of[k] for k in keys[12:]]  # sequences without a patient: spread, not cut by ID
    assert in_id_order != sorted(in_id_order)

    train, held_out = folds.split_keys(keys, 5, 2)
    assert not set(train) & set(held_out) and sorted(train + held_out) == keys
    unions = set()
    for fold in range(5):  # the held-out parts of all folds tile the split
        part = folds.split_keys(keys, 5, fold)[1]
        assert not unions & set(part)
        unions |= set(part)
    assert unions == set(keys)


def test_bad_fold_settings_are_one_line_errors(tmp_path, tiny_shards):
    with pytest.raises(ValueError, match="only 2 group"):
        folds.assign_folds(["s00001", "s00002", "s00003"], 3, {"s00001": "a", "s00002": "a", "s00003": "b"})
    with pytest.raises(ValueError, match=r"data.fold=2 must be in 0..1 \(data.num_folds=2\)"):
        load_config(ROOT / "configs" / "debug.yaml", ["data.num_folds=2", "data.fold=2"])
    with pytest.raises(ValueError, match="data.num_folds=1"):
        load_config(ROOT / "configs" / "debug.yaml", ["data.num_folds=1"])
    with pytest.raises(ValueError, match="data.num_folds"):
        load_config(ROOT / "configs" / "debug.yaml", ["data.num_folds=-1"])
    bad = tmp_path / "groups.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="data.fold_groups=.*JSON object"):
        folds.read_groups(str(bad))


def test_a_fold_trains_without_its_held_out_part_and_validates_on_it(tiny_shards, tmp_path):
    groups = tmp_path / "patients.json"
    all_keys = sorted(k for _, ks, _ in TrainSource(str(tiny_shards)).shard_keys() for k in ks)
    assert len(all_keys) == 4
    ids = [int(k[1:]) for k in all_keys]
    groups.write_text(json.dumps({str(ids[0]): "A", str(ids[1]): "A"}))  # by ID, as a user would write it
    seen = set()
    for fold in (0, 1):
        cfg = load_config(ROOT / "configs" / "debug.yaml", [f"data.shards={tiny_shards}", "data.num_folds=2",
                                                            f"data.fold={fold}", f"data.fold_groups={groups}"])
        from dias_dist.data.loader import default_sources

        (source,) = default_sources(cfg.data)
        train = sorted(k for _, ks, _ in source.shard_keys() for k in ks)
        split, held_out = loader.fold_eval_split(cfg.data, "validation")
        assert split == "training" and not held_out & set(train) and sorted(held_out | set(train)) == all_keys
        assert {all_keys[0], all_keys[1]} <= set(train) or {all_keys[0], all_keys[1]} <= held_out
        seen |= held_out
        assert loader.fold_eval_split(cfg.data, "test") == ("test", None)
    assert seen == set(all_keys)


def test_tune_folds_refuses_bad_k_before_ray_starts(tiny_shards, tmp_path, capsys):
    import tune

    config = str(ROOT / "configs" / "full" / "fr_unet.yaml")
    base = [f"data.shards={tiny_shards}", f"train.run_dir={tmp_path / 'runs'}"]
    assert tune.main(["folds", config, *base, "--k", "1"]) == 2
    assert "--k 1: cross-validation needs 2..1000 folds" in capsys.readouterr().err
    assert tune.main(["folds", config, *base, "--k", "5"]) == 2  # 4 training sequences
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.num_folds=5 but the training split has only 4 group(s)" in err[0]
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tune_folds_trains_two_folds_as_trials_and_evaluates_their_ensemble(tiny_shards, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    import tune
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    overrides = [f"data.shards={tiny_shards}", "data.patch_size_px=32", "data.num_workers=0",
                 "model.name=fr_unet", "model.params={width: 4}", "train.epochs=1", "train.steps_per_epoch=2",
                 "train.batch_size=2", "train.device=cpu", f"train.run_dir={tmp_path / 'runs'}",
                 "eval.select_from_epoch=0", "eval.batch_size=16", "eval.test_checkpoint=best", "track.enabled=true"]
    code = tune.main(["folds", str(ROOT / "configs" / "full" / "fr_unet.yaml"), *overrides, "--k", "2",
                      "--storage", str(tmp_path / "tune"), "--name", "cv"])
    assert code == 0
    client = MlflowClient(uri)
    parent_id = (tmp_path / "tune" / "cv" / "parent_run_id").read_text().strip()
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert sorted(c.data.params["data.fold"] for c in children) == ["0", "1"]
    assert all(c.info.status == "FINISHED" and "val_dsc" in c.data.metrics and "test_dsc" in c.data.metrics
               for c in children)
    # the ensemble of the folds on the test split is the parent's row: the same numbers as `dias evaluate
    # CKPT0 --ensemble CKPT1` gives
    assert parent.data.params["ensemble.members"] == "2" and parent.data.tags["dias.ensemble"] == "folds"
    by_fold = {c.data.params["data.fold"]: tmp_path / "runs" / c.info.run_name / "checkpoints" / "best.pt"
               for c in children}
    assert cli.main(["evaluate", str(by_fold["0"]), "--ensemble", str(by_fold["1"]), "--no-images",
                     "--out", str(tmp_path / "ev"), f"data.shards={tiny_shards}"]) == 0
    import csv

    summary = {r["metric"]: float(r["mean"]) for r in csv.DictReader(open(tmp_path / "ev" / "summary.csv"))}
    assert parent.data.metrics["test_dsc"] == pytest.approx(summary["dsc"], abs=1e-6)
    artifacts = {a.path for a in client.list_artifacts(parent_id, "eval/test")}
    assert "eval/test/metrics.csv" in artifacts
