"""The logged model installs anywhere: an MLflow 3 LoggedModel linked to its run, carrying the project's code
(``code_paths``) and pins from the public index; a fresh virtual environment that has MLflow but not
dias_dist loads it and predicts a series, and ``mlflow models serve --env-manager local`` answers a request.

The fresh environment: ``python -m venv --without-pip`` (its own interpreter prefix and site folder) whose
only link to the installed packages is a ``.pth`` line naming the main environment's site-packages folder:
those packages import, but the ``.pth`` files inside that folder are not run, so dias_dist's editable-install
finder is not installed and ``import dias_dist`` fails (asserted) until MLflow puts the model's ``code/`` on
``sys.path``. (Installing torch from the index into a new environment is not possible offline.)"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dias_dist.config import load_config
from dias_dist.data import dias

ROOT = Path(__file__).resolve().parents[1]
mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def logged(tiny_shards, tmp_path_factory):
    """(store, run_id, frames file float32 (T, H, W) / 255, the checkpoint's probability map) of a tiny run."""
    from dias_dist import trainer
    from dias_dist.predict.model import load_trained_model, series_probability

    tmp = tmp_path_factory.mktemp("logged")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = load_config(ROOT / "configs" / "debug.yaml", [
        f"data.shards={tiny_shards}", f"train.run_dir={tmp / 'runs'}", "train.run_name=m", "train.max_steps=2",
        "eval.val_every_epochs=1000", "model.params.width=2", "track.enabled=true", f"track.tracking_uri={store}"])
    run_id = trainer.run(cfg)["run_id"]
    frames = dias.read_sequence(dias.list_sequences(tiny_shards.parent / "src", "test")[0]).frames / 255.0
    reference = series_probability(load_trained_model(str(tmp / "runs" / "m" / "checkpoints" / "final.pt")), frames)
    np.save(tmp / "frames.npy", frames.astype(np.float32))
    shutil.rmtree(tmp / "runs")  # the model must not need the run folder
    return store, run_id, tmp / "frames.npy", reference


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    """A new virtual environment with MLflow, torch... importable but not dias_dist; returns its python."""
    env = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    site_dir = next(env.glob("lib/python*/site-packages"))
    shared = [p for p in site.getsitepackages() if Path(p, "mlflow").is_dir()]
    (site_dir / "shared_packages.pth").write_text("\n".join(shared) + "\n")  # paths only: their .pth files do not run
    python = env / "bin" / "python"
    # `mlflow models serve --env-manager local` starts `uvicorn` from PATH: this environment's own
    (env / "bin" / "uvicorn").write_text(f"#!/bin/sh\nexec {python} -m uvicorn \"$@\"\n")
    (env / "bin" / "uvicorn").chmod(0o755)
    return python


def _clean_env(store: str, fresh_python: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(MLFLOW_TRACKING_URI=store, PATH=f"{fresh_python.parent}:{env.get('PATH', '')}",
               MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    return env


@pytest.mark.slow
def test_logged_model_is_a_logged_model_with_code_and_public_pins(logged):
    from mlflow import MlflowClient

    from dias_dist.predict.mlflow_model import PYFUNC_REQUIREMENTS

    store, run_id, _, _ = logged
    client = MlflowClient(store)
    run = client.get_run(run_id)
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [(m.name, m.source_run_id, str(m.status)) for m in models] == [("model", run_id, "READY")]
    assert [o.model_id for o in run.outputs.model_outputs] == [models[0].model_id]  # linked to the run
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=models[0].artifact_location))
    requirements = (local / "requirements.txt").read_text().split()
    names = [re.split(r"==", r)[0] for r in requirements]
    assert names == list(PYFUNC_REQUIREMENTS) and "dias_dist" not in (local / "requirements.txt").read_text()
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==\d+(\.\d+)*([a-z]+\d+)?", r) for r in requirements), requirements
    declared = (ROOT / "pyproject.toml").read_text()
    assert all(f'"{name}>=' in declared for name in names)  # the project's own (public) dependencies
    assert (local / "code" / "dias_dist" / "predict" / "pyfunc_model.py").is_file()
    assert (local / "code" / "dias_dist" / "configs" / "debug.yaml").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_fresh_environment_without_dias_dist_loads_the_model_and_predicts(logged, fresh_env, tmp_path):
    store, run_id, frames, reference = logged
    code = """
import importlib.util, json, sys
assert importlib.util.find_spec("dias_dist") is None, "dias_dist importable before the model loads"
import mlflow, numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
import dias_dist
np.save(sys.argv[3], model.predict(np.load(sys.argv[2])))
from importlib.metadata import packages_distributions
dists = packages_distributions()
used = sorted({d for m in list(sys.modules) for d in dists.get(m.split(".")[0], [])})
print(json.dumps({"dias_dist": dias_dist.__file__, "prefix": sys.prefix, "used": used}))
"""
    result = subprocess.run([str(fresh_env), "-c", code, f"runs:/{run_id}/model", str(frames), str(tmp_path / "p.npy")],
                            cwd=tmp_path, env=_clean_env(store, fresh_env), capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(info["prefix"]) == fresh_env.parent.parent
    assert "/code/dias_dist/" in info["dias_dist"] and str(ROOT) not in info["dias_dist"]  # the model's own copy
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), reference, atol=1e-3)  # float16 rounding as in shards

    # every project dependency the prediction imported is pinned in the model
    from dias_dist.predict.mlflow_model import PYFUNC_REQUIREMENTS

    declared = re.findall(r'"([A-Za-z0-9_.-]+)>=', (ROOT / "pyproject.toml").read_text())
    norm = lambda name: name.lower().replace("_", "-")  # noqa: E731
    used = {norm(d) for d in info["used"]} & {norm(d) for d in declared}
    assert used <= {norm(d) for d in PYFUNC_REQUIREMENTS}, used


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mlflow_models_serve_with_the_local_environment_manager_answers(logged, fresh_env, tmp_path):
    store, run_id, frames, reference = logged
    port = _free_port()
    server = subprocess.Popen([str(fresh_env), "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/model",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                              cwd=tmp_path, env=_clean_env(store, fresh_env), stdout=open(tmp_path / "serve.log", "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 200
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not answer /ping: " + (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        body = json.dumps({"inputs": np.load(frames).tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            predictions = np.asarray(json.loads(answer.read())["predictions"], dtype=np.float32)
        np.testing.assert_allclose(predictions, reference, atol=1e-3)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker (our own session)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
