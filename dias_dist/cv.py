"""``tune.py folds CONFIG --k K``: K-fold cross-validation as K parallel Ray Tune trials, then the folds' ensemble
evaluated on the test split like one model.

The folds are a sweep of the existing machinery (``dias_dist.sweep.run_sweep``: one MLflow parent run, each
trial a full ``trainer.run`` nested under it, Tune checkpoints, resume by ``--name``) over the grid
``data.fold = 0..K-1`` with ``data.num_folds = K``: fold f trains on the other folds' training sequences
and validates on fold f (``data/folds.py``; the partition is checked before Ray starts). Each fold's run
evaluates the test split itself (its ``test_<metric>``: ``dias report`` averages the folds as repeats).

Afterwards (``evaluate_ensemble``) the driver loads each fold's ``eval.test_checkpoint`` weights (the run
folder's ``checkpoints/<test_checkpoint>.pt``, else the run's logged MLflow model), averages their vessel
probabilities (``predict.ensemble.MeanProbability``) and evaluates the test split with the paper's
protocol. Metrics ``test_<metric>`` / ``_std``, params ``model.name``, ``method.name``, ``ensemble.members``
and the per-image table (``eval/<split>/metrics.csv``) go to the parent run, so the report lists the
ensemble as one row and can test it against single runs image by image.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from dias_dist.config import load_config
from dias_dist.data.folds import assign_folds, read_groups
from dias_dist.sweep import SweepSpec, run_sweep


def check_partition(cfg) -> list[int]:
    """Sizes of the K held-out parts of the training split (ValueError when K does not fit the data)."""
    from dias_dist.data.loader import TrainSource

    keys = [k for _, ks, _ in TrainSource(cfg.data.shards, num_sequences=cfg.data.num_labeled).shard_keys() for k in ks]
    fold_of = assign_folds(keys, cfg.data.num_folds, read_groups(cfg.data.fold_groups))
    return [sum(1 for f in fold_of.values() if f == fold) for fold in range(cfg.data.num_folds)]


def check_k(k: int) -> None:
    if not 2 <= k <= 1000:
        raise ValueError(f"--k {k}: cross-validation needs 2..1000 folds")


def fold_spec(config: str, k: int, overrides: list[str], **sweep_options):
    """The ``SweepSpec`` of K folds (``sweep_options``: name, cpus_per_trial, gpus_per_trial, workers_per_trial...)."""
    check_k(k)
    return SweepSpec(kind="train", config=config, param_space={"data.fold": list(range(k))},
                     overrides=[*overrides, f"data.num_folds={k}"], **sweep_options)


def fold_members(client, parent_run_id: str, run_dir: Path, checkpoint_name: str) -> dict[int, str]:
    """{fold: checkpoint path or ``runs:/<id>/model``} of the FINISHED fold runs nested under the parent."""
    children = client.search_runs([client.get_run(parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                                "and attributes.status = 'FINISHED'")
    members = {}
    for child in sorted(children, key=lambda r: r.info.start_time):  # a re-run fold: its latest run wins
        fold = child.data.params.get("data.fold")
        if fold is None:
            continue
        local = run_dir / (child.info.run_name or "") / "checkpoints" / f"{checkpoint_name}.pt"
        members[int(fold)] = str(local) if local.is_file() else f"runs:/{child.info.run_id}/model"
    return members


def evaluate_ensemble(cfg, parent_run_id: str, tracking_uri: str, out_dir: Path, device: str | None = None) -> dict:
    """Evaluate the folds' ensemble on ``cfg.eval.test_split``; log to the parent run; returns
    ``{"members": {fold: source}, "summary": {metric: (mean, std)}, "out_dir"}`` (empty summary without a test split)."""
    import torch
    from mlflow import MlflowClient

    from dias_dist.evaluation.evaluate import evaluate_summary
    from dias_dist.evaluation.tables import flat_metrics
    from dias_dist.predict.ensemble import ensemble_of
    from dias_dist.predict.model import load_trained_model

    client = MlflowClient(tracking_uri)
    e = cfg.eval
    members = fold_members(client, parent_run_id, Path(cfg.train.run_dir).resolve(), e.test_checkpoint)
    if not members or not e.test_split:
        return {"members": members, "summary": {}, "out_dir": None}
    models = [load_trained_model(members[f], tracking_uri=tracking_uri) for f in sorted(members)]
    network = ensemble_of(models).network if len(models) > 1 else models[0].network
    if device is None:
        device = "cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu"
    network.to(device)
    out_dir = Path(out_dir) / e.test_split
    _, summary = evaluate_summary(network, cfg.data.shards, e.test_split, e, device=device, out_dir=out_dir,
                                  write_images=e.overlays, amp=cfg.train.bf16_autocast(torch.device(device)),
                                  cache_dir=cfg.data.cache_dir, verify=cfg.data.verify)
    run_id = parent_run_id
    for key, value in {"model.name": cfg.model.name, "method.name": cfg.method.name,
                       "ensemble.members": len(models), "data.num_folds": cfg.data.num_folds,
                       "ensemble.folds": " ".join(str(f) for f in sorted(members))}.items():
        client.log_param(run_id, key, str(value))
    for key, value in flat_metrics(summary, "test").items():
        client.log_metric(run_id, key, value)
    client.log_artifact(run_id, str(out_dir / "metrics.csv"), f"eval/{e.test_split}")
    client.set_tag(run_id, "dias.ensemble", "folds")
    return {"members": members, "summary": summary, "out_dir": out_dir}


def run_folds(config: str, k: int, overrides: list[str], *, address: str | None = None,
              storage_path: str | None = None, **sweep_options) -> dict:
    """Train K folds as parallel trials (``run_sweep``), then evaluate their ensemble; returns the sweep's
    result with ``"ensemble"`` (``evaluate_ensemble``) and ``"fold_sizes"`` added."""
    from dias_dist.run.track import tracking_uri as store_uri

    check_k(k)
    base = load_config(Path(config).resolve(), [*overrides, f"data.num_folds={k}"])
    if base.data.fold_groups:  # trials run in their own working directories
        overrides = [*overrides, f"data.fold_groups={Path(base.data.fold_groups).resolve()}"]
    spec = fold_spec(config, k, overrides, **sweep_options)
    cfg = load_config(Path(config).resolve(), spec.overrides)
    sizes = check_partition(cfg)  # before Ray starts: K must fit the training split
    print(f"[folds] {k} folds of the training split, held-out sizes {sizes}")
    out = run_sweep(spec, address=address, storage_path=storage_path)
    fold_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fold=0))
    tracking = store_uri(cfg.track, Path(cfg.train.run_dir).resolve())
    ensemble = evaluate_ensemble(fold_cfg, out["parent_run_id"], tracking, Path(out["dir"]) / "ensemble")
    if ensemble["summary"]:
        mean, std = ensemble["summary"]["dsc"]
        print(f"[folds] ensemble of {len(ensemble['members'])} folds on {cfg.eval.test_split}: "
              f"DSC {mean:.4f}±{std:.4f}; tables in {ensemble['out_dir']}")
    return {**out, "ensemble": ensemble, "fold_sizes": sizes}
