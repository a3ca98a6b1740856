"""The life of one training run around the loop: ``open_run(cfg)`` and the ``Run`` it returns.

``trainer.run`` uses it like this (the order is the contract; the tests of elastic restarts,
``start.json``, locks, failed starts and bit-exact resumes depend on it)::

    with open_run(cfg, dry_run=dry_run) as run:   # 1. name, folder, lock (nothing else exists yet)
        ... build the network and the engine from run.cfg (a failure here leaves nothing behind)
        state = run.restore(engine)                # 2. the checkpoint resumed from, or step 0
        run.start(state, method, model, tags)      # 3. config.yaml, MLflow run, start.json, params
        ... the loop, which calls run.save(name, engine, state) and logs to run.log / run.tracker
    # 4. tracker and folder closed with FINISHED, or FAILED when the block raised

1. ``open_run``: under torchrun the job's stable name and ``resume=auto`` after a restart
   (``elastic.continue_job``); the run name, folder and checkpoint to resume (``checkpoint.resolve_run``);
   the resolved config (absolute paths, the study); a restart of a job killed before its first
   checkpoint finds its ``start.json`` (``elastic.unfinished_start``); rank 0 claims and locks the
   folder (``folder.claim_on_main``).
2. ``restore``: engine state, step, best score, MLflow run id and this rank's RNG state.
3. ``start``: rank 0 writes ``config.yaml``, opens the tracker (continuing the run's MLflow run),
   writes ``start.json`` before the first step, skips what an earlier attempt already logged
   (``history.skip_logged``) and, at step 0, logs the resolved params, the tags and ``config.yaml``.
4. On exit: the tracker ends its MLflow run and the folder lock is released with the run's status.
   Whether a failed run keeps a folder it created is decided once, there: only when torchrun will
   restart the job and the folder holds the job's ``start.json`` (a restart continues it); otherwise a
   failed start leaves nothing behind (``folder.RunFolder.release``).

A dry run claims nothing and writes nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from dias_dist import console, dist
from dias_dist.config import Config, derive, to_dict
from dias_dist.models import count_parameters
from dias_dist.run import checkpoint, elastic, history
from dias_dist.run.folder import claim_on_main
from dias_dist.run.params import resolved_params
from dias_dist.run.track import MetricsLog, Tracker, make_tracker, run_tags, tracking_uri, with_study


@dataclass
class TrainState:
    """What a checkpoint restores besides the engine's state: the loop position and the selection."""

    step: int = 0
    best: float = -math.inf  # best validation ``eval.select_metric`` so far
    run_id: str = ""  # MLflow run (continued on resume)


class Run:
    """One open run (see the module docstring). Attributes: ``cfg`` (resolved: run name, absolute
    paths, study), ``dir`` (the run folder), ``uri`` (the MLflow store, "" without tracking),
    ``resume_from`` (checkpoint or None), ``writes`` (this process writes files and tracks: rank 0 of
    a run that is not a dry run), ``boundary`` (steps between checkpoints and re-seeds); after
    ``start``: ``log`` (``metrics.jsonl``) and ``tracker``."""

    def __init__(self, cfg: Config, run_dir: Path, uri: str, resume_from: Path | None, started: dict | None,
                 folder, dry_run: bool):
        self.cfg, self.dir, self.uri, self.resume_from = cfg, run_dir, uri, resume_from
        self.writes = dist.is_main() and not dry_run
        self.boundary = cfg.train.checkpoint_every_steps or cfg.train.steps_per_epoch
        self.log: MetricsLog | None = None
        self.tracker: Tracker | None = None
        self._started, self._folder, self._dry_run = started, folder, dry_run
        self._start_recorded = started is not None  # the folder holds this job's start.json

    def restore(self, engine) -> TrainState:
        """Load the checkpoint resumed from into ``engine`` (collective under ZeRO) and this rank's RNG
        state (any world size); returns its ``TrainState``, else step 0 (of the restarted job's MLflow run)."""
        if self.resume_from is None:
            return TrainState(run_id=self._started["mlflow_run_id"]) if self._started else TrainState()
        saved = checkpoint.load(self.resume_from)
        engine.load_state_dict(saved)
        checkpoint.restore_rng(saved["rng"], dist.rank())  # any world size
        return TrainState(int(saved["step"]), float(saved["best"]), saved["mlflow_run_id"])

    def start(self, state: TrainState, method, model: torch.nn.Module, device: torch.device, tags: dict) -> None:
        """Before the first step: ``config.yaml``, ``metrics.jsonl`` and the tracker (continuing
        ``state.run_id``), ``start.json``, nothing logged twice; at step 0 the params, ``tags`` (after the
        run's own: git SHA, shard manifest, device, parameter count) and ``config.yaml`` go to MLflow."""
        cfg, t, started = self.cfg, self.cfg.train, self._started is not None
        if not self._dry_run:
            checkpoint.prepare_run_folder(cfg, self.dir)
        log = MetricsLog(self.dir / "metrics.jsonl", enabled=self.writes)
        tracker = make_tracker(cfg.track, t.run_name, run_root=t.run_dir, method=cfg.method.name, is_main=self.writes,
                               resume_run_id=state.run_id)
        self.tracker = tracker  # closed on exit from here on
        if self.writes:  # before the first step: a restart finds this folder's MLflow run even without a checkpoint
            elastic.record_start(self.dir, tracker.run_id, self.uri)
            self._start_recorded = True
        self.log, self.tracker = history.skip_logged(log, tracker, state.step, self.uri,
                                                     resumed=self.resume_from is not None or started)
        if self.writes and state.step == 0:  # a new run, or a restart before the first checkpoint (the killed
            # attempt may have died before logging them; params it logged stay as they are)
            self.tracker.log_params(resolved_params(cfg, method, model, semi=cfg.track.tags["study"] == "semi"),
                                    keep_logged=started)
            self.tracker.set_tags({**run_tags(cfg.data.shards, device=device, num_params=count_parameters(model)),
                                   **tags})
            self.tracker.log_artifact(self.dir / "config.yaml")

    def save(self, name: str, engine, state: TrainState) -> Path:
        """Collective: gather every rank's RNG state and the engine state; rank 0 writes ``checkpoints/<name>``
        (the payload ``checkpoint`` describes). Returns its path."""
        rng = dist.all_gather_object(checkpoint.rng_state())
        path = self.dir / "checkpoints" / name
        payload = engine.state_dict()  # every rank: ZeRO-1/2 gathers optimizer shards collectively
        if self.writes:
            t = self.cfg.train
            payload.update(step=state.step, epoch=state.step // t.steps_per_epoch, rng=rng, config=to_dict(self.cfg),
                           mlflow_run_id=self.tracker.run_id, best=state.best, run_name=t.run_name,
                           data={"reseed_step": state.step - state.step % self.boundary, "seed": t.seed})
            checkpoint.save(path, payload)
        dist.barrier()
        return path

    def close(self, status: str) -> None:
        """End the MLflow run and release the folder with ``status`` (FINISHED | FAILED); idempotent."""
        # The one place that decides whether a failure keeps a folder this run created: only while it holds the
        # job's start.json and torchrun will restart the job (the restart continues folder and MLflow run). Without
        # a start.json a restart could not tell the folder from another job's and would refuse it.
        tracker, self.tracker = self.tracker, None
        try:
            if tracker is not None:
                tracker.close(status)
        finally:
            self._folder.keep_on_failure = self._start_recorded and elastic.restarts_left() > 0
            self._folder.release(status)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type is not None else "FINISHED")


def open_run(cfg: Config, *, dry_run: bool = False) -> Run:
    """Resolve and claim the run ``cfg`` describes (step 1 of the module docstring); use it as a context
    manager. Every rank calls it (the name is rank 0's, the claim's error is raised on every rank)."""
    cfg = elastic.continue_job(cfg)  # under torchrun --max-restarts: the same run name, resume after a restart
    name, _, resume_from = checkpoint.resolve_run(cfg.train, f"{cfg.model.name}-{cfg.method.name}")
    # paths that go into MLflow and checkpoints are absolute: `dias evaluate` works from any directory
    cfg = with_study(derive(cfg, {"train.run_name": name, "train.run_dir": console.absolute(cfg.train.run_dir),
                                  "data.shards": console.absolute(cfg.data.shards),
                                  "data.cache_dir": console.absolute(cfg.data.cache_dir)}, "resolved config"))
    run_dir = Path(cfg.train.run_dir) / name
    uri = tracking_uri(cfg.track, cfg.train.run_dir) if cfg.track.enabled else ""
    # a torchrun restart of a job killed before its first checkpoint: the same folder and MLflow run, from step 0
    started = elastic.unfinished_start(run_dir, uri) if resume_from is None and dist.is_main() and not dry_run else None
    folder = claim_on_main(run_dir, cfg.train, resume_from, enabled=not dry_run, wait_s=elastic.lock_wait_s(),
                           restarted_job=started is not None)
    return Run(cfg, run_dir, uri, resume_from, started, folder, dry_run)
