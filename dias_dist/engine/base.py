"""The engine protocol and what the engines share (no engine imports another).

An engine owns the wrapped model, backward, the optimizer step (clipping, zero_grad, the lr
schedule) and mixed precision. The trainer builds the optimizer and the schedule once and hands
them over with the ``dist`` section of the config and the ``StepSettings`` it resolved from the
``train`` and ``optim`` sections; an engine never sees the whole config.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from dias_dist import dist

ENGINES = ("ddp", "deepspeed")
# ``optimizer["format"]`` of a checkpoint whose optimizer state DeepSpeed ZeRO-1/2 (or bf16) sharded.
SHARDED_FORMAT = "deepspeed-zero-sharded"


@dataclass(frozen=True)
class StepSettings:
    """The parts of ``train`` / ``optim`` an engine needs, resolved for this rank's device."""

    amp: bool = False  # bf16 autocast (train.amp on CUDA, train.cpu_bf16 on CPU)
    channels_last: bool = False  # channels-last memory format (honoured on CUDA only)
    grad_clip: float = 0.0  # optim.grad_clip; 0 = no clipping
    batch_size: int = 1  # train.batch_size, the global batch
    grad_accum: int = 1  # train.grad_accum, micro-batches per optimizer step


class Engine(Protocol):
    """``model`` (wrapped, for forward), ``autocast()`` (context for forward + loss), ``prepare_input(x)``
    (to device / memory format), ``backward(loss, sync)``, ``step() -> grad_norm`` (clip, optimizer,
    zero_grad, lr schedule; the norm is a 0-d tensor on the device, so a step costs no host sync),
    ``unwrap()``, ``lr``, ``state_dict()`` (collective: every rank calls it, rank 0 gets the complete
    state it writes, the other ranks ``{}``) / ``load_state_dict()``."""

    model: nn.Module
    device: torch.device
    tags: dict  # run tags the trainer logs (e.g. ``sync_batchnorm``)

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor: ...

    def backward(self, loss: torch.Tensor, *, sync: bool) -> None: ...

    def step(self) -> torch.Tensor: ...

    def unwrap(self) -> nn.Module: ...

    @property
    def lr(self) -> float: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def micro_batch_size(batch_size: int, grad_accum: int) -> int:
    """Micro-batch size per rank: ``batch_size / (world size x grad_accum)``; ValueError when the
    global batch does not divide."""
    world = dist.world_size()
    if grad_accum < 1 or batch_size % (world * grad_accum):
        raise ValueError(f"train.batch_size={batch_size} must be divisible by world size {world} "
                         f"x train.grad_accum {grad_accum}")
    return batch_size // (world * grad_accum)


def grad_norm(parameters) -> torch.Tensor:
    """Global L2 norm of the gradients of ``parameters`` (those with a ``.grad``), a 0-d tensor on
    their device (no host sync); 0 when none has a gradient."""
    return torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])


_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def sync_batchnorm(model: nn.Module, enabled: bool, *, world_size: int,
                   device: torch.device) -> tuple[nn.Module, str]:
    """Convert every BatchNorm of ``model`` to SyncBatchNorm when several ranks split the global batch.

    Without it each rank normalises with the statistics of its own micro-batch (batch / world size
    samples), unlike one process on the whole batch. Returns the model (converted or as given; the
    converted layers keep the same Parameter objects, so an optimizer built before stays valid) and the
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
