"""Resume: a deterministic CPU run killed with SIGKILL half-way and resumed with ``resume=auto``
ends bit-identical to an uninterrupted run, in the same MLflow run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
TOTAL_STEPS = 4 * EPOCHS  # epochs of 4 steps (configs/debug.yaml), a checkpoint every 2 steps: the
# poller has the checkpoints of steps 4, 6, 8 and 10 to catch before the run ends (with 2 epochs, only 4
# and 6, and a loaded CI machine once missed both)


def command(shards, run_dir, *extra):
    return [sys.executable, str(ROOT / "launch" / "train.py"), str(ROOT / "configs" / "debug.yaml"),
            f"data.shards={shards}", f"train.run_dir={run_dir}", "train.run_name=r",
            "train.checkpoint_every_steps=2", f"train.epochs={EPOCHS}", "eval.test_split=", "track.enabled=true",
            f"track.tracking_uri=sqlite:///{run_dir}/mlflow.db", *extra]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def last_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except Exception:  # not written yet (or being replaced): keep polling
        return -1


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tiny_shards, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    from dias_dist import trainer
    from dias_dist.config import load_config

    trainer.run(load_config(command(tiny_shards, straight)[2], command(tiny_shards, straight)[3:]))  # in-process

    proc = subprocess.Popen(command(tiny_shards, killed), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = killed / "r" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while last_step(last) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = last_step(last)
    assert 4 <= killed_at < TOTAL_STEPS, f"the run was not killed half-way (last checkpoint at step {killed_at})"
    assert not (killed / "r" / "checkpoints" / "final.pt").exists()

    subprocess.run(command(tiny_shards, killed, "train.resume=auto"), check=True, env=env(), timeout=300,
                   capture_output=True)
    a = torch.load(straight / "r" / "checkpoints" / "final.pt", weights_only=True)
    b = torch.load(killed / "r" / "checkpoints" / "final.pt", weights_only=True)
    assert a["step"] == b["step"] == TOTAL_STEPS
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    exp_avg = lambda ckpt: [s["exp_avg"] for s in ckpt["optimizer"]["state"].values()]  # noqa: E731
    assert len(exp_avg(a)) == len(exp_avg(b)) > 0
    assert all(torch.equal(x, y) for x, y in zip(exp_avg(a), exp_avg(b)))
    assert a["best"] == b["best"]

    # metrics.jsonl: the resumed run's file equals the uninterrupted one (killed steps dropped)
    def losses(run):
        from dias_dist.run.track import MetricsLog

        return [(r["kind"], r["step"], r.get("loss_total", r.get("val_auc")))
                for r in MetricsLog(run / "r" / "metrics.jsonl", True).read()]

    assert losses(straight) == losses(killed)
    # the same MLflow run continued: one run in the store, finished, with every step's loss
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{killed}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.run_id == b["mlflow_run_id"] and runs[0].info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss_total"))  # no step twice
    assert steps == list(range(1, TOTAL_STEPS + 1))
