"""The trained model as an MLflow model, and the checkpoints as run artifacts.

``log_trained_model(cfg, run_dir, tracker)`` is called once by rank 0 at the end of training. It
logs ``checkpoints/best.pt`` and ``final.pt`` under the run's ``checkpoints/`` artifacts (so a
remote tracking server holds the weights) and the selected model (``eval.test_checkpoint``, the one
the test split was evaluated with; ``final`` when there is no test split) as the run's ``model``
artifact: a ``pyfunc`` model whose ``predict`` takes one (T, H, W) series (uint8, uint16, float32 or
float64; ``pyfunc_model.INPUT_DTYPES``), or a list of them,
and returns the vessel probability map(s) float32 (H, W). It carries the weights and the resolved
config (``artifacts/checkpoint.pt``, ``artifacts/config.yaml``), a signature (the output, with ``tile`` /
``stride`` / ``batch_size`` as optional parameters; the input dtypes and shape in the model's metadata
``input``/``input_dtypes``/``input_shape``, since an MLflow tensor schema admits one dtype only) and a
uint8 input example. With
``track.register_as=NAME`` it is also registered in the model registry.

Afterwards, in any process that has dias_dist installed and reaches the store::

    model = mlflow.pyfunc.load_model("runs:/<run_id>/model")
    prob_HW = model.predict(frames_THW)          # float32 (H, W)

Failures warn and leave training's result untouched, like every other tracking call.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from dias_dist.run import checkpoint
from dias_dist.run.artifacts import CHECKPOINT_ARTIFACT

MODEL_ARTIFACT = "model"


def save_pyfunc(weights: str | Path, config_yaml: str | Path, out_dir: str | Path) -> Path:
    """Write the pyfunc model folder for checkpoint ``weights`` into ``out_dir`` (must not exist);
    only the model weights, step and config of the checkpoint are kept (no optimizer state)."""
    out_dir = Path(out_dir)
    payload = checkpoint.load(weights)
    slim = {key: payload[key] for key in ("model", "config", "step", "run_name") if key in payload}
    with tempfile.TemporaryDirectory(prefix="dias-pyfunc-") as tmp:
        slim_path = checkpoint.save(Path(tmp) / CHECKPOINT_ARTIFACT, slim)
        import mlflow.pyfunc
        import torch

        import dias_dist
        from dias_dist.predict.pyfunc_model import input_example, metadata, signature

        mlflow.pyfunc.save_model(
            path=str(out_dir), python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={"checkpoint": str(slim_path), "config": str(config_yaml)},
            signature=signature(), input_example=input_example(),
            pip_requirements=[f"dias_dist=={dias_dist.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                              f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"],
            metadata={"model": payload["config"]["model"]["name"], "method": payload["config"]["method"]["name"],
                      "step": int(payload.get("step", -1)), **metadata()})
    return out_dir


def log_trained_model(cfg, run_dir: str | Path, tracker) -> str | None:
    """Rank 0, end of training: checkpoints as run artifacts, the selected model as the run's
    pyfunc ``model``, registered as ``cfg.track.register_as`` when set. Returns the model URI
    (``runs:/<id>/model``), or None when tracking is off (or was switched off by a failure) or a
    step failed (with a warning)."""
    # the tracker's own client: the store this run writes to, and None once tracking is off
    client = getattr(tracker, "client", None)
    run_id = getattr(tracker, "run_id", "")
    if client is None or not run_id:
        return None
    run_dir = Path(run_dir)
    selected = cfg.eval.test_checkpoint if cfg.eval.test_split else "final"
    weights = run_dir / "checkpoints" / f"{selected}.pt"
    if not weights.is_file():
        weights = run_dir / "checkpoints" / "final.pt"
    uri = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    try:
        for name in ("best.pt", "final.pt"):
            if (run_dir / "checkpoints" / name).is_file():
                client.log_artifact(run_id, str(run_dir / "checkpoints" / name), "checkpoints")
        with tempfile.TemporaryDirectory(prefix="dias-model-") as tmp:
            save_pyfunc(weights, run_dir / "config.yaml", Path(tmp) / MODEL_ARTIFACT)
            client.log_artifacts(run_id, str(Path(tmp) / MODEL_ARTIFACT), MODEL_ARTIFACT)
        if cfg.track.register_as:
            register(uri, cfg.track.register_as, client.tracking_uri, run_id)
    except Exception as err:  # noqa: BLE001 — like every tracking call: warn, never fail the finished training
        warnings.warn(f"MLflow model logging failed ({type(err).__name__}: {str(err)[:300]}); the checkpoints "
                      f"in {run_dir / 'checkpoints'} are complete", RuntimeWarning, stacklevel=2)
        return None
    return uri


def register(uri: str, name: str, store: str, run_id: str) -> str:
    """Register model ``uri`` of run ``run_id`` as a new version of ``name``; returns the version."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 — MLflow raises RestException / MlflowException for "not found"
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"
    version = client.create_model_version(name, source, run_id=run_id)
    return str(version.version)
