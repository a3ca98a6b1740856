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
"""
from __future__ import annotations

import os
import re

from dias_dist.config import Config, derive

HOLDER_EXIT_WAIT_S = 60.0  # a restarted rank 0 waits this long for the old one to let go of the run folder


def restart_count() -> int:
    """How often torchrun has restarted this worker group (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


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
        if cfg.train.resume == "never":
            updates["train.resume"] = "auto"
        if cfg.train.overwrite:
            updates["train.overwrite"] = False
    return derive(cfg, updates, "elastic restart") if updates else cfg


def lock_wait_s() -> float:
    """Seconds to wait for the run folder's lock: the previous attempt's rank 0 may still be exiting."""
    return HOLDER_EXIT_WAIT_S if restart_count() > 0 else 0.0
