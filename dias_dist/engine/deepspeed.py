"""DeepSpeed engine (ZeRO stage 0/1/2, optional bf16): the only module that imports deepspeed.

Same protocol as ``DDPEngine`` (ARCHITECTURE.md), so the training loop does not change:
- ``deepspeed.initialize`` gets the client AdamW and the ``WarmupCosine`` schedule the trainer built
  (DeepSpeed's own "Adam" JIT-compiles a C++ op, docs/REFERENCE.md §10).
- The JSON at ``dist.deepspeed_config`` holds only the DeepSpeed-specific part (ZeRO stage,
  bf16, bucket sizes, optional gradient_clipping). Batch geometry and clipping come from the
  ``StepSettings`` (``train.*``, ``optim.grad_clip``), the optimizer/scheduler from the trainer: the
  JSON may not set them (``ValueError``).
- Gradient accumulation: ``backward(loss, sync)`` marks the accumulation boundary itself
  (``set_gradient_accumulation_boundary``) and does not rescale the loss, like DDP's ``no_sync``.
- bf16 (``"bf16": {"enabled": true}``) keeps bf16 weights with fp32 master copies in the optimizer;
  ``prepare_input`` casts float inputs to bf16 then. Without it, bf16 autocast follows ``settings.amp``
  exactly as the DDP engine does.

Checkpoints (``state_dict`` is COLLECTIVE under ZeRO 1/2: every rank must call it; rank 0 gets the
complete state and writes it, the other ranks get ``{}``):
- ``model``: the full weights in float32, so ``dias evaluate`` reads them like a DDP checkpoint.
- ``optimizer``: ZeRO-0 without bf16 steps the client AdamW itself, so its state is the plain
  torch format and resumes under either engine. ZeRO 1/2 (and bf16) shard the optimizer: the
  entry holds every rank's fp32 master partition + AdamW state and resumes only under DeepSpeed
  with the same stage, bf16 setting and world size; anything else is a ``ValueError`` saying so.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import torch
from torch import nn

from dias_dist import dist
from dias_dist.config import DistConfig, config_file

from .base import SHARDED_FORMAT, StepSettings, bf16_autocast, grad_norm, micro_batch_size, sync_batchnorm

# Keys the engine fills from cfg.train / cfg.optim; a JSON that sets them would be a second source of truth.
OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
              "optimizer", "scheduler")


def read_deepspeed_config(path: str | Path, settings: StepSettings) -> dict:
    """The DeepSpeed JSON at ``path`` completed from ``settings`` (batch geometry, clipping).

    Raises ``ValueError`` naming the file and key for a missing file, bad JSON, an owned key,
    a ZeRO stage outside 0..2, or a clipping value that contradicts ``optim.grad_clip``, and
    when ``train.batch_size`` does not divide over the ranks and ``train.grad_accum``.
    """
    path = config_file(path)  # the default configs/deepspeed/zero1.json also from an installed package
    if not path.is_file():
        raise ValueError(f"dist.deepspeed_config: {path} does not exist")
    try:
        ds_config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    owned = sorted(set(ds_config) & set(OWNED_KEYS))
    if owned:
        raise ValueError(f"{path}: key(s) {', '.join(owned)} are set by the trainer from train.batch_size, "
                         f"train.grad_accum and optim.*; remove them from the DeepSpeed JSON")
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise ValueError(f"{path}: zero_optimization.stage = {stage!r}; this engine supports 0, 1, 2")
    clip_json = float(ds_config.get("gradient_clipping", 0.0))
    clip_cfg = float(settings.grad_clip)
    if clip_json > 0 and clip_cfg > 0 and clip_json != clip_cfg:
        raise ValueError(f"{path}: gradient_clipping = {clip_json} contradicts optim.grad_clip = {clip_cfg}; "
                         f"set one of them")
    ds_config.update(train_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
                     train_micro_batch_size_per_gpu=micro_batch_size(settings.batch_size, settings.grad_accum),
                     gradient_clipping=max(clip_json, clip_cfg))
    ds_config.setdefault("zero_allow_untested_optimizer", True)  # the client torch AdamW
    return ds_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_rendezvous_env() -> None:
    """A plain single process (no torchrun) has no RANK/WORLD_SIZE; deepspeed would then try MPI
    discovery and fail on the missing mpi4py (docs/REFERENCE.md §10). Describe a one-process group instead."""
    if "WORLD_SIZE" in os.environ or dist.is_distributed():
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(_free_port()))


class DeepSpeedEngine:
    """See module docstring. ``step()`` returns the global L2 gradient norm (0-d tensor) before clipping."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule, cfg: DistConfig,
                 settings: StepSettings, *, device: torch.device):
        import deepspeed

        self.device = device
        self.ds_config = read_deepspeed_config(cfg.deepspeed_config, settings)
        self.bf16 = bool(self.ds_config.get("bf16", {}).get("enabled", False))
        self.zero_stage = int(self.ds_config.get("zero_optimization", {}).get("stage", 0))
        self.use_amp = settings.amp and not self.bf16
        self.channels_last = settings.channels_last and device.type == "cuda"
        if device.type == "cpu":
            # Otherwise init_distributed JIT-compiles the shm comm op with g++ (~1-2 min); gloo suffices.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        _ensure_rendezvous_env()
        deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else "nccl")
        model, sync_bn = sync_batchnorm(model, cfg.sync_batchnorm, world_size=dist.world_size(), device=device)
        self.tags = {"sync_batchnorm": sync_bn}
        model = model.to(device)  # in place: the optimizer's parameters stay the model's
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.schedule = schedule
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=self.schedule, config=self.ds_config)
        self._client_optimizer = optimizer
        # ZeRO-0 in fp32 steps the torch AdamW itself; everything else wraps and shards it.
        self.sharded = self.optimizer is not optimizer

    # -- training step -----------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast (train.amp on CUDA, train.cpu_bf16 on CPU) unless the JSON enables DeepSpeed bf16."""
        return bf16_autocast(self.device, self.use_amp)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """To the device; float input to bf16 when DeepSpeed bf16 is on (the weights are bf16)."""
        x = x.to(self.device, non_blocking=True)
        if x.is_floating_point():
            if self.bf16:
                x = x.to(torch.bfloat16)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
        return x

    def backward(self, loss: torch.Tensor, *, sync: bool) -> None:
        """Accumulate gradients; ``sync=True`` marks the last micro-batch before ``step``."""
        self.model.set_gradient_accumulation_boundary(sync)
        self.model.backward(loss, scale_wrt_gas=False)  # the trainer already scales, as under DDP

    def step(self) -> torch.Tensor:
        """Clip (gradient_clipping), optimizer step, zero_grad, lr schedule: one ``engine.step()``.

        Returns the global gradient norm before clipping as a 0-d tensor. ZeRO-1/2 (and bf16) shard the
        gradients, so their norm is DeepSpeed's (reduced over the partitions); an unwrapped ZeRO-0 fp32
        optimizer holds full gradients on every rank and DeepSpeed computes no norm without clipping,
        so it is taken here before the step, as the DDP engine does."""
        own_norm = None if self.sharded else grad_norm(self.model.module.parameters())
        self.model.step()
        norm = self.model.get_global_grad_norm()
        if norm is None:
            norm = own_norm if own_norm is not None else 0.0
        return torch.as_tensor(norm)

    def unwrap(self) -> nn.Module:
        return self.model.module

    @property
    def lr(self) -> float:
        return self._client_optimizer.param_groups[0]["lr"]

    # -- checkpoints ---------------------------------------------------------------------------

    def _fp32_partitions(self) -> list[torch.Tensor]:
        for name in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
            if hasattr(self.optimizer, name):
                return getattr(self.optimizer, name)
        raise AssertionError(f"unknown DeepSpeed optimizer {type(self.optimizer).__name__}")

    def state_dict(self) -> dict:
        """{"model": fp32 weights, "optimizer": ..., "scheduler": ...} on rank 0, ``{}`` on the other ranks.

        Collective when sharded (every rank sends its optimizer partition to rank 0, the only writer).
        """
        if self.sharded:
            own = {"fp32_partitions": [_to_cpu(p) for p in self._fp32_partitions()],
                   "base": _to_cpu(self.optimizer.optimizer.state_dict())}
            ranks = dist.gather_object(own, dst=0)
        if not dist.is_main():
            return {}
        model_state = {k: _to_cpu(v.float() if v.is_floating_point() else v)
                       for k, v in self.unwrap().state_dict().items()}
        if not self.sharded:
            optimizer_state = _to_cpu(self._client_optimizer.state_dict())
        else:
            optimizer_state = {"format": SHARDED_FORMAT, "zero_stage": self.zero_stage, "bf16": self.bf16,
                               "world_size": dist.world_size(), "ranks": ranks}
        return {"model": model_state, "optimizer": optimizer_state, "scheduler": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` output (or a DDP checkpoint where the formats allow it)."""
        saved = state["optimizer"]
        is_sharded = isinstance(saved, dict) and saved.get("format") == SHARDED_FORMAT
        here = f"ZeRO-{self.zero_stage}{' bf16' if self.bf16 else ''} on {dist.world_size()} rank(s)"
        if is_sharded:
            there = f"ZeRO-{saved['zero_stage']}{' bf16' if saved['bf16'] else ''} on {saved['world_size']} rank(s)"
            if not self.sharded or there != here:
                raise ValueError(f"checkpoint optimizer state is sharded for DeepSpeed {there} and cannot be "
                                 f"resumed under DeepSpeed {here}; resume with the same stage, bf16 setting "
                                 f"and world size, or start a new run from its weights only")
        elif self.sharded:
            raise ValueError(f"checkpoint optimizer state is a plain torch optimizer (DDP or DeepSpeed "
                             f"ZeRO-0 fp32) and cannot be resumed under DeepSpeed {here}; resume with "
                             f"dist.engine=ddp or configs/deepspeed/zero0.json")
        self.unwrap().load_state_dict(state["model"])  # copy_ casts fp32 -> the bf16 weights if needed
        if is_sharded:
            own = saved["ranks"][dist.rank()]
            with torch.no_grad():
                for dst, src in zip(self._fp32_partitions(), own["fp32_partitions"]):
                    dst.copy_(src)
            self.optimizer.optimizer.load_state_dict(own["base"])
        else:
            self._client_optimizer.load_state_dict(saved)
        self.schedule.load_state_dict(state["scheduler"])


def _to_cpu(obj):
    """A snapshot of a nested state: tensors copied to CPU (never aliasing the live buffers)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
