"""Engines own the wrapped model, backward, optimizer step, lr schedule and mixed precision.

Protocol (ARCHITECTURE.md): ``model`` (wrapped, for forward), ``autocast()`` (context for the
forward + loss), ``prepare_input(x)`` (to device / memory format), ``backward(loss, sync)``, ``step() -> grad_norm`` (clip, optimizer, zero_grad,
lr schedule), ``unwrap()``, ``lr``, ``state_dict()`` / ``load_state_dict()``.
``build_engine`` picks the engine named by ``cfg.dist.engine``; the trainer never imports DDP or
DeepSpeed itself.
"""
from __future__ import annotations

import contextlib
from typing import Protocol

import torch
from torch import nn


class Engine(Protocol):
    model: nn.Module
    device: torch.device

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor: ...

    def backward(self, loss: torch.Tensor, *, sync: bool) -> None: ...

    def step(self) -> float: ...

    def unwrap(self) -> nn.Module: ...

    @property
    def lr(self) -> float: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


ENGINES = ("ddp", "deepspeed")


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
