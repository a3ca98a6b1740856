"""Sweep driver logic that needs no Ray start: GPU resolution, grid validation, store warnings,
the shared MLflow experiment helper (artifacts next to the SQLite db) and the summary table."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SSCR = str(ROOT / "configs" / "weak" / "sscr.yaml")


def test_gpus_per_trial_default_is_one_per_worker_on_a_gpu_cluster():
    from dias_dist.sweep import resolve_gpus_per_trial

    assert resolve_gpus_per_trial(None, 4, cluster_gpus=8) == 4.0  # --workers-per-trial 4: 4 whole GPUs
    assert resolve_gpus_per_trial(None, 1, cluster_gpus=1) == 1.0
    assert resolve_gpus_per_trial(None, 4, cluster_gpus=0) == 0.0  # CPU-only cluster
    assert resolve_gpus_per_trial(0.5, 1, cluster_gpus=8) == 0.5  # explicit --gpus-per-trial wins
    assert resolve_gpus_per_trial(0, 4, cluster_gpus=8) == 0.0
    with pytest.raises(ValueError, match="gpus-per-trial"):
        resolve_gpus_per_trial(-1, 1, cluster_gpus=0)


def test_spec_leaves_gpus_to_the_cluster_by_default():
    from dias_dist.sweep import SweepSpec

    assert SweepSpec(kind="train", config=SSCR, param_space={}).gpus_per_trial is None


def test_check_grid_rejects_typos_and_bad_values():
    from dias_dist.sweep import check_grid

    check_grid(SSCR, [], {"method.params.lambda1": [0.5, 1.0], "optim.lr": [1e-3], "model.params.width": [4]})
    with pytest.raises(ValueError, match=r"model.params.width must be in \[1, 4096\], got -4"):  # config.RANGES
        check_grid(SSCR, [], {"model.params.width": [-4]})
    with pytest.raises(ValueError, match="optim.lrr"):
        check_grid(SSCR, [], {"optim.lrr": [1e-3]})
    with pytest.raises(ValueError, match="lamda1"):  # method.params is free-form in the schema
        check_grid(SSCR, [], {"method.params.lamda1": [0.5]})
    with pytest.raises(ValueError, match="lambda2"):
        check_grid(SSCR, [], {"method.params.lambda2": [0.5, "x"]})


def test_tune_cli_rejects_a_bad_grid_key_before_ray_starts(monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    import importlib.util

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start for an invalid grid")

    monkeypatch.setattr(ray, "init", no_ray)
    spec = importlib.util.spec_from_file_location("tune_cli", ROOT / "tune.py")
    tune_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune_cli)
    assert tune_cli.main(["sscr-sweep", SSCR, "--grid", "method.params.lamda1=0.5,1"]) == 2
    err = capsys.readouterr().err
    assert "tune.py: error: --grid method.params.lamda1=0.5" in err and "lamda1" in err
    with pytest.raises(SystemExit) as exit_info:
        tune_cli.main(["sscr-sweep", SSCR, "--workers-per-trial", "0"])
    assert exit_info.value.code == 2


def test_cluster_store_warning_only_for_a_sqlite_store_on_a_cluster():
    from dias_dist.sweep import cluster_store_warning

    assert cluster_store_warning(None, "sqlite:////tmp/runs/mlflow.db") is None
    assert cluster_store_warning("auto", "http://mlflow:5000") is None
    text = cluster_store_warning("auto", "sqlite:////tmp/runs/mlflow.db")
    assert "http://" in text and "--storage" in text


def test_artifact_location_is_next_to_the_sqlite_db(tmp_path):
    from dias_dist.run.track import artifact_location

    db = tmp_path / "store" / "mlflow.db"
    assert artifact_location(f"sqlite:///{db}") == (tmp_path / "store" / "mlartifacts").as_uri()
    assert artifact_location("http://127.0.0.1:5000") is None


@pytest.mark.slow
def test_sweep_parent_run_artifacts_land_next_to_the_db_not_in_cwd(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from dias_dist.sweep import SweepSpec
    from dias_dist.sweep_report import open_parent_run

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "store"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    spec = SweepSpec(kind="train", config=SSCR, param_space={"method.params.lambda1": [0.5]})
    run_id = open_parent_run(uri, "dias-sweep-train", "grid", tmp_path / "tune" / "grid", spec)
    summary = tmp_path / "summary.md"
    summary.write_text("| a |\n")
    client = MlflowClient(uri)
    client.log_artifact(run_id, str(summary))
    assert (store / "mlartifacts").is_dir()
    assert list((store / "mlartifacts").rglob("summary.md"))
    assert not (cwd / "mlruns").exists()
    # the trainer path shares the helper: an explicit sqlite:// tracking_uri also keeps artifacts by the db
    from dias_dist.config import load_config
    from dias_dist.run.track import MLflowTracker

    tracker = MLflowTracker(load_config(None, [f"track.tracking_uri={uri}", "track.experiment=trainer"]).track, "r",
                            run_root=tmp_path / "runs", method="supervised")
    tracker.log_artifact(summary)
    tracker.close()
    assert tracker.run_id and client.get_run(tracker.run_id).info.status == "FINISHED"
    assert client.get_experiment_by_name("trainer").artifact_location == (store / "mlartifacts").as_uri()
    assert not (cwd / "mlruns").exists()


def test_summary_table_is_the_shared_markdown_table():
    from dias_dist.sweep_report import _markdown

    rows = [{"method.params.lambda1": 0.5, "status": "ok", "best_val_dsc": None, "val_dsc_history": [0.1]}]
    assert _markdown(rows) == "| method.params.lambda1 | status | best_val_dsc |\n|---|---|---|\n| 0.5000 | ok |  |\n"
    assert _markdown([]) == "(no trials)\n"


def test_two_key_sweep_plot_is_titled_by_its_keys(tmp_path, monkeypatch):
    import types

    from matplotlib.axes import Axes

    from dias_dist.sweep_report import _plot

    titles = []
    monkeypatch.setattr(Axes, "set_title", lambda self, text, *a, **k: titles.append(text))
    spec = types.SimpleNamespace(kind="grid", param_space={"optim.lr": [1e-3, 1e-4], "method.params.weight": [0.1]})
    rows = [{"optim.lr": lr, "method.params.weight": 0.1, "best_val_dsc": 0.5} for lr in (1e-3, 1e-4)]
    _plot(rows, spec, tmp_path / "sweep.png")
    assert titles == ["lr x weight: best validation DSC"] and (tmp_path / "sweep.png").is_file()
