"""MLflow conventions for clusters: standard source tags, system metrics, the commit baked into the
Docker image, and a SQLite store that still opens (artifacts included) after its folder was moved."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def _track(store_uri: str, *extra: str):
    from dias_dist.config import load_config

    return load_config(None, [f"track.tracking_uri={store_uri}", "track.experiment=cluster", *extra]).track


@pytest.mark.slow
def test_runs_carry_source_tags_and_system_metrics(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from dias_dist.run.track import MLflowTracker

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MLflowTracker(_track(uri, "track.system_metrics=true"), "sys", run_root=tmp_path, method="supervised")
    deadline = time.time() + 20
    client = MlflowClient(uri)
    while time.time() < deadline and not any(k.startswith("system/") for k in client.get_run(tracker.run_id).data.metrics):
        time.sleep(0.2)
    tracker.close()
    run = client.get_run(tracker.run_id)
    tags = run.data.tags
    assert tags["mlflow.user"] and run.info.user_id == tags["mlflow.user"]
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    if _head():  # a git checkout (the Docker image case is the next test)
        assert tags["mlflow.source.git.commit"] == _head()
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    assert run.info.status == "FINISHED"

    # off by default; MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true switches it on without the config key
    from dias_dist.run.track import system_metrics_enabled

    assert not system_metrics_enabled(_track(uri))
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    assert system_metrics_enabled(_track(uri))
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "yes please")
    with pytest.raises(ValueError, match="MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.*yes please"):
        system_metrics_enabled(_track(uri))


def test_system_metrics_key_is_validated_by_name():
    from dias_dist.config import load_config

    with pytest.raises(ValueError, match=r"track.system_metrics must be bool, got str 'sometimes'"):
        load_config(None, ["track.system_metrics=sometimes"])
    assert load_config(None, ["track.system_metrics=true"]).track.system_metrics is True


def test_psutil_is_pinned_for_system_metrics():
    pins = (ROOT / "requirements" / "base.txt").read_text()
    assert "\npsutil==" in pins
    assert any(dep.startswith("psutil") for dep in __import__("tomllib").loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


@pytest.mark.slow
def test_git_sha_without_a_checkout_is_the_one_baked_into_the_image(tmp_path):
    """The Docker image has no .git: git_sha (and mlflow.source.git.commit) come from DIAS_GIT_SHA,
    which the Dockerfile sets from its GIT_SHA build argument."""
    shutil.copytree(ROOT / "dias_dist", tmp_path / "dias_dist", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import os; from dias_dist.run.track import git_sha, source_tags; "
            "print(git_sha(), source_tags().get('mlflow.source.git.commit')); os.environ.pop('DIAS_GIT_SHA'); "
            "print(git_sha(), source_tags().get('mlflow.source.git.commit'))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "DIAS_GIT_SHA": "0123abc"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0123abc", "0123abc", "unknown", "None"]  # without the build argument


@pytest.mark.slow
def test_a_moved_store_opens_and_its_artifacts_download(tmp_path, monkeypatch):
    """Runs logged to the default store (runs/mlflow.db + runs/mlartifacts), the whole folder moved
    elsewhere (another directory; a container that mounted it at another path): opened again by dias,
    every MLflow client reads it, artifacts included."""
    from mlflow import MlflowClient

    from dias_dist.config import load_config
    from dias_dist.run.track import MLflowTracker, relocate_store, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "machine_a" / "runs"
    first.mkdir(parents=True)
    note = tmp_path / "note.txt"
    note.write_text("vessels\n")
    run_ids = []
    for experiment in ("dias-supervised", "dias-weak"):
        track = load_config(None, [f"track.experiment={experiment}"]).track
        tracker = MLflowTracker(track, experiment, run_root=first, method="supervised")
        tracker.log_artifact(note, "notes")
        tracker.log_metrics({"val_dsc": 0.5}, 1)
        tracker.close()
        run_ids.append(tracker.run_id)
    assert tracking_uri(track, first) == f"sqlite:///{first.resolve()}/mlflow.db"

    moved = tmp_path / "machine_b" / "elsewhere"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    uri = f"sqlite:///{moved}/mlflow.db"
    with pytest.raises(Exception):  # what MLflow alone does with the absolute paths it wrote
        MlflowClient(uri).download_artifacts(run_ids[0], "notes/note.txt", str(tmp_path / "before"))

    # any dias component that opens the store (here a new training run's tracker) re-points it
    tracker = MLflowTracker(load_config(None, ["track.experiment=dias-weak"]).track, "after-move",
                            run_root=moved, method="supervised")
    tracker.log_artifact(note, "notes")
    tracker.close()
    assert relocate_store(uri) == []  # done once; nothing left to change
    client = MlflowClient(uri)  # a plain client (as `mlflow ui` uses) from now on
    for run_id in [*run_ids, tracker.run_id]:
        run = client.get_run(run_id)
        assert run.info.artifact_uri.startswith((moved / "mlartifacts").as_uri() + "/"), run.info.artifact_uri
        got = Path(client.download_artifacts(run_id, "notes/note.txt", str(tmp_path / run_id)))
        assert got.read_text() == "vessels\n"
    assert not first.exists() and not (tmp_path / "mlruns").exists()  # nothing written at the old place


def test_a_new_store_opens_without_a_warning(tmp_path):
    """check_writable's probe leaves an empty database behind; opening it must not take it for a moved
    store (it once warned 'was moved but cannot be re-pointed ... no such table: experiments')."""
    import warnings

    from dias_dist.run.track import check_writable, open_store

    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    check_writable(uri)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        client = open_store(uri)
    assert client.search_experiments()[0].name == "Default"
