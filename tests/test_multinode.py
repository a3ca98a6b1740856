"""The README's multi-node recipe, run on one machine: an `mlflow server` on loopback, the shards served
over HTTP (Python's http.server, as `python -m http.server -d shards`), two torchrun "nodes" (--nnodes=2,
one process each, c10d rendezvous on 127.0.0.1, a job id) training the tiny debug model with gloo,
reading ``data.shards=http://...`` and tracking to the server. Then the server's store folder is moved
and served again: its artifacts are proxied (``mlflow-artifacts:/``), so they follow the folder."""
from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from process_tree import run_nodes

pytestmark = pytest.mark.slow  # multi-process / cluster / browser / benchmark: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_mlflow_server(store: Path, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` as the README runs it (store = a folder holding mlflow.db and mlartifacts/)."""
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
           "--artifacts-destination", str(store / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=store.parent, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    _stop(proc)
    raise AssertionError(f"mlflow server not up after 120 s: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (its uvicorn worker too)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.timeout(420)
def test_two_torchrun_nodes_track_to_an_mlflow_server(tiny_shards, tmp_path):
    store = tmp_path / "mlflow-store"
    store.mkdir()
    port = _free_port()
    server = _start_mlflow_server(store, port, tmp_path / "server.log")
    server_uri = f"http://127.0.0.1:{port}"
    job = "multinode-test"
    shard_server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        SimpleHTTPRequestHandler, directory=str(tiny_shards.parent)))
    threading.Thread(target=shard_server.serve_forever, daemon=True).start()
    shards_url = f"http://127.0.0.1:{shard_server.server_address[1]}/{tiny_shards.name}"
    try:
        # on node 0 and node 1 (here both on 127.0.0.1): the same command
        node = [str(BIN / "torchrun"), "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
                f"--rdzv_endpoint=127.0.0.1:{_free_port()}", f"--rdzv_id={job}",
                str(ROOT / "launch" / "train.py"), "configs/debug.yaml", f"data.shards={shards_url}",
                f"train.run_dir={tmp_path / 'runs'}", "train.epochs=1", "train.steps_per_epoch=3",
                "eval.test_split=test", "track.enabled=true", f"track.tracking_uri={server_uri}",
                "track.experiment=multinode"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        env.pop("MLFLOW_TRACKING_URI", None)
        run_nodes(node, env, cwd=ROOT)

        from mlflow import MlflowClient

        client = MlflowClient(server_uri)
        experiment = client.get_experiment_by_name("multinode")
        assert experiment.artifact_location.startswith("mlflow-artifacts:/")  # proxied: relative to the server
        (run,) = client.search_runs([experiment.experiment_id])  # rank 0 alone tracks
        assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
        assert run.info.run_name == f"vss_net-supervised-{job}"  # the rendezvous id names the job's run
        assert run.data.tags["mlflow.source.git.commit"] and run.data.tags["mlflow.user"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_total")] == [1, 2, 3]
        assert 0.0 <= run.data.metrics["test_dsc"] <= 1.0
        assert run.data.params["data.shards"] == shards_url
        run_id = run.info.run_id
    finally:
        _stop(server)
        shard_server.shutdown()

    # the whole store folder moves (another disk, another machine); a server started there serves it
    moved = tmp_path / "moved" / "store"
    moved.parent.mkdir()
    shutil.move(str(store), str(moved))
    port = _free_port()
    server = _start_mlflow_server(moved, port, tmp_path / "server2.log")
    try:
        from mlflow import MlflowClient

        client = MlflowClient(f"http://127.0.0.1:{port}")
        config = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "download")))
        assert "vss_net" in config.read_text()
        assert client.get_run(run_id).data.params["model.name"] == "vss_net"
    finally:
        _stop(server)
