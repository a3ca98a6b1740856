"""Ray Tune sweeps on a real local Ray instance (num_cpus=2) with real trainer runs on tiny shards."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ray = pytest.importorskip("ray")


def _tiny_overrides(tiny_shards, tmp_path) -> list[str]:
    return [
        f"data.shards={tiny_shards}", "data.patch_size_px=32", "data.num_workers=0",
        "model.name=fr_unet", "model.params={width: 4}",
        "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=2", "train.device=cpu",
        f"train.run_dir={tmp_path / 'runs'}", "eval.select_from_epoch=0", "eval.test_split=",
        "eval.batch_size=16", "track.enabled=true",
    ]


def _child_runs(tracking_uri: str, parent_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_id)
    return parent, client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sscr_grid_nests_four_runs_and_a_failed_trial_keeps_the_rest(tiny_shards, tmp_path):
    from dias_dist.sweep import SweepSpec, run_sweep

    # 2 x 2 λ grid of 2-step SSCR trials, times two frame counts of which one passes the config checks
    # but not the data (a 7-channel network fed the shards' 8 frames): those trials must fail with
    # their error reported while the 4 good ones complete.
    spec = SweepSpec(
        kind="train", config=str(ROOT / "configs" / "weak" / "sscr.yaml"), name="grid",
        param_space={"method.params.lambda1": [0.5, 1.0], "method.params.lambda2": [0.0, 0.5],
                     "model.params.num_frames": [8, 7]},
        overrides=_tiny_overrides(tiny_shards, tmp_path) + ["data.target=scribble_rdfa"],
        cpus_per_trial=1,
    )
    out = run_sweep(spec, storage_path=str(tmp_path / "tune"))
    assert not ray.is_initialized()  # shut down after the sweep
    ok = [r for r in out["rows"] if r["status"] == "ok"]
    assert len(out["rows"]) == 8 and len(ok) == 4 and len(out["errors"]) == 4
    assert all(e["model.params.num_frames"] == 7 for e in out["errors"])
    assert all(r["best_val_dsc"] is not None for r in ok)
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    parent, children = _child_runs(uri, out["parent_run_id"])
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 4
    lambdas = {(c.data.params["method.params.lambda1"], c.data.params["method.params.lambda2"]) for c in finished}
    assert lambdas == {("0.5", "0.0"), ("0.5", "0.5"), ("1.0", "0.0"), ("1.0", "0.5")}
    assert parent.data.metrics["num_failed_trials"] == 4
    assert (Path(out["dir"]) / "summary.png").stat().st_size > 1000

    # Restarting the same sweep resumes from Tune's experiment state: finished trials are kept (no new
    # child runs), errored ones are retried (and fail again), and the summary still has all 8 rows.
    again = run_sweep(spec, storage_path=str(tmp_path / "tune"))
    assert again["parent_run_id"] == out["parent_run_id"]
    assert len(again["rows"]) == 8 and len(again["errors"]) == 4
    _, children_after = _child_runs(uri, out["parent_run_id"])
    assert len([c for c in children_after if c.info.status == "FINISHED"]) == 4


def test_no_improvement_stopper_ends_a_trial_whose_round_does_not_improve():
    from dias_dist.sweep import NoImprovementStopper

    stop = NoImprovementStopper()
    assert stop("a", {"val_dsc": 0.5}) is False  # teacher
    assert stop("a", {"val_dsc": 0.6}) is False  # round 1 improves
    assert stop("b", {"val_dsc": 0.1}) is False  # other trial tracked separately
    assert stop("a", {"val_dsc": 0.59}) is True  # round 2 does not improve
    assert stop("a", {"epoch": 3}) is False  # reports without the metric are ignored


def test_parse_grid_and_bad_grid():
    from dias_dist.sweep import parse_grid

    assert parse_grid(["method.params.lambda1=0.5,1,2"]) == {"method.params.lambda1": [0.5, 1, 2]}
    with pytest.raises(ValueError, match="section.key=v1,v2"):
        parse_grid(["lambda1"])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_rpst_trial_reports_after_teacher_and_each_round(tiny_shards, tmp_path):
    from dias_dist.sweep import SweepSpec, run_sweep

    spec = SweepSpec(
        kind="rpst", config=str(ROOT / "configs" / "semi" / "rpst_cpu.yaml"), name="rpst",
        param_space={"data.num_labeled": [2]}, max_rounds=2, stop_on_plateau=False,
        overrides=[f"data.shards={tiny_shards}", "train.epochs=1", "train.steps_per_epoch=2",
                   f"train.run_dir={tmp_path / 'runs'}", "eval.test_split=", "rpst.num_unlabeled=2"],
    )
    out = run_sweep(spec, storage_path=str(tmp_path / "tune"))
    assert out["errors"] == []
    (row,) = out["rows"]
    # one report after the teacher and one after each of the 2 rounds (the plateau stopper is off)
    assert len(row["val_dsc_history"]) == 3
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    _, jobs = _child_runs(uri, out["parent_run_id"])  # the RPST job run nests under the sweep
    assert len(jobs) == 1
    _, stages = _child_runs(uri, jobs[0].info.run_id)  # its teacher and rounds nest under the job
    trained = sorted(r.data.tags["rpst.stage"] for r in stages if not r.data.tags["rpst.stage"].startswith("pseudo"))
    assert trained == ["round1", "round2", "teacher"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_multi_worker_trial_runs_the_same_run_in_a_torch_trainer(tiny_shards, tmp_path):
    """A trial with 2 workers: Ray Train's TorchTrainer (gloo on CPU) around the same trainer.run."""
    from dias_dist.sweep import SweepSpec, run_sweep

    spec = SweepSpec(
        kind="train", config=str(ROOT / "configs" / "full" / "fr_unet.yaml"), name="ddp",
        param_space={"optim.lr": [1e-3]}, overrides=_tiny_overrides(tiny_shards, tmp_path),
        cpus_per_trial=2, workers_per_trial=2,
    )
    out = run_sweep(spec, storage_path=str(tmp_path / "tune"))
    assert out["errors"] == []
    (row,) = out["rows"]
    assert row["best_val_dsc"] is not None and row["reports"] >= 1
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    _, children = _child_runs(uri, out["parent_run_id"])
    assert len(children) == 1  # only rank 0 of the two workers logs
    assert children[0].data.tags["world_size"] == "2"


def test_last_validation_reporter_keeps_the_metric_in_the_final_report():
    from dias_dist.sweep import LastValidation

    seen = []
    reporter = LastValidation(seen.append)
    reporter({"epoch": 1, "val_dsc": 0.5, "note": "x"})
    reporter.final({"test_dsc": 0.6, "run_dir": "/tmp/r"})
    assert seen[0] == {"epoch": 1.0, "val_dsc": 0.5}
    assert seen[1] == {"epoch": 1.0, "val_dsc": 0.5, "test_dsc": 0.6, "done": 1.0}


def test_restarted_trial_waits_for_the_run_lock_and_keeps_its_mlflow_run(tmp_path):
    """A restarted trial waits for the stopped instance's lock (``run_folder.wait_free``: never across a claim
    of this process, which it must not drop) and takes the trial's MLflow run from the folder's start.json."""
    import json
    import subprocess
    import sys
    import time

    from dias_dist.run import folder as run_folder
    from dias_dist.sweep import _started_run_id

    folder = tmp_path / "trial"
    assert run_folder.wait_free(folder, 0.0)  # no folder, no lock file
    lock = str(folder / run_folder.LOCK_NAME)
    probe = "import fcntl, os, sys; fcntl.lockf(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB)"
    claim = run_folder.claim(folder, continuing=False, auto=False, overwrite=False)
    try:
        begin = time.monotonic()
        assert not run_folder.wait_free(folder, 30.0)  # held by this process: False at once
        assert time.monotonic() - begin < 5
        assert subprocess.run([sys.executable, "-c", probe, lock], capture_output=True).returncode != 0  # still held
    finally:
        claim.release("FINISHED")
    holder = subprocess.Popen([sys.executable, "-c", probe + "; print('held', flush=True); "
                               "import time; time.sleep(1.5)", lock], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not run_folder.wait_free(folder, 0.3)  # another process holds it past the wait
        assert run_folder.wait_free(folder, 30.0)  # ... until it exits
    finally:
        holder.wait(timeout=30)
    assert _started_run_id(folder) == ""
    (folder / "start.json").write_text(json.dumps({"job": "", "mlflow_run_id": "abc", "tracking_uri": "x"}))
    assert _started_run_id(folder) == "abc"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tune_cli_with_asha(tiny_shards, tmp_path):
    """`python tune.py sscr-sweep ... --scheduler asha`: every result carries val_dsc (ASHA checks it)."""
    import subprocess
    import sys

    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tune.py"), "sscr-sweep", str(ROOT / "configs" / "weak" / "sscr.yaml"),
         f"data.shards={tiny_shards}", "data.patch_size_px=32", "data.num_workers=0", "data.target=scribble_rdfa",
         "model.name=fr_unet", "model.params.width=4", "train.epochs=2", "train.steps_per_epoch=2",
         "train.batch_size=2", "train.device=cpu", f"train.run_dir={tmp_path / 'runs'}", "eval.select_from_epoch=0",
         "eval.test_split=test", "eval.batch_size=16", "--grid", "method.params.lambda1=0.5,1.0",
         "--scheduler", "asha", "--storage", str(tmp_path / "tune"), "--name", "asha"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "[tune] 2 trials, 0 failed" in log, log[-3000:]
