"""Atomic checkpoints, RNG round trips, metrics.jsonl truncation and the MLflow tracker's failure
mode (a store that cannot be reached warns and switches off, it never stops training)."""
import random

import numpy as np
import pytest
import torch

from dias_dist.run import checkpoint
from dias_dist.config import load_config
from dias_dist.run.track import MetricsLog, MLflowTracker, NullTracker, experiment_name, make_tracker, tracking_uri


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    checkpoint.save(path, {"step": 1, "model": {"w": torch.ones(2)}})

    def broken_save(obj, f):
        f.write(b"partial")  # a handle on the temporary file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"step": 2})
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="nope.pt does not exist"):
        checkpoint.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt cannot be read"):
        checkpoint.load(bad)
    checkpoint.save(tmp_path / "x.pt", {"step": 3})
    with pytest.raises(ValueError, match="no 'model' entry"):
        checkpoint.model_state(tmp_path / "x.pt")


def test_rng_states_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    checkpoint.save(tmp_path / "r.pt", {"rng": [checkpoint.rng_state()]})
    expected = (torch.rand(4), np.random.rand(4), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "r.pt")["rng"][0])
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(4), expected[1])
    assert random.random() == expected[2]


def test_metrics_log_does_not_rewrite_steps_after_a_resume_point(tmp_path):
    from dias_dist.run.history import skip_logged

    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True)
    for step in range(1, 6):
        log.write("train", step, {"loss_total": 1.0 / step})
    resumed, _ = skip_logged(log, NullTracker(), 3)
    for step in range(4, 8):  # the resumed run replays 4 and 5, then goes on
        resumed.write("train", step, {"loss_total": 1.0 / step})
    assert [r["step"] for r in log.read()] == [1, 2, 3, 4, 5, 6, 7]
    silent = MetricsLog(tmp_path / "other.jsonl", enabled=False)
    silent.write("train", 1, {"loss": 1.0})
    assert not (tmp_path / "other.jsonl").exists()


def test_store_and_experiment_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, [f"train.run_dir={tmp_path}", "method.name=supervised"])
    assert tracking_uri(cfg.track, cfg.train.run_dir) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert experiment_name(cfg.track, cfg.method.name) == "dias-supervised"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert tracking_uri(cfg.track, cfg.train.run_dir) == "sqlite:///elsewhere.db"
    cfg = load_config(None, ["track.tracking_uri=http://h:1", "track.experiment=x"])
    assert tracking_uri(cfg.track, "runs") == "http://h:1" and experiment_name(cfg.track, "pce") == "x"
    assert isinstance(make_tracker(cfg.track, "r", run_root="runs", method="pce", is_main=False), NullTracker)
    off = load_config(None, ["track.enabled=false"]).track
    assert isinstance(make_tracker(off, "r", run_root="runs", method="pce", is_main=True), NullTracker)


def test_unreachable_tracking_server_warns_and_training_data_stays_local(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = load_config(None, ["track.tracking_uri=http://127.0.0.1:9", f"train.run_dir={tmp_path}"])
    with pytest.warns(RuntimeWarning, match="MLflow start failed"):
        tracker = MLflowTracker(cfg.track, "down", run_root=tmp_path, method="supervised")
    tracker.log_metrics({"loss": 1.0}, 1)  # disabled: no second warning, no exception
    tracker.close()
    assert tracker.run_id == ""


def test_sqlite_tracker_logs_params_metrics_tags_and_nesting(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow import MlflowClient

    cfg = load_config(None, [f"train.run_dir={tmp_path}"])
    parent = MLflowTracker(cfg.track, "parent", run_root=tmp_path, method="supervised")
    parent.log_params({"optim.lr": 5e-4, "model.name": "vss_net"})
    parent.set_tags({"world_size": 2})
    parent.log_metrics({"test_dsc": 0.8, "test_dsc_std": 0.1}, 10)
    artifact = tmp_path / "table.md"
    artifact.write_text("| a |")
    parent.log_artifact(artifact)
    child = MLflowTracker(load_config(None, [f"track.parent_run_id={parent.run_id}"]).track, "child",
                          run_root=tmp_path, method="supervised")
    child.close()
    parent.close()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(parent.run_id)
    assert run.data.params["optim.lr"] == "0.0005" and run.data.tags["world_size"] == "2"
    assert run.data.metrics["test_dsc"] == 0.8 and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "dias-supervised"
    assert [a.path for a in client.list_artifacts(parent.run_id)] == ["table.md"]
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert (tmp_path / "mlartifacts").is_dir()


def test_a_restarted_run_adds_missing_params_and_keeps_the_logged_ones(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    import warnings

    from mlflow import MlflowClient

    track = load_config(None, [f"train.run_dir={tmp_path}"]).track
    first = MLflowTracker(track, "job", run_root=tmp_path, method="supervised")
    first.log_params({"train.resume": "never"})  # then the attempt is killed
    again = MLflowTracker(track, "job", run_root=tmp_path, method="supervised", resume_run_id=first.run_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a refused param change would switch MLflow off with a warning
        again.log_params({"train.resume": "auto", "optim.lr": 0.002}, keep_logged=True)
        again.log_metrics({"loss_total": 1.0}, 1)
        again.close()
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(first.run_id)
    assert run.data.params == {"train.resume": "never", "optim.lr": "0.002"} and run.info.status == "FINISHED"
