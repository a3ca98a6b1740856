"""The trained model as an MLflow model, and the checkpoints as run artifacts.

``log_trained_model(cfg, run_dir, tracker)`` is called once by rank 0 at the end of training. It
logs ``checkpoints/best.pt`` and ``final.pt`` under the run's ``checkpoints/`` artifacts (so a
remote tracking server holds the weights) and the selected model (``eval.test_checkpoint``, the one
the test split was evaluated with; ``final`` when there is no test split) as an MLflow 3 LoggedModel
named ``model``, linked to the run (``source_run_id``, the run's outputs; listed under "Logged models";
``runs:/<run_id>/model`` and ``models:/<model_id>`` both find it): a ``pyfunc`` model whose ``predict``
takes one (T, H, W) series (uint8, uint16, float32 or float64, ``pyfunc_model.INPUT_DTYPES``; integers in 0..65535 as JSON gives them), or a list of
them, and returns the vessel probability map(s) float32 (H, W). It carries the weights and the resolved
config (``artifacts/checkpoint.pt``, ``artifacts/config.yaml``), a signature (the output, with ``tile`` /
``stride`` / ``batch_size`` as optional parameters; the input dtypes and shape in the model's metadata
``input``/``input_dtypes``/``input_shape``, since an MLflow tensor schema admits one dtype only), a uint8
input example, the project's code (``code/dias_dist``: ``code_paths``, put on
``sys.path`` by MLflow when the model loads) and pins that resolve from the public index
(``requirements()``: the packages the prediction path imports, at the versions that trained it; never
``dias_dist`` itself, which no index has). With ``track.register_as=NAME`` it is also registered.

Afterwards, in any process that has MLflow and those packages (dias_dist not needed) and reaches the store::

    model = mlflow.pyfunc.load_model("runs:/<run_id>/model")
    prob_HW = model.predict(frames_THW)          # float32 (H, W)

or ``mlflow models serve -m runs:/<run_id>/model --env-manager local`` (or the default virtualenv manager,
which installs the pins). Failures warn and leave training's result untouched, like every other tracking call.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from dias_dist.run import checkpoint
from dias_dist.run.artifacts import CHECKPOINT_ARTIFACT, mlflow_store

MODEL_ARTIFACT = "model"
# Distributions the prediction path imports (dias_dist.predict.pyfunc_model and what it loads; checked by
# tests/test_mlflow_model_env.py), pinned at their installed versions: all on the public index.
PYFUNC_REQUIREMENTS = ("mlflow", "torch", "numpy", "pyyaml", "scikit-image", "tqdm", "psutil")


def requirements() -> list[str]:
    """``name==version`` of each ``PYFUNC_REQUIREMENTS`` (a local version suffix such as ``+cpu`` dropped:
    the index's wheel of that release)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in PYFUNC_REQUIREMENTS]


def package_dir() -> Path:
    """The ``dias_dist`` package folder, carried by the model as ``code_paths``."""
    return Path(__file__).resolve().parents[1]


@contextmanager
def _slim_model(weights: str | Path, config_yaml: str | Path):
    """The keyword arguments of ``save_model`` / ``log_model`` for checkpoint ``weights``; only the model
    weights, step and config of the checkpoint are kept (no optimizer state)."""
    payload = checkpoint.load(weights)
    slim = {key: payload[key] for key in ("model", "config", "step", "run_name") if key in payload}
    with tempfile.TemporaryDirectory(prefix="dias-pyfunc-") as tmp:
        slim_path = checkpoint.save(Path(tmp) / CHECKPOINT_ARTIFACT, slim)
        from dias_dist.predict.pyfunc_model import input_example, metadata, signature

        yield dict(python_model=str(Path(__file__).with_name("pyfunc_entry.py")), code_paths=[str(package_dir())],
                   artifacts={"checkpoint": str(slim_path), "config": str(config_yaml)},
                   signature=signature(), input_example=input_example(), pip_requirements=requirements(),
                   metadata={"model": payload["config"]["model"]["name"],
                             "method": payload["config"]["method"]["name"], "step": int(payload.get("step", -1)),
                             **metadata()})


def save_pyfunc(weights: str | Path, config_yaml: str | Path, out_dir: str | Path) -> Path:
    """Write the pyfunc model folder for checkpoint ``weights`` into ``out_dir`` (must not exist)."""
    import mlflow.pyfunc

    with _slim_model(weights, config_yaml) as kwargs:
        mlflow.pyfunc.save_model(path=str(out_dir), **kwargs)
    return Path(out_dir)


def log_pyfunc(weights: str | Path, config_yaml: str | Path, store: str, run_id: str, register_as: str = ""):
    """Log checkpoint ``weights`` as the LoggedModel ``model`` of run ``run_id`` in ``store`` (registered as
    ``register_as`` when given); returns MLflow's ``ModelInfo`` (``model_id``, ``model_uri``)."""
    import mlflow.pyfunc
    from mlflow import MlflowClient
    from mlflow.models import Model

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    run = client.get_run(run_id)
    with _slim_model(weights, config_yaml) as kwargs, mlflow_store(store):
        # created here in the run's experiment (MLflow's own log_model would put it in the active or the
        # default experiment); Model.log then links it to the run, uploads the files and finalises it
        model = client.create_logged_model(run.info.experiment_id, name=MODEL_ARTIFACT, source_run_id=run_id,
                                           params=dict(run.data.params), tags={"dias.model": kwargs["metadata"]["model"]})
        return Model.log(artifact_path=None, name=MODEL_ARTIFACT, flavor=mlflow.pyfunc, run_id=run_id,
                         model_id=model.model_id, registered_model_name=register_as or None, **kwargs)


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
        log_pyfunc(weights, run_dir / "config.yaml", client.tracking_uri, run_id, cfg.track.register_as)
    except Exception as err:  # noqa: BLE001 — like every tracking call: warn, never fail the finished training
        warnings.warn(f"MLflow model logging failed ({type(err).__name__}: {str(err)[:300]}); the checkpoints "
                      f"in {run_dir / 'checkpoints'} are complete", RuntimeWarning, stacklevel=2)
        return None
    return uri
