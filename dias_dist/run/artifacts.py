"""A trained model's checkpoint, from a file or an MLflow model URI: what ``dias evaluate`` and
``dias predict`` (and the MLflow model's packaging) read.

``load_payload(spec)`` takes a checkpoint path (``best.pt``, ``final.pt``, DDP or DeepSpeed, any
world size) or an MLflow model URI (``runs:/<id>/model``, ``models:/<name>/<version>``,
``mlflow-artifacts:/...``) and returns the checkpoint's payload (``dias_dist.run.checkpoint``) with a
description of where it came from. An MLflow model carries the checkpoint as
``artifacts/checkpoint.pt`` (``CHECKPOINT_ARTIFACT``, written by ``dias_dist.predict.mlflow_model``).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dias_dist.run import checkpoint
from dias_dist.run.track import relocate_store

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")
CHECKPOINT_ARTIFACT = "checkpoint.pt"  # the weights inside an MLflow model's artifacts/ folder


def is_mlflow_uri(spec: str) -> bool:
    return str(spec).startswith(MLFLOW_SCHEMES)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the trainer's default store ``runs/mlflow.db`` (relative to
    the current folder, as ``train.run_dir`` is)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('runs/mlflow.db').resolve()}"


@contextmanager
def mlflow_store(uri: str):
    """MLflow's fluent tracking and registry URIs set to ``uri`` inside the block and put back after it,
    with the environment variables ``set_tracking_uri``/``set_registry_uri`` export: otherwise every
    later run in this process would log to the store set here."""
    import mlflow  # heavy: imported by the commands that read or write an MLflow model only

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    env_before = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def download_checkpoint(uri: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """The checkpoint of MLflow model ``uri`` (``runs:/<id>/model``, ``models:/<name>/<version>``)
    downloaded into ``dst``; ValueError naming the URI when it cannot be found."""
    import mlflow  # heavy: imported by the commands that read an MLflow model only

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one model, not a bar per file
    store = tracking_uri or default_tracking_uri()
    relocate_store(store)  # a store folder moved since the model was logged
    with mlflow_store(store):  # models:/ URIs resolve through the registry, which follows the fluent URIs
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        except Exception as err:  # noqa: BLE001 — MLflow raises its own exception types
            raise ValueError(f"MLflow model {uri}: cannot download it from {store} "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:300]})") from None
    found = sorted(local.rglob(CHECKPOINT_ARTIFACT))
    if not found:
        raise ValueError(f"MLflow model {uri} holds no {CHECKPOINT_ARTIFACT}; was it logged by dias_dist training?")
    return found[0]


def load_payload(spec: str, tracking_uri: str | None = None) -> tuple[dict, str]:
    """(checkpoint payload, description) of a checkpoint path or an MLflow model URI."""
    if is_mlflow_uri(spec):
        with tempfile.TemporaryDirectory(prefix="dias-model-") as tmp:
            return checkpoint.load(download_checkpoint(spec, tmp, tracking_uri)), spec
    return checkpoint.load(spec), str(spec)
