"""The one training loop. Every method, model, engine and launch mode goes through ``run``, which
builds each part once from its config section; ``train_step`` is one optimizer step (a method changes
only the loss, the loop never looks at its name), ``_train`` the epoch/validation driver, and the
checkpointed ``TrainState`` is passed explicitly. Seeding, checkpoints and the test: docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dias_dist import checkpoint, devices, dist, elastic, run_history, run_lock
from dias_dist.config import Config, derive, to_dict
from dias_dist.curves import plot_curves
from dias_dist.data import folds, loader, timeouts
from dias_dist.engine import Engine, StepSettings, build_engine, micro_batch_size
from dias_dist.evaluation import evaluate
from dias_dist.evaluation.tables import flat_metrics
from dias_dist.methods import Method, build_network
from dias_dist.models import count_parameters, input_layout, to_layout
from dias_dist.predict.mlflow_model import log_trained_model
from dias_dist.progress import Progress
from dias_dist.run_params import resolved_params
from dias_dist.schedule import build_optimizer
from dias_dist.track import MetricsLog, Tracker, make_tracker, run_tags, tracking_uri, with_study


@dataclass
class TrainState:
    """What a checkpoint restores besides the engine's state: the loop position and the selection."""

    step: int = 0
    best: float = -math.inf  # best validation ``eval.select_metric`` so far
    run_id: str = ""  # MLflow run (continued on resume)


@dataclass
class Parts:
    """The pieces ``run`` builds once and the loop uses."""

    cfg: Config
    run_dir: Path
    method: Method
    engine: Engine
    micro_batch: int
    boundary: int  # steps between checkpoints and re-seeds
    writes: bool  # this process writes files and tracks (rank 0 of a run that is not a dry run)
    log: MetricsLog
    tracker: Tracker


def run(cfg: Config, report: Callable[[dict], None] | None = None, *, sources: list | None = None,
        init_from: str | Path | None = None, dry_run: bool = False) -> dict:
    """Train (and finally test) as described by ``cfg``; return the final metrics.

    report: called with ``{"epoch", "step", "val_<metric>"..., "checkpoint"}`` after every validation
    (Ray Tune); ``checkpoint`` (the path of ``last.pt``) is there when ``last.pt`` was written at that
    step (every validation, unless ``train.checkpoint_every_steps`` does not divide the epoch).
    sources: ``TrainSource`` list replacing the one built from ``cfg.data`` (RPST).
    init_from: checkpoint whose model weights initialise the model (RPST students).
    dry_run: build everything, run one optimizer step, write nothing; returns the step's losses.
    Returns ``{"run_dir", "run_id", "step", "best_val_score" (of ``eval.select_metric``), "test_<metric>",
    "test_<metric>_std"...}``.
    """
    timeouts.set_limits(cfg.data.read_timeout_s, cfg.data.download_budget_s)  # every remote read of this run
    device = dist.init(cfg.dist, cfg.train.device)
    micro_batch = micro_batch_size(cfg.train.batch_size, cfg.train.grad_accum)
    cfg = elastic.continue_job(cfg)  # under torchrun --max-restarts: the same run name, resume after a restart
    name, run_dir, resume_from = checkpoint.resolve_run(cfg.train, f"{cfg.model.name}-{cfg.method.name}")
    cfg = with_study(derive(cfg, {"train.run_name": name}, "resolved config"))
    uri = tracking_uri(cfg.track, cfg.train.run_dir) if cfg.track.enabled else ""
    # a torchrun restart of a job killed before its first checkpoint: the same folder and MLflow run, from step 0
    started = elastic.unfinished_start(run_dir, uri) if resume_from is None and dist.is_main() and not dry_run else None
    folder = run_lock.claim_on_main(run_dir, cfg.train, resume_from, enabled=not dry_run, wait_s=elastic.lock_wait_s(),
                                    restarted_job=started is not None)
    # a failure keeps the folder for torchrun's restart only while it holds a start.json to continue: without one
    # the restart cannot tell the folder from another job's (elastic) and would refuse it, so until record_start
    # below a failed start of a new folder leaves nothing behind
    folder.keep_on_failure = started is not None and elastic.restarts_left() > 0
    t = cfg.train
    torch.backends.cudnn.benchmark = not t.deterministic  # the reference sets benchmark=True
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(t.seed)  # identical initialisation on every rank
    sources = sources if sources is not None else loader.default_sources(cfg.data)
    method, model = build_network(cfg.model, cfg.method)
    loader.check_targets(method, sources)  # before the run folder and the MLflow run exist
    if init_from is not None:
        checkpoint.load_weights(model, checkpoint.model_state(init_from), init_from)
    engine = make_engine(cfg, model, device)
    device_tags = devices.startup_tags(device, engine, world_size=dist.world_size(), backend=dist.backend())
    devices.announce(device_tags, run_name=t.run_name, engine_name=cfg.dist.engine, enabled=dist.is_main())
    state = TrainState(run_id=started["mlflow_run_id"]) if started else TrainState()
    if resume_from is not None:
        saved = checkpoint.load(resume_from)
        engine.load_state_dict(saved)
        state = TrainState(int(saved["step"]), float(saved["best"]), saved["mlflow_run_id"])
        checkpoint.restore_rng(saved["rng"], dist.rank())  # any world size
    writes = dist.is_main() and not dry_run
    if not dry_run:
        checkpoint.prepare_run_folder(cfg, run_dir)
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=writes)
    tracker = make_tracker(cfg.track, t.run_name, run_root=t.run_dir, method=cfg.method.name, is_main=writes,
                           resume_run_id=state.run_id)
    if writes:  # before the first step: a restart finds this folder's MLflow run even without a checkpoint
        elastic.record_start(run_dir, tracker.run_id, uri)
        folder.keep_on_failure = elastic.restarts_left() > 0  # torchrun's restart continues this folder and run
    log, tracker = run_history.skip_logged(log, tracker, state.step, uri,
                                           resumed=resume_from is not None or started is not None)
    if writes and state.step == 0:  # a new run, or a restart before the first checkpoint (the killed attempt
        # may have died before logging them; params it logged stay as they are)
        tracker.log_params(resolved_params(cfg, method, model, semi=cfg.track.tags["study"] == "semi"),
                           keep_logged=started is not None)
        tracker.set_tags({**run_tags(cfg.data.shards, device=device, num_params=count_parameters(model)), **engine.tags,
                          **device_tags})
        tracker.log_artifact(run_dir / "config.yaml")
    parts = Parts(cfg, run_dir, method, engine, micro_batch,
                  t.checkpoint_every_steps or t.steps_per_epoch, writes, log, tracker)
    total_steps = 1 if dry_run else min(t.epochs * t.steps_per_epoch, t.max_steps or math.inf)
    progress = Progress(total_steps, state.step, t.batch_size, enabled=dist.is_main() and t.progress)
    status = "FAILED"
    try:
        metrics = _train(parts, state, sources, total_steps, progress, report, dry_run)
        result = {"step": state.step, **{k: float(v) for k, v in metrics.items()}} if dry_run else _finish(parts, state)
        status = "FINISHED"
        return result
    finally:
        progress.close()
        tracker.close(status)
        folder.release(status)


def make_engine(cfg: Config, model: torch.nn.Module, device: torch.device) -> Engine:
    """AdamW and its schedule built once from ``optim``, handed to the engine with ``dist`` and ``StepSettings``."""
    t = cfg.train
    optimizer, schedule = build_optimizer(model, cfg.optim, epochs=t.epochs, steps_per_epoch=t.steps_per_epoch)
    settings = StepSettings(amp=t.bf16_autocast(device), channels_last=t.channels_last, grad_clip=cfg.optim.grad_clip,
                            batch_size=t.batch_size, grad_accum=t.grad_accum)
    return build_engine(model, optimizer, schedule, cfg.dist, settings, device=device)


def train_step(parts: Parts, stream, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """Optimizer step number ``step`` over ``train.grad_accum`` micro-batches drawn from ``stream``.

    Returns ({"loss_<name>", "pseudo_share"}: micro-batch means, the gradient norm before clipping, both
    0-d device tensors; seconds spent waiting for data). A non-finite loss on any rank saves model,
    batch and losses for inspection and raises ``FloatingPointError``.
    """
    engine, accum = parts.engine, parts.cfg.train.grad_accum
    sums, data_wait = {}, 0.0
    for micro in range(accum):
        wait_start = time.perf_counter()
        batch = next(stream)
        data_wait += time.perf_counter() - wait_start
        batch = {**batch, "image": to_layout(batch["image"], input_layout(engine.model))}  # 4-D or 5-D first
        batch = {k: engine.prepare_input(v) if torch.is_tensor(v) else v for k, v in batch.items()}
        with engine.autocast():
            losses = parts.method.losses(engine.model, batch)
        engine.backward(losses["total"] / accum, sync=micro == accum - 1)
        for key, value in losses.items():
            key = key if key in parts.method.statistics else f"loss_{key}"
            sums[key] = sums.get(key, 0.0) + value.detach().float() / accum
        if "is_pseudo" in batch:  # RPST: how many patches carry pseudo labels (rpst.labeled_prob at work)
            sums["pseudo_share"] = sums.get("pseudo_share", 0.0) + batch["is_pseudo"].float().mean() / accum
    if dist.any_rank(~torch.isfinite(sums["loss_total"])):  # reduced on the device: one host sync per step
        _stop_on_nan(parts, step, sums, batch)
    return sums, engine.step(), data_wait


def _train(parts: Parts, state: TrainState, sources: list, total_steps: int, progress: Progress,
           report: Callable[[dict], None] | None, dry_run: bool) -> dict[str, torch.Tensor]:
    """The epoch/validation driver: steps until ``total_steps``, validating at epoch ends, saving
    ``best.pt`` / ``last.pt``; a dry run stops after its one step. Returns the last step's metrics."""
    t, stream, window, metrics = parts.cfg.train, None, [], {}
    parts.engine.unwrap().train()
    while state.step < total_steps:
        if stream is None or state.step % parts.boundary == 0:
            torch.manual_seed(loader.derived_seed(t.seed, dist.rank(), state.step))
            stream = loader.train_stream(parts.cfg.data, sources, micro_batch=parts.micro_batch, seed=t.seed,
                                         step=state.step)
        tic, lr = time.perf_counter(), parts.engine.lr
        metrics, grad_norm, data_wait = train_step(parts, stream, state.step)
        state.step += 1
        step_s = time.perf_counter() - tic
        progress.update(metrics["loss_total"], data_wait, step_s)
        window.append((data_wait, step_s))
        if state.step % t.log_every_steps == 0 or state.step == total_steps:
            _log_train(parts, state.step, metrics, lr, grad_norm, window)
            window = []
        if dry_run:
            break
        epoch, end_of_epoch = divmod(state.step, t.steps_per_epoch)
        validation, last = None, None
        if end_of_epoch == 0 and epoch % parts.cfg.eval.val_every_epochs == 0:
            validation, improved = _validate(parts, state, epoch)
            if improved:
                _save(parts, state, "best.pt")
        if state.step % parts.boundary == 0 or state.step == total_steps:
            last = _save(parts, state, "last.pt")
        if validation is not None and report is not None:  # after last.pt, so a report can carry it
            report({"epoch": epoch, "step": state.step, **validation, **({"checkpoint": str(last)} if last else {})})
    return metrics


def _save(parts: Parts, state: TrainState, name: str) -> Path:
    """Collective: gather every rank's RNG state and the engine state; rank 0 writes ``checkpoints/<name>``."""
    rng = dist.all_gather_object(checkpoint.rng_state())
    path = parts.run_dir / "checkpoints" / name
    payload = parts.engine.state_dict()  # every rank: ZeRO-1/2 gathers optimizer shards collectively
    if parts.writes:
        t = parts.cfg.train
        payload.update(step=state.step, epoch=state.step // t.steps_per_epoch, rng=rng, config=to_dict(parts.cfg),
                       mlflow_run_id=parts.tracker.run_id, best=state.best, run_name=t.run_name,
                       data={"reseed_step": state.step - state.step % parts.boundary, "seed": t.seed})
        checkpoint.save(path, payload)
    dist.barrier()
    return path


def _stop_on_nan(parts: Parts, step: int, sums: dict, batch: dict) -> None:
    """Rank 0 saves model, the last batch and every rank's losses, then every rank raises."""
    bad_losses = dist.all_gather_object({k: float(v) for k, v in sums.items()})
    path = parts.run_dir / "checkpoints" / f"nan_step{step}.pt"
    if parts.writes:
        checkpoint.save(path, {"model": parts.engine.unwrap().state_dict(), "step": step,
                               "losses_per_rank": bad_losses, "config": to_dict(parts.cfg),
                               "batch_rank0": {k: v.cpu() for k, v in batch.items() if torch.is_tensor(v)}})
    raise FloatingPointError(f"non-finite loss at step {step} (losses per rank: {bad_losses}); "
                             f"model, batch and losses saved to {path} for inspection")


def _log_train(parts: Parts, step: int, sums: dict, lr: float, grad_norm: torch.Tensor, window: list) -> None:
    """Step metrics averaged over ranks (one all-reduce), lr, grad norm, throughput, data-wait share."""
    names = sorted(sums)
    stacked = dist.all_reduce_sum(torch.stack([sums[k] for k in names]).float()) / dist.world_size()
    wait, busy = map(sum, zip(*window))
    values = dict(zip(names, stacked.tolist()))
    values.update(lr=lr, grad_norm=float(grad_norm), data_wait_share=wait / max(busy, 1e-9),
                  patches_per_s=parts.cfg.train.batch_size * len(window) / max(busy, 1e-9))
    parts.log.write("train", step, values)
    parts.tracker.log_metrics(values, step)


def _evaluate(parts: Parts, model: torch.nn.Module, split: str, out_dir: Path | None, images: bool):
    """(rows, {metric: (mean, std)}) of ``split`` with the paper's protocol, on every rank."""
    c = parts.cfg  # evaluate_split switches the model to eval mode and back itself
    device = parts.engine.device
    split, keys = folds.eval_split(c.data, split)  # data.num_folds: validation = the held-out training fold
    return evaluate.evaluate_summary(model, c.data.shards, split, c.eval, device=device, out_dir=out_dir, keys=keys,
                                     write_images=images, amp=c.train.bf16_autocast(device),
                                     progress=c.train.progress and dist.is_main(), cache_dir=c.data.cache_dir,
                                     verify=c.data.verify)


def _validate(parts: Parts, state: TrainState, epoch: int) -> tuple[dict, bool]:
    """Validate, log, update ``state.best`` by ``eval.select_metric``; returns the logged values and
    whether this validation set ``state.best``."""
    e = parts.cfg.eval
    _, summary = _evaluate(parts, parts.engine.unwrap(), "validation", None, False)
    values = {f"val_{k}": mean for k, (mean, _) in summary.items()}
    score = summary[e.select_metric][0]
    if improved := epoch < e.select_from_epoch or score > state.best:
        state.best = score
    values["best_val_score"] = state.best  # of eval.select_metric; one name whatever the metric
    parts.log.write("val", state.step, {"epoch": epoch, **values})
    parts.tracker.log_metrics(values, state.step)
    return values, improved


def _finish(parts: Parts, state: TrainState) -> dict:
    """``final.pt``, the test split with the ``eval.test_checkpoint`` weights (rank 0 gets tables,
    overlays and probability maps under ``eval/<split>``), the curve plots; returns the run's result."""
    e = parts.cfg.eval
    _save(parts, state, "final.pt")
    result = {"run_dir": str(parts.run_dir), "run_id": parts.tracker.run_id, "step": state.step,
              "best_val_score": state.best}
    if e.test_split:
        weights = parts.run_dir / "checkpoints" / f"{e.test_checkpoint}.pt"
        if not dist.broadcast_object(weights.is_file()):
            raise ValueError(f"eval.test_checkpoint={e.test_checkpoint!r} but {weights} was never written "
                             f"(no validation ran? eval.val_every_epochs={e.val_every_epochs}); use best | final")
        model = parts.engine.unwrap()
        checkpoint.load_weights(model, checkpoint.broadcast_model_state(weights), weights)
        out_dir = parts.run_dir / "eval" / e.test_split
        _, summary = _evaluate(parts, model, e.test_split, out_dir, e.overlays)
        flat = flat_metrics(summary, "test")  # test_dsc, test_dsc_std, ... (evaluate_split wrote the tables)
        result.update(flat)
        if parts.writes:
            parts.log.write("test", state.step, flat)
            parts.tracker.log_metrics(flat, state.step)
            parts.tracker.log_artifact(out_dir, f"eval/{e.test_split}")
    if parts.writes:
        plot_curves(parts.log.read(), parts.run_dir / "plots")
        parts.tracker.log_artifact(parts.run_dir / "plots", "plots")
        log_trained_model(parts.cfg, parts.run_dir, parts.tracker)  # the selected model as an MLflow pyfunc
    return result
