"""Engines own the wrapped model, backward, optimizer step, lr schedule and mixed precision.

Protocol (ARCHITECTURE.md): ``model`` (wrapped, for forward), ``autocast()`` (context for the
forward + loss), ``prepare_input(x)`` (to device / memory format), ``backward(loss, sync)``,
``step() -> grad_norm`` (clip, optimizer, zero_grad, lr schedule; the norm is a 0-d tensor on the
device, so a step costs no host sync), ``unwrap()``, ``lr``, ``state_dict()`` (collective: every
rank calls it, rank 0 gets the complete state it writes) / ``load_state_dict()``.
``tags`` (dict of run tags the trainer logs, e.g. ``sync_batchnorm``).
``build_engine`` picks the engine named by ``cfg.dist.engine``; the trainer never imports DDP or
DeepSpeed itself.
"""
from __future__ import annotations

import contextlib
from typing import Protocol

import torch
from torch import nn

from dias_dist import dist


class Engine(Protocol):
    model: nn.Module
    device: torch.device
    tags: dict

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor: ...

    def backward(self, loss: torch.Tensor, *, sync: bool) -> None: ...

    def step(self) -> torch.Tensor: ...

    def unwrap(self) -> nn.Module: ...

    @property
    def lr(self) -> float: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


ENGINES = ("ddp", "deepspeed")
# ``optimizer["format"]`` of a checkpoint whose optimizer state DeepSpeed ZeRO-1/2 (or bf16) sharded.
SHARDED_FORMAT = "deepspeed-zero-sharded"


def micro_batch_size(cfg) -> int:
    """Micro-batch size per rank: ``train.batch_size / (world size x train.grad_accum)``;
    ValueError when the global batch does not divide."""
    t, world = cfg.train, dist.world_size()
    if t.grad_accum < 1 or t.batch_size % (world * t.grad_accum):
        raise ValueError(f"train.batch_size={t.batch_size} must be divisible by world size {world} "
                         f"x train.grad_accum {t.grad_accum}")
    return t.batch_size // (world * t.grad_accum)


def grad_norm(parameters) -> torch.Tensor:
    """Global L2 norm of the gradients of ``parameters`` (those with a ``.grad``), a 0-d tensor on
    their device (no host sync); 0 when none has a gradient."""
    return torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])


_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def sync_batchnorm(model: nn.Module, enabled: bool, *, world_size: int,
                   device: torch.device) -> tuple[nn.Module, str]:
    """Convert every BatchNorm of ``model`` to SyncBatchNorm when several ranks split the global batch.

    Without it each rank normalises with the statistics of its own micro-batch (batch / world size
    samples), unlike one process on the whole batch. Returns the model (converted or as given) and the
    value of the run tag ``sync_batchnorm``: "on", or "off (<why>)". PyTorch's SyncBatchNorm runs on GPUs
    only, so CPU runs (gloo) keep per-rank statistics and say so.
    """
    if not any(isinstance(m, _BATCHNORM) for m in model.modules()):
        return model, "off (no BatchNorm)"
    if world_size <= 1:
        return model, "off (world size 1)"
    if not enabled:
        return model, "off (dist.sync_batchnorm=false: per-rank statistics)"
    if device.type != "cuda":
        return model, f"off ({device.type}: SyncBatchNorm needs a GPU; per-rank statistics)"
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), "on"


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``enabled`` (CUDA or CPU), else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def build_engine(model: nn.Module, cfg, *, device: torch.device) -> Engine:
    """Wrap ``model`` (already built, identical on every rank) for ``cfg.dist.engine`` on ``device``."""
    name = cfg.dist.engine
    if name == "ddp":
        from .ddp import DDPEngine

        return DDPEngine(model, cfg, device=device)
    if name == "deepspeed":
        from .deepspeed import DeepSpeedEngine  # written with the kernels issue

        return DeepSpeedEngine(model, cfg, device=device)
    raise ValueError(f"dist.engine = {name!r} is not known; valid: {', '.join(ENGINES)}")
