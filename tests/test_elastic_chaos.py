"""Real 2-process (gloo, CPU) torchrun jobs: an elastic restart after rank 1 dies continues the same
run by itself (also when it died before the first checkpoint), and a job SIGKILLed at random moments
several times and resumed each time ends with the weights, metrics.jsonl and MLflow history of an
uninterrupted job."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from process_tree import children, kill_job

pytestmark = pytest.mark.slow  # multi-process / cluster / browser / benchmark: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]
TOTAL_STEPS = 6  # 2 epochs of 3 steps, a checkpoint every step, validation after each epoch
LATE = "train.checkpoint_every_steps=6"  # the only checkpoint is the last step's


def torchrun(shards, run_dir, *extra, restarts=0):
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
            f"--max-restarts={restarts}", str(ROOT / "launch" / "train.py"), str(ROOT / "configs" / "debug.yaml"),
            f"data.shards={shards}", f"train.run_dir={run_dir}", "train.epochs=2", "train.steps_per_epoch=3",
            "train.checkpoint_every_steps=1", "eval.test_split=", "track.enabled=true",
            f"track.tracking_uri=sqlite:///{run_dir}/mlflow.db", *extra]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def step_of(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except Exception:  # not written yet, or being replaced
        return -1


def newest_step(run_dir: Path) -> int:
    return max([step_of(p) for p in run_dir.glob("*/checkpoints/last.pt")], default=-1)


@pytest.fixture(scope="module")
def straight(tiny_shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    subprocess.run(torchrun(tiny_shards, run_dir, "train.run_name=r"), env=env(), check=True, timeout=600,
                   capture_output=True)
    return run_dir / "r"


@pytest.fixture(scope="module")
def straight_late(tiny_shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight_late")
    subprocess.run(torchrun(tiny_shards, run_dir, "train.run_name=r", LATE), env=env(), check=True, timeout=600,
                   capture_output=True)
    return run_dir / "r"


def history(run: Path) -> list[tuple]:
    from dias_dist.run.history import read_records

    return [(r["kind"], r["step"], r.get("loss_total"), r.get("val_auc"))
            for r in read_records(run / "metrics.jsonl")]


def assert_same_run(run: Path, straight: Path) -> None:
    """Weights, optimizer state and best score of final.pt; metrics.jsonl; the one MLflow run's history."""
    a = torch.load(straight / "checkpoints" / "final.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    assert a["step"] == b["step"] == TOTAL_STEPS
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    moments = lambda ckpt: [s["exp_avg"] for s in ckpt["optimizer"]["state"].values()]  # noqa: E731
    assert len(moments(a)) == len(moments(b)) > 0 and all(map(torch.equal, moments(a), moments(b)))
    assert a["best"] == b["best"]
    assert history(run) == history(straight)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run.parent}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.run_id == b["mlflow_run_id"] and runs[0].info.status == "FINISHED"
    points = client.get_metric_history(b["mlflow_run_id"], "loss_total")
    assert sorted(m.step for m in points) == list(range(1, TOTAL_STEPS + 1))  # each step exactly once
    logged = {m.step: m.value for m in points}
    assert [logged[step] for _, step, loss, _ in history(run) if loss is not None] == \
        [loss for _, _, loss, _ in history(run) if loss is not None]  # metrics.jsonl and MLflow agree


def mlflow_runs(run_dir: Path) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    return [r.info.run_id for r in client.search_runs([e.experiment_id for e in client.search_experiments()])]


def worker_pids(agent_pid: int, rank: int) -> list[int]:
    """Worker processes of the torchrun agent ``agent_pid`` with RANK=``rank`` (read from /proc)."""
    found = []
    for pid in children().get(agent_pid, []):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if f"RANK={rank}".encode() in environ:
            found.append(pid)
    return found


def test_elastic_restart_continues_the_same_run(tiny_shards, tmp_path, straight):
    log = open(tmp_path / "job.log", "wb")
    # one restart allowed and used: the restarted group must form at its first try (tests/test_elastic_store.py)
    job = subprocess.Popen(torchrun(tiny_shards, tmp_path, restarts=1), env=env(), stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while newest_step(tmp_path) < 2 and job.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        victims = worker_pids(job.pid, 1)
        assert newest_step(tmp_path) < TOTAL_STEPS and len(victims) == 1, "rank 1 was not found mid-run"
        os.kill(victims[0], signal.SIGKILL)
        assert job.wait(timeout=240) == 0, (tmp_path / "job.log").read_text()[-4000:]
    finally:
        if job.poll() is None:  # only a live agent: a reaped pid may belong to someone else by now
            kill_job(job.pid)
            job.wait()
    runs = [p for p in tmp_path.iterdir() if (p / "checkpoints").is_dir()]
    assert len(runs) == 1 and runs[0].name.startswith("vss_net-supervised-")  # one folder, named by the job
    assert_same_run(runs[0], straight)


def test_elastic_restart_before_the_first_checkpoint_continues_the_same_folder_and_mlflow_run(
        tiny_shards, tmp_path, straight_late):
    log = open(tmp_path / "job.log", "wb")
    job = subprocess.Popen(torchrun(tiny_shards, tmp_path, LATE, restarts=1), env=env(), stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not list(tmp_path.glob("*/metrics.jsonl")) and job.poll() is None and time.time() < deadline:
            time.sleep(0.02)  # rank 0 has logged a step: the MLflow run exists and holds metrics
        victims = worker_pids(job.pid, 1)
        assert len(victims) == 1, "rank 1 was not found mid-run"
        os.kill(victims[0], signal.SIGSTOP)
        # last.pt comes after the last step's line and a collective that needs rank 1, so while that line
        # is missing, no checkpoint can appear before the kill
        from dias_dist.run.history import read_records

        steps = [r["step"] for r in read_records(next(tmp_path.glob("*/metrics.jsonl")))]
        assert max(steps, default=0) < TOTAL_STEPS, "too late: rank 1 was stopped after the last step"
        started = mlflow_runs(tmp_path)
        assert len(started) == 1  # the killed attempt's MLflow run
        os.kill(victims[0], signal.SIGKILL)
        assert job.wait(timeout=240) == 0, (tmp_path / "job.log").read_text()[-4000:]
    finally:
        if job.poll() is None:
            kill_job(job.pid)
            job.wait()
    runs = [p for p in tmp_path.iterdir() if (p / "checkpoints").is_dir()]
    assert len(runs) == 1 and runs[0].name.startswith("vss_net-supervised-")  # one folder, named by the job
    assert_same_run(runs[0], straight_late)  # one MLflow run, every step logged once, the uninterrupted weights
    assert mlflow_runs(tmp_path) == started  # the run the killed attempt had started, not a new one


@pytest.mark.slow
def test_chaos_kills_and_resumes_end_like_an_uninterrupted_run(tiny_shards, tmp_path, straight):
    seed = int(os.environ.get("DIAS_CHAOS_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    kills = []
    for attempt in range(4):  # three attempts killed at a random moment, then one left to finish
        before = newest_step(tmp_path)
        job = subprocess.Popen(torchrun(tiny_shards, tmp_path, "train.run_name=r", "train.resume=auto"), env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            if attempt < 3:
                deadline = time.time() + 300
                while newest_step(tmp_path) <= before and job.poll() is None and time.time() < deadline:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 1.5))  # anywhere: a step, a validation, a checkpoint write
                if job.poll() is None:
                    kill_job(job.pid)  # agent and workers: nothing of this attempt runs on
                    kills.append(newest_step(tmp_path))
            _, stderr = job.communicate(timeout=600)
        finally:
            if job.poll() is None:
                kill_job(job.pid)
                job.wait()
        assert b"is in use by a running training" not in stderr, f"seed {seed}: a killed attempt lived on"
        if attempt == 3 or job.returncode == 0:
            assert job.returncode == 0, f"seed {seed}: {stderr.decode()[-3000:]}"
            break
    assert kills, f"seed {seed}: no attempt was killed"
    assert not list((tmp_path / "r").rglob("*.tmp*")), f"seed {seed}: temporary files left"
    assert_same_run(tmp_path / "r", straight)
