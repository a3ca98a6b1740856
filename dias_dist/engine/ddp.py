"""DistributedDataParallel engine (and the plain single-process case): the only place DDP is used.

- Several processes (torchrun): DDP with the group ``dias_dist.dist.init`` created (NCCL on GPU,
  gloo on CPU). One process: the bare model, same code path otherwise.
- Gradient accumulation: micro-batches before the last one run under ``no_sync()`` so the
  all-reduce happens once per optimizer step.
- bf16 autocast (no GradScaler needed for bf16) when ``settings.amp`` (the trainer resolves it
  with ``TrainConfig.bf16_autocast``: ``train.amp`` on CUDA, ``train.cpu_bf16`` on CPU).
- SyncBatchNorm for models with BatchNorm when world size > 1 on GPU (``dist.sync_batchnorm``);
  the ``sync_batchnorm`` run tag says whether it is on.
- ``channels_last`` memory format on CUDA when ``settings.channels_last`` (for 4-D convs).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dias_dist import dist
from dias_dist.config import DistConfig

from .base import SHARDED_FORMAT, StepSettings, bf16_autocast, grad_norm, sync_batchnorm


class DDPEngine:
    """See module docstring. ``step()`` returns the global L2 gradient norm (0-d tensor) before clipping."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule, cfg: DistConfig,
                 settings: StepSettings, *, device: torch.device):
        self.device = device
        self.grad_clip = settings.grad_clip
        self.use_amp = settings.amp
        self.channels_last = settings.channels_last and device.type == "cuda"
        model, sync_bn = sync_batchnorm(model, cfg.sync_batchnorm, world_size=dist.world_size(), device=device)
        self.tags = {"sync_batchnorm": sync_bn}
        model = model.to(device)  # in place: the optimizer's parameters stay the model's
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._module = model
        self.optimizer, self.schedule = optimizer, schedule
        if dist.world_size() > 1:
            self.model: nn.Module = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters)
        else:
            self.model = model

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the engine's device when enabled, else a no-op context."""
        return bf16_autocast(self.device, self.use_amp)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Move a batch tensor to the device (non-blocking), channels-last for 4-D float input when set."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4 and x.is_floating_point():
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def backward(self, loss: torch.Tensor, *, sync: bool) -> None:
        """loss.backward(); with ``sync=False`` the DDP gradient all-reduce is deferred (accumulation)."""
        if not sync and isinstance(self.model, DistributedDataParallel):
            with self.model.no_sync():
                loss.backward()
        else:
            loss.backward()

    def step(self) -> torch.Tensor:
        """Clip (if optim.grad_clip > 0), optimizer step, zero_grad, advance the lr schedule;
        returns the gradient norm before clipping (0-d tensor on the device, no host sync)."""
        params = list(self._module.parameters())
        norm = grad_norm(params)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        return norm

    def unwrap(self) -> nn.Module:
        return self._module

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"model": self._module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        optim = state.get("optimizer")
        if isinstance(optim, dict) and optim.get("format") == SHARDED_FORMAT:
            raise ValueError("this checkpoint's optimizer state is in the earlier sharded format of DeepSpeed "
                             "ZeRO-1/2; resume it once with dist.engine=deepspeed and the same ZeRO stage and world "
                             "size (its next checkpoint resumes under any engine; dias evaluate reads its weights "
                             "under any engine)")
        self._module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
