"""Issue 4 smoke test: two different models trained a few steps on tiny shards, then `dias report`."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dias_dist import cli, trainer
from dias_dist.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_trained_models_make_a_two_row_report(tiny_shards, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in ("fr_unet", "unet"):
        cfg = load_config(ROOT / "configs" / "full" / f"{name}.yaml", [
            f"data.shards={tiny_shards}", "data.patch_size_px=32", "data.num_workers=0",
            "model.params={width: 4}", "train.epochs=1", "train.steps_per_epoch=3", "train.batch_size=4",
            "train.device=cpu", "train.progress=false", f"train.run_dir={tmp_path / 'runs'}",
            f"train.run_name={name}", "eval.select_from_epoch=0", "eval.overlays=false", "eval.batch_size=32",
            f"track.tracking_uri={uri}", "track.experiment=smoke",
        ])
        result = trainer.run(cfg)
        assert 0.0 <= result["test_dsc"] <= 1.0

    out = tmp_path / "report"
    assert cli.main(["report", "smoke", "--tracking-uri", uri, "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert sorted(r["model"] for r in rows) == ["fr_unet", "unet"]
    assert all(0.0 <= float(r["dsc"]) <= 1.0 and float(r["params_m"]) > 0 for r in rows)
    assert (out / "report_dsc.png").stat().st_size > 1000
