"""Elastic restarts: under ``torchrun --max-restarts=N`` a failed worker restarts the whole group;
the restarted workers must continue the same run, not start a new one.

torchrun tells its workers the restart count (``TORCHELASTIC_RESTART_COUNT``) and the rendezvous
id (``TORCHELASTIC_RUN_ID``: ``--rdzv-id``, a fresh UUID per job for single-node and
``--standalone`` launches). ``continue_job(cfg)`` turns that into config values:

- no ``train.run_name`` given: the name is ``<model>-<method>-<rendezvous id>``, the same in every
  restart of one job (a timestamp would differ). With the default id ``none`` of multi-node static
  launches there is nothing job-specific to derive from; the timestamped name stays, and a restart
  falls back to ``resume=auto``'s "newest ``<model>-<method>-*`` run" rule.
- restart count > 0: ``train.resume=auto`` (continue from ``last.pt`` in the same folder, hence the
  same MLflow run) and ``train.overwrite=false`` (a restart must never delete what the first attempt
  saved).

A job killed before its first checkpoint has no ``last.pt``, so rank 0 also records, before the first
step, which job started the folder and its MLflow run (``start.json``, written atomically:
``record_start``). A restart of that job that finds no checkpoint but this record (``unfinished_start``)
keeps the folder and continues the same MLflow run from step 0; what the killed attempt had logged is
not logged again (``history.skip_logged``), and on CPU the re-run steps are bit-identical.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from dias_dist.config import Config, derive
from dias_dist.run.atomic import atomic_write

HOLDER_EXIT_WAIT_S = 60.0  # a restarted rank 0 waits this long for the old one to let go of the run folder
START_RECORD = "start.json"  # in the run folder: the job that started it and its MLflow run


def restart_count() -> int:
    """How often torchrun has restarted this worker group (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def restarts_left() -> int:
    """How many more times torchrun will restart this worker group if it fails (0 outside torchrun)."""
    return max(int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) - restart_count(), 0)


def job_id() -> str:
    """The rendezvous id of this torchrun job, made safe for a folder name; "" outside torchrun or
    for the non-unique default ``none``."""
    raw = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if raw in ("", "none"):
        return ""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)[:64]


def continue_job(cfg: Config) -> Config:
    """``cfg`` with the run name and resume policy an elastic job needs (see the module docstring)."""
    updates = {}
    if not cfg.train.run_name and job_id():
        updates["train.run_name"] = f"{cfg.model.name}-{cfg.method.name}-{job_id()}"
    if restart_count() > 0:
        if cfg.train.resume == "never" and not _held_by_another_job(cfg):
            updates["train.resume"] = "auto"
        if cfg.train.overwrite:
            updates["train.overwrite"] = False
    return derive(cfg, updates, "elastic restart") if updates else cfg


def _held_by_another_job(cfg: Config) -> bool:
    """Whether the folder of an explicitly named run already holds a run this job did not start: its
    ``start.json`` names another job, or it has none. Then the first attempt was refused (the folder is
    never overwritten without ``resume=auto`` / ``overwrite=true``), and the restart must be refused
    the same way, not turned into ``resume=auto`` on somebody else's run. Without a job id (static
    multi-node launches with the default ``--rdzv-id none``) ownership cannot be told, and the restart
    resumes as before (README, reliability)."""
    if not cfg.train.run_name or not job_id():
        return False  # a name derived from the job id is this job's own folder
    folder = Path(cfg.train.run_dir) / cfg.train.run_name
    if not folder.is_dir():
        return False
    record = read_start(folder)
    return record is None or record.get("job") != job_id()


def lock_wait_s() -> float:
    """Seconds to wait for the run folder's lock: the previous attempt's rank 0 may still be exiting."""
    return HOLDER_EXIT_WAIT_S if restart_count() > 0 else 0.0


def record_start(run_dir: str | Path, mlflow_run_id: str, tracking_uri: str) -> None:
    """Rank 0, before the first step: ``<run_dir>/start.json`` names this torchrun job (``job_id``, "" outside
    one), the MLflow run (``""`` without tracking) and its store (atomic: a restart reads all or nothing)."""
    with atomic_write(Path(run_dir) / START_RECORD, fsync=True) as handle:
        json.dump({"job": job_id(), "mlflow_run_id": mlflow_run_id, "tracking_uri": tracking_uri}, handle)


def unfinished_start(run_dir: str | Path, tracking_uri: str) -> dict | None:
    """The start record of ``run_dir`` if this process is a torchrun restart of the job that wrote it (same
    job id, same MLflow store); None otherwise (first attempt, no job id, another job's or no record).
    Called when there is no checkpoint to resume from: the restart then continues that folder and MLflow
    run (``record["mlflow_run_id"]``) from step 0."""
    if restart_count() == 0 or not job_id():
        return None
    record = read_start(run_dir)
    if record is None or record.get("job") != job_id() or record.get("tracking_uri") != tracking_uri:
        return None
    return record


def read_start(run_dir: str | Path) -> dict | None:
    """The start record of ``run_dir``; None when there is none or it cannot be read as a JSON object."""
    try:
        record = json.loads((Path(run_dir) / START_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
