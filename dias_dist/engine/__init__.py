"""Engines: the only code besides ``dias_dist.dist`` that touches torch.distributed or DeepSpeed.

``build_engine`` picks the engine named by ``dist.engine``; the protocol and the shared helpers
are in ``engine/base.py``, so the trainer never imports DDP or DeepSpeed itself.
"""
from __future__ import annotations

import torch
from torch import nn

from dias_dist.config import DistConfig

from .base import ENGINES, SHARDED_FORMAT, Engine, StepSettings, micro_batch_size, sync_batchnorm
from .ddp import DDPEngine
from .deepspeed import DeepSpeedEngine  # deepspeed itself is imported only when the engine is built


def build_engine(model: nn.Module, optimizer: torch.optim.Optimizer, schedule, cfg: DistConfig,
                 settings: StepSettings, *, device: torch.device) -> Engine:
    """Wrap ``model`` (identical on every rank) and its ``optimizer`` / ``schedule`` for ``cfg.engine``."""
    if cfg.engine == "ddp":
        return DDPEngine(model, optimizer, schedule, cfg, settings, device=device)
    if cfg.engine == "deepspeed":
        return DeepSpeedEngine(model, optimizer, schedule, cfg, settings, device=device)
    raise ValueError(f"dist.engine = {cfg.engine!r} is not known; valid: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "SHARDED_FORMAT", "Engine", "StepSettings", "build_engine", "micro_batch_size", "sync_batchnorm"]
