"""The one training loop: ``run(cfg, report=None, *, sources=None, init_from=None, dry_run=False)``.

Every method, model, engine and launch mode goes through this function; a method changes only
the loss (``method.losses(engine.model, batch)``), the loop never looks at its name.

Distribution: ``dist.init`` joins the torchrun group when there is one (else single process); the
global batch ``train.batch_size`` is split evenly across ranks and ``train.grad_accum``
micro-batches. Seeds: the model is initialised from ``train.seed`` on every rank (identical
weights); at every checkpoint boundary the torch RNG (dropout) is re-seeded from
(seed, rank, step) and the data stream is rebuilt from (seed, step) (the loader adds rank and
worker). A checkpoint therefore fixes everything that follows it, which makes a resumed run
bit-identical to an uninterrupted one on CPU.

Per epoch: validation with the paper's protocol (``eval.val_every_epochs``); the best model by
``eval.select_metric`` (before ``eval.select_from_epoch`` every validation replaces it, as the
reference) goes to ``checkpoints/best.pt``; ``last.pt`` at every boundary; ``final.pt`` at the
end, then the test split is evaluated with ``eval.test_checkpoint`` (skipped when
``eval.test_split`` is "").
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch

from dias_dist import checkpoint, dist, elastic, run_history, run_lock
from dias_dist.config import Config, flatten, to_dict
from dias_dist.engine import build_engine, micro_batch_size
from dias_dist.methods import build_method
from dias_dist.models import count_parameters, input_layout, to_layout
from dias_dist.progress import Progress
from dias_dist.track import MetricsLog, make_tracker, tracking_uri
from dias_dist import train_support as support


def run(cfg: Config, report: Callable[[dict], None] | None = None, *, sources: list | None = None,
        init_from: str | Path | None = None, dry_run: bool = False) -> dict:
    """Train (and finally test) as described by ``cfg``; return the final metrics.

    report: called with ``{"epoch", "step", "val_<metric>"...}`` after every validation (Ray Tune).
    sources: ``TrainSource`` list replacing the one built from ``cfg.data`` (RPST).
    init_from: checkpoint whose model weights initialise the model (RPST students).
    dry_run: build everything, run one optimizer step, write nothing; returns the step's losses.
    Returns ``{"run_dir", "run_id", "step", "best_<select_metric>", "test_<metric>", "test_<metric>_std"...}``.
    """
    device = dist.init(cfg.dist.backend, cfg.train.device)
    rank, is_main = dist.rank(), dist.is_main()
    micro_batch = micro_batch_size(cfg)
    cfg, run_dir, resume_from = support.resolve_run(elastic.continue_job(cfg))
    folder = run_lock.claim_on_main(run_dir, cfg.train, resume_from, enabled=not dry_run, wait_s=elastic.lock_wait_s())
    t = cfg.train
    total_steps = t.epochs * t.steps_per_epoch
    if t.max_steps > 0:
        total_steps = min(total_steps, t.max_steps)
    if dry_run:
        total_steps = 1
    boundary = t.checkpoint_every_steps or t.steps_per_epoch  # checkpoint + re-seed interval

    torch.backends.cudnn.benchmark = not t.deterministic  # the reference sets benchmark=True
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(t.seed)  # identical initialisation on every rank
    method = build_method(cfg.method.name, **cfg.method.params)
    sources = sources if sources is not None else support.default_sources(cfg)
    support.check_targets(method, sources)  # before the run folder and the MLflow run exist
    model = method.build_model(cfg.model.name, dict(cfg.model.params))
    if init_from is not None:
        model.load_state_dict(checkpoint.model_state(init_from))
    layout = input_layout(model)
    num_params = count_parameters(model)
    engine = build_engine(model, cfg, device=device)

    step, best, run_id = 0, -math.inf, ""
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        engine.load_state_dict(state)
        step, best, run_id = int(state["step"]), float(state["best"]), state["mlflow_run_id"]
        checkpoint.set_rng_state(state["rng"][rank])

    writes = is_main and not dry_run
    if not dry_run:
        support.prepare_run_folder(cfg, run_dir)
    log = MetricsLog(run_dir / "metrics.jsonl", enabled=writes)
    tracker = make_tracker(cfg, cfg.train.run_name, is_main=writes, resume_run_id=run_id)
    log, tracker = run_history.skip_logged(log, tracker, step, tracking_uri(cfg) if cfg.track.enabled else "")
    if writes and not run_id:
        tracker.log_params(flatten(to_dict(cfg)))
        tracker.set_tags(support.run_tags(cfg, device=device, num_params=num_params))
        tracker.log_artifact(run_dir / "config.yaml")

    progress = Progress(total_steps, step, t.batch_size, enabled=is_main and t.progress)
    status = "FAILED"

    def save(name: str, **extra) -> Path:
        """Gather every rank's RNG state; rank 0 writes ``checkpoints/<name>``."""
        rng = dist.all_gather_object(checkpoint.rng_state())
        path = run_dir / "checkpoints" / name
        payload = engine.state_dict()  # every rank: ZeRO-1/2 gathers optimizer shards collectively
        if writes:
            payload.update(step=step, epoch=step // t.steps_per_epoch, rng=rng, config=to_dict(cfg),
                           mlflow_run_id=tracker.run_id, best=best, run_name=t.run_name,
                           data={"reseed_step": step - step % boundary, "seed": t.seed}, **extra)
            checkpoint.save(path, payload)
        dist.barrier()
        return path

    try:
        stream, window, sums = None, [], {}
        model.train()
        while step < total_steps:
            if stream is None or step % boundary == 0:
                torch.manual_seed(support.derived_seed(t.seed, rank, step))
                stream = support.train_stream(cfg, sources, micro_batch=micro_batch, step=step)
            tic = time.perf_counter()
            data_wait, sums = 0.0, {}
            for micro in range(t.grad_accum):
                wait_start = time.perf_counter()
                batch = next(stream)
                data_wait += time.perf_counter() - wait_start
                batch = {**batch, "image": to_layout(batch["image"], layout)}  # first: prepare_input sees 5-D as 5-D
                batch = {k: engine.prepare_input(v) if torch.is_tensor(v) else v for k, v in batch.items()}
                with engine.autocast():
                    losses = method.losses(engine.model, batch)
                engine.backward(losses["total"] / t.grad_accum, sync=micro == t.grad_accum - 1)
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + value.detach().float() / t.grad_accum
            if dist.any_rank(~torch.isfinite(sums["total"])):  # reduced on the device: one host sync per step
                bad_losses = dist.all_gather_object({k: float(v) for k, v in sums.items()})
                path = run_dir / "checkpoints" / f"nan_step{step}.pt"
                if writes:
                    checkpoint.save(path, {"model": engine.unwrap().state_dict(), "step": step,
                                           "losses_per_rank": bad_losses, "config": to_dict(cfg),
                                           "batch_rank0": {k: v.cpu() for k, v in batch.items() if torch.is_tensor(v)}})
                raise FloatingPointError(f"non-finite loss at step {step} (losses per rank: {bad_losses}); "
                                         f"model, batch and losses saved to {path} for inspection")
            lr = engine.lr
            grad_norm = engine.step()  # a device tensor: read only when logged
            step += 1
            step_s = time.perf_counter() - tic
            progress.update(sums["total"], data_wait, step_s)
            window.append((data_wait, step_s))
            if step % t.log_every_steps == 0 or step == total_steps:
                _log_train(sums, lr, grad_norm, window, t.batch_size, step, log, tracker)
                window = []
            if step % t.steps_per_epoch == 0 and not dry_run:
                epoch = step // t.steps_per_epoch
                if epoch % cfg.eval.val_every_epochs == 0:
                    best = _validate(cfg, engine, epoch, step, best, save, log, tracker, report, device)
            if not dry_run and (step % boundary == 0 or step == total_steps):
                save("last.pt")
        if dry_run:
            status = "FINISHED"
            return {"step": step, **{f"loss_{k}": float(v) for k, v in sums.items()}}
        save("final.pt")
        result = {"run_dir": str(run_dir), "run_id": tracker.run_id, "step": step,
                  f"best_val_{cfg.eval.select_metric}": best}
        if cfg.eval.test_split:
            result.update(_test(cfg, engine, run_dir, device, step, log, tracker))
        if writes:
            for png in support.plot_curves(log.read(), run_dir / "plots"):
                tracker.log_artifact(png, "plots")
        status = "FINISHED"
        return result
    finally:
        progress.close()
        tracker.close(status)
        folder.release(status)


def _log_train(sums, lr, grad_norm, window, global_batch, step, log, tracker) -> None:
    """Mean losses over ranks (one all-reduce), lr, grad norm, throughput, data-wait share."""
    names = sorted(sums)
    stacked = dist.all_reduce_sum(torch.stack([sums[k] for k in names]).float()) / dist.world_size()
    wait = sum(w for w, _ in window)
    busy = sum(s for _, s in window)
    values = {f"loss_{k}": v for k, v in zip(names, stacked.tolist())}
    values.update(lr=lr, grad_norm=float(grad_norm), patches_per_s=global_batch * len(window) / max(busy, 1e-9),
                  data_wait_share=wait / max(busy, 1e-9))
    log.write("train", step, values)
    tracker.log_metrics(values, step)


def _validate(cfg, engine, epoch, step, best, save, log, tracker, report, device) -> float:
    """Validate, update best.pt by ``eval.select_metric``; return the new best score."""
    _, summary = support.evaluate_summary(engine.unwrap(), cfg, "validation", device=device,
                                          out_dir=None, write_images=False)
    values = {f"val_{k}": mean for k, (mean, _) in summary.items()}
    score = summary[cfg.eval.select_metric][0]
    if epoch < cfg.eval.select_from_epoch or score > best:
        best = score
        save("best.pt")
    values[f"best_val_{cfg.eval.select_metric}"] = best
    log.write("val", step, {"epoch": epoch, **values})
    tracker.log_metrics(values, step)
    if report is not None:
        report({"epoch": epoch, "step": step, **values})
    return best


def _test(cfg, engine, run_dir, device, step, log, tracker) -> dict:
    """Evaluate ``eval.test_split`` with the ``eval.test_checkpoint`` weights; rank 0 gets tables
    (``metrics.csv``, ``summary.{csv,md}``), overlays and probability maps under ``eval/<split>``."""
    from dias_dist.evaluation.tables import flat_metrics

    model = engine.unwrap()
    weights = run_dir / "checkpoints" / f"{cfg.eval.test_checkpoint}.pt"
    if not dist.broadcast_object(weights.is_file()):
        raise ValueError(f"eval.test_checkpoint={cfg.eval.test_checkpoint!r} but {weights} was never written "
                         f"(no validation ran? eval.val_every_epochs={cfg.eval.val_every_epochs}); use best | final")
    model.load_state_dict(support.broadcast_model_state(weights))
    out_dir = run_dir / "eval" / cfg.eval.test_split
    rows, summary = support.evaluate_summary(model, cfg, cfg.eval.test_split, device=device,
                                             out_dir=out_dir, write_images=cfg.eval.overlays)
    flat = flat_metrics(summary, "test")  # test_dsc, test_dsc_std, ... (evaluate_split wrote the tables)
    if log.enabled:  # rank 0 of a run that writes
        log.write("test", step, flat)
        tracker.log_metrics(flat, step)
        tracker.log_artifact(out_dir, f"eval/{cfg.eval.test_split}")
    return flat
