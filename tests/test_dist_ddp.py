"""Two gloo processes under torchrun: identical initial and final parameters on both ranks,
different training patches per rank, and one evaluation of every test image."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from process_tree import run_nodes

pytestmark = pytest.mark.slow  # multi-process / cluster / browser / benchmark: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

DRIVER = r'''
import json, sys
import torch
from dias_dist import dist, engine, trainer
from dias_dist.config import load_config
from dias_dist.data import loader

captured = {}
build_engine, train_stream = trainer.build_engine, loader.train_stream

def capture_engine(model, *args, **kwargs):
    captured["initial"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    captured["engine"] = build_engine(model, *args, **kwargs)
    return captured["engine"]

def capture_stream(*args, **kwargs):
    stream = train_stream(*args, **kwargs)
    first = next(stream)
    captured.setdefault("first_target_sum", int(first["target"].sum()))
    def chained():
        yield first
        yield from stream
    return chained()

trainer.build_engine, loader.train_stream = capture_engine, capture_stream
cfg = load_config(sys.argv[1], sys.argv[3:])
try:
    result = trainer.run(cfg)
    to_rank0 = dist.gather_object({"rank": dist.rank()}, dst=0)  # the group run() joined
    final = captured["engine"].unwrap().state_dict()
    gathered = dist.all_gather_object({"initial": captured["initial"], "final": final,
                                       "target_sum": captured["first_target_sum"], "world": dist.world_size(),
                                       "to_rank0": to_rank0})
    if dist.is_main():
        same = lambda key: all(torch.equal(gathered[0][key][n], g[key][n]) for g in gathered[1:] for n in final)
        moved = any(not torch.equal(gathered[0]["initial"][n], final[n]) for n in final)
        json.dump({"world": gathered[0]["world"], "initial_equal": same("initial"), "final_equal": same("final"),
                   "moved": moved, "target_sums": [g["target_sum"] for g in gathered],
                   "test_dsc": result["test_dsc"], "gather_object": [g["to_rank0"] for g in gathered]},
                  open(sys.argv[2], "w"))
finally:
    dist.teardown()
'''


def test_two_gloo_ranks_keep_identical_parameters(tiny_shards, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "result.json"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(driver), str(ROOT / "configs" / "debug.yaml"),
           str(out), f"data.shards={tiny_shards}", f"train.run_dir={tmp_path}", "train.run_name=ddp",
           "train.max_steps=3", "eval.val_every_epochs=1000", "eval.test_checkpoint=final"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2
    assert result["initial_equal"] and result["final_equal"] and result["moved"]
    assert result["target_sums"][0] != result["target_sums"][1]  # seed + rank: different patches per rank
    assert 0.0 <= result["test_dsc"] <= 1.0
    assert result["gather_object"] == [[{"rank": 0}, {"rank": 1}], None]  # the list on rank 0 only
    metrics = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["kind"] == "train"] == [1, 2, 3]  # rank 0 writes, once per step
    rows = (tmp_path / "ddp" / "eval" / "test" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # header + each of the 2 test images exactly once


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_meet_through_c10d_rendezvous(tiny_shards, tmp_path):
    """Two torchrun launchers, one process each, as two 'nodes' on localhost (--nnodes=2, c10d).

    Each process has LOCAL_RANK 0, so this catches any code that takes the local rank for the
    global one: both would believe they are rank 0 (two metric writers, two MLflow runs,
    duplicated evaluation). MLflow is on: rank 0 alone logs.
    """
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "result.json"
    rdzv = [f"--rdzv_endpoint=127.0.0.1:{_free_port()}", "--rdzv_backend=c10d", f"--rdzv_id=nodes-{os.getpid()}"]
    args = [str(driver), str(ROOT / "configs" / "debug.yaml"), str(out), f"data.shards={tiny_shards}",
            f"train.run_dir={tmp_path}", "train.run_name=nodes", "train.max_steps=3", "eval.val_every_epochs=1000",
            "eval.test_checkpoint=final", "track.enabled=true", f"track.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run_nodes([str(TORCHRUN), "--nnodes=2", "--nproc_per_node=1", *rdzv, *args], env)
    result = json.loads(out.read_text())
    assert result["world"] == 2
    assert result["initial_equal"] and result["final_equal"] and result["moved"]
    assert result["target_sums"][0] != result["target_sums"][1]
    metrics = [json.loads(line) for line in (tmp_path / "nodes" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["kind"] == "train"] == [1, 2, 3]  # exactly one writer over both nodes
    rows = (tmp_path / "nodes" / "eval" / "test" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, "only rank 0 may create an MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_total")] == [1, 2, 3]
    assert 0.0 <= run.data.metrics["test_dsc"] <= 1.0
