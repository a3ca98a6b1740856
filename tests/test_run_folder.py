"""`dias train` and its run folder: a running run owns it (real processes), an earlier run is never
overwritten by accident, failed starts leave nothing, folder faults are one line, a full disk loses
nothing already saved."""
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dias_dist import cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "debug.yaml")


def overrides(shards, run_dir, *extra):
    return [f"data.shards={shards}", f"train.run_dir={run_dir}", "train.run_name=r", "eval.test_split=",
            "train.checkpoint_every_steps=1", *extra]


def step_of(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except Exception:  # not written yet, or being replaced
        return -1


def train(shards, run_dir, *extra, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), CONFIG,
                           *overrides(shards, run_dir, *extra)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if ": error: " in line]  # `dias train` or `python -m dias_dist.train`
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.slow
def test_a_running_run_owns_its_folder_until_it_dies(tiny_shards, tmp_path):
    runs = tmp_path / "runs"
    last = runs / "r" / "checkpoints" / "last.pt"
    first = subprocess.Popen([sys.executable, str(ROOT / "launch" / "train.py"), CONFIG,
                              *overrides(tiny_shards, runs, "train.epochs=500", "eval.val_every_epochs=500")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 240
        while step_of(last) < 1 and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert step_of(last) >= 1, "the first run never checkpointed"
        lines_before = (runs / "r" / "metrics.jsonl").read_text().splitlines()
        # the second run (as a `resume=auto` next to orphaned workers would) fails at once, naming the holder
        second = train(tiny_shards, runs, "train.epochs=500", "train.resume=auto")
        assert second.returncode == 2
        assert f"host {socket.gethostname()} pid {first.pid}" in error_line(second.stderr)
        assert first.poll() is None, "the first run must keep training"
        lines_after = (runs / "r" / "metrics.jsonl").read_text().splitlines()
        assert lines_after[:len(lines_before)] == lines_before  # nothing truncated or interleaved
        steps = [int(line.split('"step": ')[1].split(",")[0]) for line in lines_after]
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_at = step_of(last)
    # the dead holder's lock is gone with it: a resume takes over
    resumed = train(tiny_shards, runs, "train.epochs=500", "train.resume=auto", f"train.max_steps={killed_at + 1}",
                    "eval.val_every_epochs=500")
    assert resumed.returncode == 0, resumed.stderr
    assert step_of(runs / "r" / "checkpoints" / "final.pt") == killed_at + 1


def run_cli(shards, run_dir, *extra):
    return cli.main(["train", CONFIG, *overrides(shards, run_dir, "train.epochs=1", "train.steps_per_epoch=2",
                                                 *extra)])


def test_an_earlier_run_needs_resume_or_overwrite_and_overwrite_drops_best(tiny_shards, tmp_path, capsys):
    assert run_cli(tiny_shards, tmp_path) == 0
    checkpoints = tmp_path / "r" / "checkpoints"
    assert (checkpoints / "best.pt").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()}
    capsys.readouterr()
    assert run_cli(tiny_shards, tmp_path) == 2
    assert "holds an earlier run" in error_line(capsys.readouterr().err)
    assert {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()} == stamps
    # overwrite: no validation in the new run, so there is no best.pt to test, rather than the old one
    assert run_cli(tiny_shards, tmp_path, "train.overwrite=true", "eval.val_every_epochs=5",
                   "eval.test_split=test", "eval.test_checkpoint=best") == 2
    assert "eval.test_checkpoint='best' but" in error_line(capsys.readouterr().err)
    assert not (checkpoints / "best.pt").exists() and (checkpoints / "final.pt").is_file()


def test_failed_start_leaves_no_run_folder(tiny_shards, tmp_path, capsys):
    import json
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    for shard in manifest["splits"]["training"]["shards"]:
        shard["sha256"] = "0" * 64  # what a changed shard looks like to the manifest
    (shards / "manifest.json").write_text(json.dumps(manifest))
    assert run_cli(shards, tmp_path / "runs") == 2
    assert "sha256 is" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs" / "r").exists()


def test_run_dir_that_is_a_file_is_one_line(tiny_shards, tmp_path, capsys):
    (tmp_path / "runs").write_text("")
    assert run_cli(tiny_shards, tmp_path / "runs") == 2
    assert "is a file" in error_line(capsys.readouterr().err)


def test_full_disk_keeps_what_was_saved_and_resume_finishes(tiny_shards, tmp_path, capsys, monkeypatch):
    from dias_dist.run import checkpoint

    real_save, calls = torch.save, []

    def filling_up(obj, target, *args, **kwargs):  # target: a path or the open temporary file
        calls.append(target)
        if len(calls) == 3:  # steps 1 and 2 are saved, the third save finds the disk full
            name = getattr(target, "name", target)
            if hasattr(target, "write"):
                target.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(name))
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", filling_up)
    assert run_cli(tiny_shards, tmp_path, "train.steps_per_epoch=4", "eval.val_every_epochs=5") == 2
    line = error_line(capsys.readouterr().err)
    assert "No space left on device; the last complete checkpoint" in line and ".last.pt.tmp" in line
    checkpoints = tmp_path / "r" / "checkpoints"
    assert step_of(checkpoints / "last.pt") == 2 and not list(checkpoints.glob(".*tmp*"))
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    (checkpoints / ".final.pt.tmp999").write_bytes(b"left by a crash")
    assert run_cli(tiny_shards, tmp_path, "train.steps_per_epoch=4", "eval.val_every_epochs=5",
                   "train.resume=auto") == 0
    assert step_of(checkpoints / "final.pt") == 4 and not list(checkpoints.glob(".*tmp*"))


def test_bad_batch_size_names_the_key(tiny_shards, tmp_path, capsys):
    assert run_cli(tiny_shards, tmp_path, "train.batch_size=-4") == 2
    assert "train.batch_size must be >= 1, got -4" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_resume_does_not_log_steps_twice_and_jsonl_agrees_with_mlflow(tiny_shards, tmp_path):
    """A run 'killed' after logging step 5 but checkpointing only step 4: the resumed run replays step 5
    without logging it again, in metrics.jsonl and in MLflow."""
    import json

    from mlflow import MlflowClient

    from dias_dist.run.history import read_records

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ("train.epochs=2", "train.steps_per_epoch=4", "eval.val_every_epochs=5", "track.enabled=true",
              f"track.tracking_uri={uri}")
    assert run_cli(tiny_shards, tmp_path, *common, "train.max_steps=4") == 0
    run = tmp_path / "r"
    run_id = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["mlflow_run_id"]
    with open(run / "metrics.jsonl", "a") as handle:  # what the killed run logged after its checkpoint
        handle.write(json.dumps({"kind": "train", "step": 5, "time": 0.0, "loss_total": 123.0}) + "\n")
    client = MlflowClient(tracking_uri=uri)
    client.log_metric(run_id, "loss_total", 123.0, step=5)
    assert run_cli(tiny_shards, tmp_path, *common, "train.max_steps=8", "train.resume=auto") == 0
    jsonl = {r["step"]: r["loss_total"] for r in read_records(run / "metrics.jsonl") if r["kind"] == "train"}
    points = client.get_metric_history(run_id, "loss_total")
    assert sorted(m.step for m in points) == list(range(1, 9)) == sorted(jsonl)  # each step once
    assert {m.step: m.value for m in points} == jsonl and jsonl[5] == 123.0
