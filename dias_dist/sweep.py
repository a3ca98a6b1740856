"""Ray Tune sweeps over dias_dist runs: SSCR λ1 × λ2 grids and RPST round schedules.

Each trial is a full training run through the package's own ``dias_dist.trainer.run`` (RPST trials
through ``dias_dist.semi.rpst.run_rpst``), imported, never copied. The driver opens one MLflow parent
run per sweep; every trial's run is nested under it (``track.parent_run_id``), and the sweep ends with
a summary table and plots logged to the parent run.

A trial's search space is a dict of dotted config keys -> values (``{"method.params.lambda1": 0.5}``),
applied as overrides on the base YAML. All paths are made absolute in the driver, because Ray runs
trials in their own working directories; a ``--storage`` URI (``s3://``, ``gs://``) is handed to Ray
unchanged (``storage_location``).

Checkpoints: a training trial reports, with each validation, a Tune checkpoint holding the run's
``last.pt`` of that step (and ``trial.json``: which trial, which step). A trial that Tune restarts
(``Tuner.restore`` after an error, or a population-based scheduler cloning a better trial) gets that
checkpoint back and continues from it in its own run folder (``restore_trial_checkpoint``), so
trial-level resume works where the run folders are gone (another node, remote ``--storage``) and
PBT exploits the other trial's weights, optimizer and schedule state.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dias_dist.config import load_config

METRIC = "val_dsc"
COORDINATOR_CPU = 0.01  # the Tune function that only drives a TorchTrainer; its workers get the rest
CHECKPOINT_FILE = "last.pt"  # inside a trial's Tune checkpoint: the run's last.pt at the reported step
TRIAL_FILE = "trial.json"  # inside a trial's Tune checkpoint: {"trial": name, "step": step, "metrics": {...}}
HOLDER_EXIT_WAIT_S = 120.0  # a restarted trial waits this long for its stopped instance to let go of the run folder
SCHEDULERS = ("fifo", "asha", "pbt")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# ----------------------------------------------------------------------------------------------
# trial functions (run inside Ray workers)


def _trial_overrides(spec: dict, params: dict, trial_name: str) -> list[str]:
    # a trial restored after an error continues its own run folder (the user's overrides may say otherwise)
    overrides = ["train.resume=auto", *spec["overrides"]]
    overrides += [f"{key}={json.dumps(value)}" for key, value in sorted(params.items())]
    overrides += [
        f"track.parent_run_id={spec['parent_run_id']}",
        f"track.tracking_uri={spec['tracking_uri']}",
        f"track.experiment={spec['experiment']}",
        f"train.run_dir={spec['run_dir']}",
        f"train.run_name={trial_name}",
        "train.progress=false",
    ]
    return overrides


def _trial_name() -> str:
    from ray import tune

    ctx = tune.get_context()
    return f"{ctx.get_experiment_name()}-{ctx.get_trial_id()}"


def train_trial(params: dict, spec: dict) -> None:
    """One training run; reports each validation to Tune with a checkpoint of the run (used for the
    SSCR λ sweep and any grid); continues from the checkpoint Tune gives a restarted trial."""
    from ray import tune

    from dias_dist.trainer import run

    name = _trial_name()
    cfg = load_config(spec["config"], _trial_overrides(spec, params, name))
    info = restore_trial_checkpoint(tune.get_checkpoint(), spec, name, params)
    reporter = LastValidation(_checkpoint_reporter(name))
    reporter.last = dict((info or {}).get("metrics", {}))  # a restart that ends before validating reports these
    final = run(cfg, report=reporter)
    reporter.final(final)


def _checkpoint_reporter(trial_name: str) -> Callable[..., None]:
    """``report(metrics, checkpoint=None)``: ``tune.report``, with a Tune checkpoint of ``last.pt``
    (hard-linked into a temporary folder with ``trial.json``: trial, step and the reported metrics, which a
    trial restarted from it reports again if it ends before its next validation; Tune copies it to its storage before
    ``tune.report`` returns) when the trainer wrote one at this step (only the process that wrote it)."""
    from ray import tune

    def report(metrics: dict, checkpoint: str | None = None) -> None:
        if not checkpoint or not Path(checkpoint).is_file():
            tune.report(metrics)
            return
        # next to last.pt (the same file system: a hard link, no copy until Tune uploads it)
        with tempfile.TemporaryDirectory(prefix=".tune-", dir=Path(checkpoint).parent) as tmp:
            target = Path(tmp) / CHECKPOINT_FILE
            try:
                os.link(checkpoint, target)  # last.pt is replaced by rename later: the link keeps this state
            except OSError:
                shutil.copy2(checkpoint, target)
            info = {"trial": trial_name, "step": int(metrics.get("step", -1)), "metrics": metrics}
            (Path(tmp) / TRIAL_FILE).write_text(json.dumps(info))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    return report


def restore_trial_checkpoint(tune_checkpoint, spec: dict, trial_name: str, params: dict) -> dict | None:
    """Put the Tune checkpoint a restarted trial was given where ``train.resume=auto`` finds it.

    Nothing to do for a first start (``tune_checkpoint`` None) or when the checkpoint is this trial's own
    and its run folder still holds ``last.pt`` (the same state or a later one). Otherwise (the run folder
    is gone: another node, a wiped disk; or a population-based scheduler cloned another trial) the
    checkpoint's ``last.pt`` becomes this trial's ``last.pt``, keeping this trial's run name and MLflow
    run (a clone does not log into the cloned trial's run); the MLflow run gets the tag
    ``tune.restored_from`` (``<trial>@<step>``) and the trial's current values as metrics ``tune.<key>``
    at that step (a PBT schedule is visible in MLflow). Returns the checkpoint's ``trial.json`` or None.
    """
    from dias_dist.run import checkpoint, folder as run_folder

    if tune_checkpoint is None:
        return None
    own = Path(spec["run_dir"]) / trial_name / "checkpoints" / "last.pt"
    # the stopped instance of this trial (PBT, restore) may still be exiting and writing last.pt; if it
    # still holds the folder after the wait, the run's own claim reports the holder
    run_folder.wait_free(own.parent.parent, HOLDER_EXIT_WAIT_S)
    with tune_checkpoint.as_directory() as folder:
        info_file = Path(folder) / TRIAL_FILE
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        mine = info.get("trial") == trial_name
        if mine and own.is_file():
            return info
        if not (Path(folder) / CHECKPOINT_FILE).is_file():
            return None  # not a checkpoint of this module (nothing to continue from)
        payload = checkpoint.load(Path(folder) / CHECKPOINT_FILE)
    run_id = payload.get("mlflow_run_id", "") if mine else _started_run_id(own.parent.parent)
    payload.update(run_name=trial_name, mlflow_run_id=run_id)
    checkpoint.save(own, payload)
    step = int(payload.get("step", 0))
    print(f"[tune] {trial_name} continues from {info.get('trial', '?')} at step {step}")
    if run_id and spec.get("tracking_uri"):
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Metric, RunTag

            client = MlflowClient(spec["tracking_uri"])
            now = int(time.time() * 1000)
            values = [Metric(f"tune.{k}", float(v), now, step) for k, v in sorted(params.items())
                      if isinstance(v, (int, float)) and not isinstance(v, bool)]
            client.log_batch(run_id, metrics=values,
                             tags=[RunTag("tune.restored_from", f"{info.get('trial', '?')}@{step}")])
        except Exception as err:  # noqa: BLE001 - tracking must not stop the trial
            warnings.warn(f"MLflow: could not record the restore of {trial_name} ({err})", RuntimeWarning)
    return info


def _started_run_id(run_folder: Path) -> str:
    """The MLflow run of the trial's own run folder: ``start.json`` (``elastic.record_start``, written by every
    run before its first step, so before any ``last.pt`` of it); "" when the folder has none (never started,
    or gone)."""
    from dias_dist.run.elastic import read_start

    return str((read_start(run_folder) or {}).get("mlflow_run_id") or "")


def rpst_trial(params: dict, spec: dict) -> None:
    """One RPST job (teacher + rounds) for one labelled-set size; reports after the teacher and each round."""
    from ray import tune

    from dias_dist.semi.rpst import run_rpst

    cfg = load_config(spec["config"], _trial_overrides(spec, params, _trial_name()))
    run_rpst(cfg, report=tune.report)


def torch_trainer_trial(params: dict, spec: dict) -> None:
    """Multi-GPU trial: the same ``run`` inside Ray Train's TorchTrainer (``dist.init`` reuses its group).

    Ray Train keeps a worker's reports for the trial; they are forwarded to Tune once the training
    finishes (so schedulers see them only at the end of such a trial).
    """
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers = spec["workers_per_trial"]
    per_worker = {"CPU": max(spec["cpus_per_trial"] - COORDINATOR_CPU, 0.01) / workers}
    if spec["gpus_per_trial"] > 0:
        per_worker["GPU"] = spec["gpus_per_trial"] / workers
    trainer = TorchTrainer(
        _torch_trainer_loop,
        train_loop_config={"spec": spec, "params": params, "name": _trial_name()},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=spec["gpus_per_trial"] > 0,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(storage_path=spec["storage_path"], name=_trial_name()),
    )
    result = trainer.fit()
    history = result.metrics_dataframe
    rows = history.to_dict("records") if history is not None else [result.metrics or {}]
    for row in rows:
        tune.report(_numeric(row))


def _torch_trainer_loop(config: dict) -> None:
    """Runs on every Ray Train worker; rank 0 attaches a small checkpoint so Ray keeps the metrics."""
    import tempfile

    import ray.train

    from dias_dist.trainer import run

    def report(metrics: dict, checkpoint: str | None = None) -> None:  # forwarded to Tune at the end only
        metrics = _numeric(metrics)
        if ray.train.get_context().get_world_rank() != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "metrics.json").write_text(json.dumps(metrics))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    cfg = load_config(config["spec"]["config"], _trial_overrides(config["spec"], config["params"], config["name"]))
    reporter = LastValidation(report)
    reporter.final(run(cfg, report=reporter))


class LastValidation:
    """Forwards each validation report and remembers it, so that the final report (test metrics) also
    carries the last validation metrics: schedulers such as ASHA require their metric in every result.

    ``report(metrics)`` gets the numeric metrics; where the trainer names the ``last.pt`` it wrote at
    that step (``"checkpoint"``; the final report: the run's ``last.pt``), ``report(metrics, checkpoint=path)``.
    """

    def __init__(self, report: Callable[..., None]):
        self.report, self.last = report, {}

    def _send(self, metrics: dict, checkpoint: str | None) -> None:
        if checkpoint:
            self.report(metrics, checkpoint=checkpoint)
        else:
            self.report(metrics)

    def __call__(self, metrics: dict) -> None:
        self.last = _numeric(metrics)
        self._send(self.last, metrics.get("checkpoint"))

    def final(self, metrics: dict) -> None:
        last = Path(str(metrics.get("run_dir", ""))) / "checkpoints" / "last.pt" if metrics.get("run_dir") else None
        self._send({**self.last, **_numeric(metrics), "done": 1.0}, str(last) if last and last.is_file() else None)


def _numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


# ----------------------------------------------------------------------------------------------
# stoppers


class NoImprovementStopper:
    """Stop a trial as soon as one of its reports does not improve ``metric`` over its best so far.

    Used for RPST: a trial reports once after the teacher and once after every round; a round that
    no longer improves validation DSC ends the trial (later rounds would not pay off).
    """

    def __init__(self, metric: str = METRIC, min_delta: float = 0.0):
        self.metric, self.min_delta = metric, min_delta
        self.best: dict[str, float] = {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        value = result.get(self.metric)
        if value is None:
            return False
        best = self.best.get(trial_id)
        self.best[trial_id] = value if best is None else max(best, value)
        return best is not None and value <= best + self.min_delta

    def stop_all(self) -> bool:
        return False


# ----------------------------------------------------------------------------------------------
# driver


@dataclass
class SweepSpec:
    """What a sweep runs (the trials get a plain, picklable dict built from it in ``run_sweep``).

    Re-running a sweep with the same ``name`` (and storage) always resumes from Tune's experiment state.
    """

    kind: str  # "train" | "rpst"
    config: str
    param_space: dict  # dotted key -> list of values (grid) or ray.tune sample domain
    overrides: list = field(default_factory=list)
    name: str = "sweep"
    num_samples: int = 1
    scheduler: str = "fifo"  # fifo | asha | pbt (population-based: mutates the grid keys during training)
    perturbation_interval: int = 2  # pbt: validations (Tune iterations) between exploit/explore steps
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: one per worker where the cluster has GPUs, else 0
    workers_per_trial: int = 1  # >1: TorchTrainer with this many workers per trial
    max_rounds: int = 0  # rpst: rounds per trial
    stop_on_plateau: bool = True  # rpst: end a trial at the first round that does not improve val DSC


def resolve_gpus_per_trial(requested: float | None, workers_per_trial: int, cluster_gpus: float) -> float:
    """GPUs one trial holds (its workers share them equally).

    ``requested`` (``--gpus-per-trial``) wins when given; otherwise every worker of a trial gets one
    whole GPU when the Ray cluster has any GPUs (``ray.cluster_resources()["GPU"]``, so a CPU-only
    head of a GPU cluster still counts its workers' GPUs), and none on a CPU-only cluster.
    """
    if requested is not None:
        if requested < 0:
            raise ValueError(f"--gpus-per-trial must be >= 0, got {requested}")
        return float(requested)
    return float(workers_per_trial) if cluster_gpus > 0 else 0.0


def check_grid(config: str | Path, overrides: list[str], param_space: dict) -> None:
    """Raise ValueError, before Ray starts, when a grid value (list-valued key) does not make a valid
    config (an unknown key or a wrong type would otherwise fail every trial). ``method.params.*``
    values, free-form in the config schema, are checked by building the method (names and values)."""
    for key, values in param_space.items():
        if not isinstance(values, (list, tuple)):
            continue  # a ray.tune sample domain: checked when its trials start
        for value in values:
            try:
                cfg = load_config(config, [*overrides, f"{key}={json.dumps(value)}"])
                if key.startswith("method.params."):
                    from dias_dist.methods import build_method

                    build_method(cfg.method.name, **cfg.method.params)
            except ValueError as err:
                raise ValueError(f"--grid {key}={value!r}: {err}") from None


def cluster_store_warning(address: str | None, tracking_uri: str) -> str | None:
    """Why a sweep on a cluster (``address`` given) may lose its MLflow runs, or None."""
    if address and tracking_uri.startswith("sqlite:"):
        return (f"tracking store {tracking_uri} is a SQLite file on this machine; trials on other nodes of "
                "the cluster cannot log to it. On a multi-node cluster set track.tracking_uri=http://... "
                "(an MLflow server) and --storage to a folder every node shares or s3://... / gs://...")
    return None


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` (``s3://bucket/tune``, ``gs://...``, ``file:///...``)."""
    return bool(_URI.match(str(location)))


def storage_location(storage_path: str | None, run_dir: str | Path) -> str:
    """Tune's storage: a URI unchanged (Ray hands it to pyarrow, e.g. ``s3://bucket/tune``; a query such as
    ``?endpoint_override=...`` is kept), a local path made absolute (trials run in their own working
    directories), by default ``<train.run_dir>/tune``."""
    if storage_path and is_uri(storage_path):
        return storage_path
    return str(Path(storage_path or Path(run_dir) / "tune").resolve())


def experiment_location(storage: str, name: str) -> str:
    """``<storage>/<name>``, Tune's experiment folder (a URI's query stays at its end)."""
    if not is_uri(storage):
        return str(Path(storage) / name)
    base, sep, query = storage.partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def _remote_file(location: str, name: str, text: str | None = None) -> str | None:
    """Read (``text`` None; None when missing) or write the small file ``name`` in the URI folder ``location``."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    target = f"{path.rstrip('/')}/{name}"
    if text is None:
        try:
            with fs.open_input_stream(target) as handle:
                return handle.read().decode()
        except (FileNotFoundError, OSError):
            return None
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(target) as handle:
        handle.write(text.encode())
    return text


def _absolute_overrides(overrides: list[str]) -> list[str]:
    """Make path-valued overrides absolute (Ray trials do not run in the caller's directory)."""
    out = []
    for text in overrides:
        key, _, value = text.partition("=")
        if (key in ("data.shards", "data.cache_dir", "dist.deepspeed_config") and value and not os.path.isabs(value)
                and "://" not in value and not value.startswith("pipe:")):  # URLs stay as they are
            value = str(Path(value).resolve())
        out.append(f"{key}={value}")
    return out


def _param_space(spec: SweepSpec) -> dict:
    from ray import tune

    space = {}
    for key, values in spec.param_space.items():
        space[key] = tune.grid_search(list(values)) if isinstance(values, (list, tuple)) else values
    return space


def run_sweep(spec: SweepSpec, *, address: str | None = None, storage_path: str | None = None) -> dict:
    """Run a sweep with Ray Tune and return ``{"rows": [...], "errors": [...], "parent_run_id": ...}``.

    Starts Ray locally with this machine's CPUs/GPUs, or joins ``address``. The MLflow parent run is
    created here; trial runs nest under it. Re-running the same ``name`` resumes from Tune's
    experiment state (unfinished and errored trials are re-run, finished ones kept).
    """
    import ray
    from ray import tune

    from dias_dist.sweep_report import log_summary, open_parent_run
    from dias_dist.run.track import tracking_uri as store_uri

    cfg_path = Path(spec.config).resolve()
    base = load_config(cfg_path, spec.overrides)  # validate before starting anything
    check_grid(cfg_path, spec.overrides, spec.param_space)
    scheduler = _scheduler(spec)  # raises for an unknown --scheduler and PBT settings it cannot run
    run_dir = Path(base.train.run_dir).resolve()
    storage = storage_location(storage_path, run_dir)
    exp_location = experiment_location(storage, spec.name)  # Tune's experiment folder (maybe a URI)
    remote = is_uri(storage)
    # the sweep's own files (parent run id, summary): in Tune's folder; for a URI also in run_dir/tune/<name>
    exp_path = run_dir / "tune" / spec.name if remote else Path(exp_location)
    tracking_uri = store_uri(base.track, run_dir)
    experiment = base.track.experiment or f"dias-sweep-{spec.kind}"
    warning = cluster_store_warning(address, tracking_uri)
    if warning:
        print(f"[tune] warning: {warning}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    try:
        gpus = resolve_gpus_per_trial(spec.gpus_per_trial, spec.workers_per_trial,
                                      ray.cluster_resources().get("GPU", 0))
        spec = dataclasses.replace(spec, gpus_per_trial=gpus)
        print(f"[tune] {gpus:g} GPU(s) per trial, {spec.workers_per_trial} worker(s) per trial")
        if remote and not (exp_path / "parent_run_id").is_file():
            known = _remote_file(exp_location, "parent_run_id")  # a sweep resumed from another machine
            if known:
                exp_path.mkdir(parents=True, exist_ok=True)
                (exp_path / "parent_run_id").write_text(known)
        parent_run_id = open_parent_run(tracking_uri, experiment, spec.name, exp_path, spec)
        if remote:
            _remote_file(exp_location, "parent_run_id", parent_run_id)
        trial_spec = {
            "config": str(cfg_path),
            "overrides": _absolute_overrides(spec.overrides)
            + ([f"rpst.rounds={spec.max_rounds}"] if spec.max_rounds else []),
            "parent_run_id": parent_run_id,
            "tracking_uri": tracking_uri,
            "experiment": experiment,
            "run_dir": str(run_dir),
            "storage_path": storage,
            "workers_per_trial": spec.workers_per_trial,
            "gpus_per_trial": gpus,
            "cpus_per_trial": spec.cpus_per_trial,
        }
        if spec.workers_per_trial > 1:
            # A TorchTrainer trial only coordinates: its workers hold the trial's CPUs/GPUs.
            trial_fn, resources = torch_trainer_trial, {"cpu": COORDINATOR_CPU, "gpu": 0}
        else:
            trial_fn = {"train": train_trial, "rpst": rpst_trial}[spec.kind]
            resources = {"cpu": spec.cpus_per_trial, "gpu": gpus}
        trainable = tune.with_resources(tune.with_parameters(trial_fn, spec=trial_spec), resources)
        if tune.Tuner.can_restore(exp_location):
            print(f"[tune] resuming {exp_location}")
            tuner = tune.Tuner.restore(exp_location, trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=_param_space(spec),
                tune_config=tune.TuneConfig(num_samples=spec.num_samples, scheduler=scheduler),
                run_config=tune.RunConfig(
                    name=spec.name, storage_path=storage,
                    stop=NoImprovementStopper() if spec.kind == "rpst" and spec.stop_on_plateau else None,
                    failure_config=tune.FailureConfig(max_failures=0),
                    # the 2 latest checkpoints of a trial; under PBT all of them (its saves register a
                    # trial's checkpoint a second time, which Ray's retention then fails to delete)
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None if spec.scheduler == "pbt" else 2),
                    verbose=1,
                ),
            )
        grid = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    out = log_summary(grid, spec, tracking_uri, parent_run_id, exp_path)
    if remote:
        for name in ("summary.md", "summary.json"):
            if (exp_path / name).is_file():
                _remote_file(exp_location, name, (exp_path / name).read_text())
        out["storage"] = exp_location
    return out


def _pbt_mutations(spec: SweepSpec) -> dict:
    """PBT mutates the grid keys (a list: moved to a neighbouring value or resampled), or a Tune domain."""
    mutations = {key: list(values) if isinstance(values, (list, tuple)) else values
                 for key, values in spec.param_space.items()}
    if not mutations:
        raise ValueError("--scheduler pbt needs --grid keys to mutate (e.g. --grid method.params.lambda1=0.5,1,2)")
    if spec.perturbation_interval < 1:
        raise ValueError(f"--perturbation-interval must be >= 1, got {spec.perturbation_interval}")
    if spec.kind != "train" or spec.workers_per_trial > 1:
        raise ValueError("--scheduler pbt needs single-worker training trials (sscr-sweep, --workers-per-trial 1): "
                         "RPST and multi-worker trials do not report checkpoints while they run")
    return mutations


def _scheduler(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if spec.scheduler == "asha":
        return ASHAScheduler(metric=METRIC, mode="max", grace_period=1, reduction_factor=2)
    if spec.scheduler == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration", metric=METRIC, mode="max",
                                       perturbation_interval=spec.perturbation_interval,
                                       hyperparam_mutations=_pbt_mutations(spec))
    if spec.scheduler == "fifo":
        return FIFOScheduler()
    raise ValueError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {spec.scheduler!r}")


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["method.params.lambda1=0.5,1", ...]`` -> {"method.params.lambda1": [0.5, 1.0]}."""
    import yaml

    space: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--grid {item!r} must look like section.key=v1,v2,...")
        space[key] = [yaml.safe_load(v) for v in values.split(",")]
    return space
