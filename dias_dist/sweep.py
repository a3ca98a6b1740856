"""Ray Tune sweeps over dias_dist runs: SSCR λ1 × λ2 grids and RPST round schedules.

Each trial is a full training run through the package's own ``dias_dist.trainer.run`` (RPST trials
through ``dias_dist.semi.rpst.run_rpst``), imported, never copied. The driver opens one MLflow parent
run per sweep; every trial's run is nested under it (``track.parent_run_id``), and the sweep ends with
a summary table and plots logged to the parent run.

A trial's search space is a dict of dotted config keys -> values (``{"method.params.lambda1": 0.5}``),
applied as overrides on the base YAML. All paths are made absolute in the driver, because Ray runs
trials in their own working directories.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dias_dist.config import load_config

METRIC = "val_dsc"
COORDINATOR_CPU = 0.01  # the Tune function that only drives a TorchTrainer; its workers get the rest


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
    """One training run; reports each validation to Tune (used for the SSCR λ sweep and any grid)."""
    from ray import tune

    from dias_dist.trainer import run

    cfg = load_config(spec["config"], _trial_overrides(spec, params, _trial_name()))
    reporter = LastValidation(tune.report)
    final = run(cfg, report=reporter)
    reporter.final(final)


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

    def report(metrics: dict) -> None:
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
    carries the last validation metrics: schedulers such as ASHA require their metric in every result."""

    def __init__(self, report: Callable[[dict], None]):
        self.report, self.last = report, {}

    def __call__(self, metrics: dict) -> None:
        self.last = _numeric(metrics)
        self.report(self.last)

    def final(self, metrics: dict) -> None:
        self.report({**self.last, **_numeric(metrics), "done": 1.0})


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
    scheduler: str = "fifo"  # fifo | asha
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
                "(an MLflow server) and --storage to a folder every node shares.")
    return None


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
    from dias_dist.track import tracking_uri as store_uri

    cfg_path = Path(spec.config).resolve()
    base = load_config(cfg_path, spec.overrides)  # validate before starting anything
    check_grid(cfg_path, spec.overrides, spec.param_space)
    run_dir = Path(base.train.run_dir).resolve()
    storage = Path(storage_path or run_dir / "tune").resolve()
    exp_path = storage / spec.name
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
        parent_run_id = open_parent_run(tracking_uri, experiment, spec.name, exp_path, spec)
        trial_spec = {
            "config": str(cfg_path),
            "overrides": _absolute_overrides(spec.overrides)
            + ([f"rpst.rounds={spec.max_rounds}"] if spec.max_rounds else []),
            "parent_run_id": parent_run_id,
            "tracking_uri": tracking_uri,
            "experiment": experiment,
            "run_dir": str(run_dir),
            "storage_path": str(storage),
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
        if tune.Tuner.can_restore(str(exp_path)):
            print(f"[tune] resuming {exp_path}")
            tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=_param_space(spec),
                tune_config=tune.TuneConfig(num_samples=spec.num_samples, scheduler=_scheduler(spec)),
                run_config=tune.RunConfig(
                    name=spec.name, storage_path=str(storage),
                    stop=NoImprovementStopper() if spec.kind == "rpst" and spec.stop_on_plateau else None,
                    failure_config=tune.FailureConfig(max_failures=0),
                    verbose=1,
                ),
            )
        grid = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    return log_summary(grid, spec, tracking_uri, parent_run_id, exp_path)


def _scheduler(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler == "asha":
        return ASHAScheduler(metric=METRIC, mode="max", grace_period=1, reduction_factor=2)
    if spec.scheduler == "fifo":
        return FIFOScheduler()
    raise ValueError(f"--scheduler must be fifo or asha, got {spec.scheduler!r}")


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
