"""AdamW parameter groups and the per-iteration cosine schedule with linear warm-up (docs/REFERENCE.md §1).

The reference uses timm's ``CosineLRScheduler`` stepped every iteration: linear warm-up from
``warmup_lr`` over ``warmup_epochs`` epochs of iterations, then a half cosine from the base lr
down to ``min_lr`` at ``epochs * steps_per_epoch`` iterations (warm-up included in the cosine
span, no warm-up prefix, one cycle). The reference's one-epoch offset (it passes
``epoch * iters + idx`` with epoch starting at 1) is not reproduced: step 0 here is the first
optimizer step of training. No weight decay on 1-D parameters (norms) and biases.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dias_dist.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed (>=2-D weights) and not decayed (1-D params and biases)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def cosine_warmup_lr(step: int, *, base_lr: float, total_steps: int, warmup_steps: int,
                     warmup_lr: float, min_lr: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based), timm CosineLRScheduler semantics."""
    if step < warmup_steps:
        return warmup_lr + step * (base_lr - warmup_lr) / warmup_steps
    if step >= total_steps:
        return min_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * step / total_steps))


class WarmupCosine:
    """Sets ``lr`` of every param group of ``optimizer`` from ``cosine_warmup_lr`` once per step.

    ``step()`` is called after each optimizer step; ``state_dict`` holds only the step count;
    ``curve()`` names the curve (``cosine_warmup_lr``'s arguments besides the step).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, base_lr: float, total_steps: int,
                 warmup_steps: int, warmup_lr: float, min_lr: float):
        if total_steps <= 0:
            raise ValueError(f"schedule: total_steps must be > 0 (train.epochs * train.steps_per_epoch), got {total_steps}")
        self.optimizer = optimizer
        self._curve = dict(base_lr=base_lr, total_steps=total_steps, warmup_steps=warmup_steps,
                           warmup_lr=warmup_lr, min_lr=min_lr)
        self.last_step = 0
        self._apply()

    def curve(self) -> dict[str, float | int]:
        """``{"base_lr", "total_steps", "warmup_steps", "warmup_lr", "min_lr"}`` of this schedule (a copy)."""
        return dict(self._curve)

    def lr(self) -> float:
        return cosine_warmup_lr(self.last_step, **self._curve)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self._apply()


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, epochs: int,
                    steps_per_epoch: int) -> tuple[torch.optim.AdamW, WarmupCosine]:
    """AdamW + WarmupCosine from the ``optim`` section over ``epochs * steps_per_epoch`` steps.

    The schedule owns the learning rate: it sets every group's lr at construction and each step.
    """
    if len(cfg.betas) != 2:
        raise ValueError(f"optim.betas must have two values, got {cfg.betas!r}")
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=tuple(float(b) for b in cfg.betas), eps=cfg.eps)
    schedule = WarmupCosine(optimizer, base_lr=cfg.lr, total_steps=epochs * steps_per_epoch,
                            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
                            warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr)
    return optimizer, schedule
