"""The one training loop. Every method, model, engine and launch mode goes through ``run``, which
builds each part once from its config section inside the run that ``dias_dist.run.lifecycle.open_run``
opens (name, folder, lock, restarts, tracking, checkpoints); ``train_step`` is one optimizer step (a
method changes only the loss, the loop never looks at its name), ``_train`` the epoch/validation
driver, and the checkpointed ``TrainState`` is passed explicitly. Seeding, checkpoints and the test:
docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dias_dist import console, devices, dist
from dias_dist.config import Config, to_dict
from dias_dist.curves import plot_curves
from dias_dist.data import loader, timeouts
from dias_dist.data.preprocess import NUM_FRAMES
from dias_dist.engine import Engine, StepSettings, build_engine, micro_batch_size
from dias_dist.evaluation import evaluate
from dias_dist.evaluation.tables import flat_metrics
from dias_dist.methods import Method, build_network
from dias_dist.models import cpu_tuning, input_layout, to_layout
from dias_dist.predict.mlflow_model import log_trained_model
from dias_dist.progress import Progress
from dias_dist.run import checkpoint
from dias_dist.run.lifecycle import Run, TrainState, open_run
from dias_dist.schedule import build_optimizer


@dataclass
class Parts:
    """The pieces ``run`` builds once and the loop uses."""

    cfg: Config
    method: Method
    engine: Engine
    micro_batch: int
    boundary: int  # steps between checkpoints and re-seeds
    run: Run  # folder, metrics.jsonl, tracker, checkpoints (``run.writes``: rank 0 of a run that is not a dry run)


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
    "test_<metric>_std"...}``. The run's life around the loop (name, folder, lock, restarts, tracking,
    checkpoints): ``dias_dist.run.lifecycle``.
    """
    timeouts.set_limits(cfg.data.read_timeout_s, cfg.data.download_budget_s)  # every remote read of this run
    device = dist.init(cfg.dist, cfg.train.device)
    micro_batch = micro_batch_size(cfg.train.batch_size, cfg.train.grad_accum)
    with open_run(cfg, dry_run=dry_run) as life:  # run name, folder and its lock; closed with the run's status
        cfg, t = life.cfg, life.cfg.train
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
        device_tags = {**devices.startup_tags(device, engine, world_size=dist.world_size(), backend=dist.backend()),
                       **choose_cpu_arrangements(cfg, model, device, measure=not dry_run)}
        state = life.restore(engine)
        life.start(state, method, model, device, {**engine.tags, **device_tags})
        parts = Parts(cfg, method, engine, micro_batch, life.boundary, life)
        total_steps = 1 if dry_run else min(t.epochs * t.steps_per_epoch, t.max_steps or math.inf)
        console.announce_start(t.run_name, _start_facts(parts, device_tags, state.step, total_steps),
                               enabled=dist.is_main())
        progress = Progress(total_steps, state.step, t.batch_size, enabled=dist.is_main() and t.progress)
        try:
            metrics = _train(parts, state, sources, total_steps, progress, report, dry_run)
            return {"step": state.step, **{k: float(v) for k, v in metrics.items()}} if dry_run else _finish(parts, state)
        finally:
            progress.close()


def choose_cpu_arrangements(cfg: Config, model: torch.nn.Module, device: torch.device, *,
                             measure: bool = True) -> dict[str, str]:
    """On a CPU: rank 0 measures (or reads from its cache) which ConvGRU arrangement runs ``model``
    fastest at this run's training micro-batch and evaluation tiles (``models.cpu_tuning``), and every
    rank applies rank 0's choice, so all ranks compute alike. Returns the choices and their timings as
    tags for the run (``{}`` on a GPU, for a network without a ConvGRU, or with DIAS_CPU_CHOICES=table)."""
    if device.type != "cpu" or not measure:
        return {}
    examples = cpu_tuning.examples_for(model, frames=NUM_FRAMES, train_batch=micro_batch_size(
        cfg.train.batch_size, cfg.train.grad_accum), patch=cfg.data.patch_size_px, eval_batch=cfg.eval.batch_size,
        tile=cfg.eval.patch_size_px)
    tags = dist.broadcast_object(cpu_tuning.tune_network(model, examples) if dist.is_main() else None)
    for key, value in tags.items():
        cpu_tuning.apply(value.split()[0], grad=key == "convgru_train")
    return tags


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


def _start_facts(parts: Parts, device_tags: dict, step: int, total_steps: int) -> dict[str, str]:
    """The start block's facts (``console.start_block``): where the run goes and what it runs on."""
    c, t, uri, resume_from = parts.cfg, parts.cfg.train, parts.run.uri, parts.run.resume_from
    if not c.track.enabled:
        mlflow = "off (track.enabled=false); metrics.jsonl keeps everything"
    elif not parts.run.tracker.run_id:
        mlflow = f"unavailable ({uri}, see the warning above); metrics.jsonl keeps everything"
    else:
        try:
            experiment = parts.run.tracker.client.get_run(parts.run.tracker.run_id).info.experiment_id
            mlflow = f"run {parts.run.tracker.run_id}: {console.run_page(uri, experiment, parts.run.tracker.run_id)}"
        except Exception:  # noqa: BLE001 (the block is information; the tracker's own guard reports failures)
            mlflow = f"run {parts.run.tracker.run_id} in {uri}"
    resumed = f", resumed from {resume_from}" if resume_from is not None else ""
    return {"folder": str(parts.run.dir), "mlflow": mlflow, **device_tags, "engine": c.dist.engine,
            "data": str(c.data.shards),
            "steps": f"{step} -> {total_steps} ({t.epochs} epochs x {t.steps_per_epoch} steps, global batch "
                     f"{t.batch_size}, validation every {c.eval.val_every_epochs} epochs){resumed}"}


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
            console.say(console.validation_line(state.step, total_steps, epoch, validation,
                                                parts.cfg.eval.select_metric, improved), enabled=dist.is_main())
            if improved:
                _save(parts, state, "best.pt")
        if state.step % parts.boundary == 0 or state.step == total_steps:
            last = _save(parts, state, "last.pt")
        if validation is not None and report is not None:  # after last.pt, so a report can carry it
            report({"epoch": epoch, "step": state.step, **validation, **({"checkpoint": str(last)} if last else {})})
    return metrics


def _save(parts: Parts, state: TrainState, name: str) -> Path:
    """Collective: ``checkpoints/<name>`` (``Run.save``)."""
    return parts.run.save(name, parts.engine, state)


def _stop_on_nan(parts: Parts, step: int, sums: dict, batch: dict) -> None:
    """Rank 0 saves model, the last batch and every rank's losses, then every rank raises."""
    bad_losses = dist.all_gather_object({k: float(v) for k, v in sums.items()})
    path = parts.run.dir / "checkpoints" / f"nan_step{step}.pt"
    if parts.run.writes:
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
    parts.run.log.write("train", step, values)
    parts.run.tracker.log_metrics(values, step)


def _evaluate(parts: Parts, model: torch.nn.Module, split: str, out_dir: Path | None, images: bool):
    """(rows, {metric: (mean, std)}) of ``split`` with the paper's protocol, on every rank."""
    c = parts.cfg  # evaluate_split switches the model to eval mode and back itself
    device = parts.engine.device
    split, keys = loader.fold_eval_split(c.data, split)  # data.num_folds: validation = the held-out training fold
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
    parts.run.log.write("val", state.step, {"epoch": epoch, **values})
    parts.run.tracker.log_metrics(values, state.step)
    return values, improved


def _finish(parts: Parts, state: TrainState) -> dict:
    """``final.pt``, the test split with the ``eval.test_checkpoint`` weights (rank 0 gets tables,
    overlays and probability maps under ``eval/<split>``), the curve plots; returns the run's result."""
    e = parts.cfg.eval
    _save(parts, state, "final.pt")
    result = {"run_dir": str(parts.run.dir), "run_id": parts.run.tracker.run_id, "step": state.step,
              "best_val_score": state.best}
    if e.test_split:
        weights = parts.run.dir / "checkpoints" / f"{e.test_checkpoint}.pt"
        if not dist.broadcast_object(weights.is_file()):
            raise ValueError(f"eval.test_checkpoint={e.test_checkpoint!r} but {weights} was never written "
                             f"(no validation ran? eval.val_every_epochs={e.val_every_epochs}); use best | final")
        model = parts.engine.unwrap()
        checkpoint.load_weights(model, checkpoint.broadcast_model_state(weights), weights)
        out_dir = parts.run.dir / "eval" / e.test_split
        _, summary = _evaluate(parts, model, e.test_split, out_dir, e.overlays)
        flat = flat_metrics(summary, "test")  # test_dsc, test_dsc_std, ... (evaluate_split wrote the tables)
        result.update(flat)
        if parts.run.writes:
            parts.run.log.write("test", state.step, flat)
            parts.run.tracker.log_metrics(flat, state.step)
            parts.run.tracker.log_artifact(out_dir, f"eval/{e.test_split}")
    if parts.run.writes:
        plot_curves(parts.run.log.read(), parts.run.dir / "plots")
        parts.run.tracker.log_artifact(parts.run.dir / "plots", "plots")
        log_trained_model(parts.cfg, parts.run.dir, parts.run.tracker)  # the selected model as an MLflow pyfunc
    return result
