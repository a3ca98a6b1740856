"""DeepSpeed engine (ZeRO stage 0/1/2, optional bf16): the only module that imports deepspeed.

Same protocol as ``DDPEngine`` (ARCHITECTURE.md), so the training loop does not change:
- ``deepspeed.initialize`` gets the client AdamW and the ``WarmupCosine`` schedule the trainer built
  (DeepSpeed's own "Adam" JIT-compiles a C++ op, docs/REFERENCE.md §10).
- The JSON at ``dist.deepspeed_config`` holds the DeepSpeed-specific part (ZeRO stage, bf16, bucket
  sizes, optional gradient_clipping). Keys the dias config decides may be present as ``"auto"``
  (filled from it, as the Hugging Face Trainer does) or with the same value; a value that contradicts
  the dias config is a ``ValueError`` naming the key and both values (``read_deepspeed_config``).
  The batch geometry comes from ``StepSettings`` (``train.*``), the optimizer and schedule from the
  objects the trainer built (``optim.*``): their ``optimizer`` / ``scheduler`` sections only describe
  them and are not handed to DeepSpeed.
- ZeRO-3 is refused when the JSON is read (``zero_optimization.stage``; reason in ``ZERO3_REASON``).
- Gradient accumulation: ``backward(loss, sync)`` marks the accumulation boundary itself
  (``set_gradient_accumulation_boundary``) and does not rescale the loss, like DDP's ``no_sync``.
- bf16 (``"bf16": {"enabled": true}``) keeps bf16 weights with fp32 master copies in the optimizer;
  ``prepare_input`` casts float inputs to bf16 then. Without it, bf16 autocast follows ``settings.amp``
  exactly as the DDP engine does.

Checkpoints do not depend on the world size, the ZeRO stage or the engine (``state_dict`` is
COLLECTIVE under ZeRO 1/2 and bf16: every rank must call it; rank 0 gets the complete state and
writes it, the other ranks get ``{}``):
- ``model``: the full fp32 weights of the bare module; under bf16 the fp32 master weights (the bf16
  weights are these rounded), so ``dias evaluate`` reads them like a DDP checkpoint.
- ``optimizer``: a plain ``torch.optim.AdamW`` state dict (per parameter ``step``, ``exp_avg``,
  ``exp_avg_sq``), the format DDP and ZeRO-0 fp32 write. ZeRO-1/2 and bf16 partition the fp32
  master weights and the AdamW state over the ranks; DeepSpeed's own accessors
  (``deepspeed.utils.safe_get_full_*`` / ``safe_set_full_*``, the per-parameter view its universal
  checkpoints are built on) assemble them at save and partition them at load for the world size
  and stage that resumes. docs/DECISIONS.md says why this and not DeepSpeed's checkpoint folders.
- Files of the earlier sharded format (``optimizer["format"] == SHARDED_FORMAT``: every rank's flat
  partition) are still read, and only under the stage, bf16 setting and world size that wrote them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dias_dist import dist
from dias_dist.config import DistConfig, config_file
from dias_dist.schedule import WarmupCosine

from .base import SHARDED_FORMAT, StepSettings, bf16_autocast, grad_norm, micro_batch_size, sync_batchnorm

AUTO = "auto"
ADAM_STATE_KEYS = ("exp_avg", "exp_avg_sq")
ZERO3_REASON = (
    "ZeRO-3 partitions the weights themselves, and the trainer runs the bare module outside the engine: "
    "validation and testing forward each rank's own share of the sequences, whose counts differ between "
    "ranks, and under stage 3 every forward all-gathers the weights collectively, so the ranks' collectives "
    "no longer match (a hang, or a call silently paired with the wrong one); rank 0 alone reads the weights "
    "for nan_step*.pt. The models here fit on one device: use stage 2 (gradients and optimizer state partitioned)")


@dataclass(frozen=True)
class OptimSettings:
    """What the trainer's AdamW and ``WarmupCosine`` schedule were built from (``optim.*``,
    ``train.epochs`` x ``train.steps_per_epoch``), for the ``optimizer`` / ``scheduler`` sections."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    total_steps: int
    warmup_steps: int
    warmup_lr: float
    min_lr: float

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer, schedule) -> "OptimSettings | None":
        """From the built objects; None when the schedule is not a ``WarmupCosine``."""
        if not isinstance(schedule, WarmupCosine):
            return None
        curve = schedule.curve()
        groups = optimizer.param_groups
        return cls(lr=float(curve["base_lr"]), weight_decay=max(float(g["weight_decay"]) for g in groups),
                   betas=tuple(float(b) for b in groups[0]["betas"]), eps=float(groups[0]["eps"]),
                   total_steps=int(curve["total_steps"]), warmup_steps=int(curve["warmup_steps"]),
                   warmup_lr=float(curve["warmup_lr"]), min_lr=float(curve["min_lr"]))


def _same(given, wanted) -> bool:
    if isinstance(wanted, str):
        return given == wanted
    if isinstance(wanted, (list, tuple)):
        return (isinstance(given, (list, tuple)) and len(given) == len(wanted)
                and all(_same(a, b) for a, b in zip(given, wanted)))
    if isinstance(given, bool) or not isinstance(given, (int, float)):
        return False
    return math.isclose(given, wanted, rel_tol=1e-9, abs_tol=1e-15)


def _fill(section: dict, where: str, values: dict, path: Path) -> dict:
    """``section`` with every key of ``values`` ({key: (dias source, value)}) set: ``"auto"`` or a
    missing key takes the dias value, an equal value stays, anything else is a ValueError; keys that
    ``values`` does not know are a ValueError listing the valid ones."""
    if not isinstance(section, dict):
        raise ValueError(f"{path}: {where.rstrip('.') or 'the config'} must be a JSON object, got {section!r}")
    unknown = sorted(set(section) - set(values))
    if unknown:
        raise ValueError(f"{path}: {where}{unknown[0]} is not understood here (the trainer owns this part); "
                         f"valid keys: {', '.join(values)}")
    out = dict(section)
    for key, (source, value) in values.items():
        given = section.get(key, AUTO)
        if given != AUTO and not _same(given, value):
            raise ValueError(f"{path}: {where}{key} = {given!r} contradicts {source} = {value!r}; "
                             f"set it to \"auto\" or to {value!r}")
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _only_type_and_params(section: dict, name: str, path: Path) -> None:
    extra = sorted(set(section) - {"type", "params"})
    if extra:
        raise ValueError(f"{path}: {name}.{extra[0]} is not understood here; valid keys: type, params")


def _fill_optimizer(section, optim: OptimSettings | None, path: Path) -> dict:
    """The JSON's ``optimizer`` section checked against the trainer's torch AdamW."""
    if optim is None:
        raise ValueError(f"{path}: an \"optimizer\" section needs the trainer's optimizer to check it against")
    if not isinstance(section, dict):
        raise ValueError(f"{path}: optimizer must be an object, got {section!r}")
    kind = section.get("type", AUTO)
    if kind != AUTO and str(kind).lower() != "adamw":
        raise ValueError(f"{path}: optimizer.type = {kind!r} contradicts the trainer's optimizer = 'AdamW' "
                         f"(torch.optim.AdamW from optim.*); set it to \"auto\" or \"AdamW\"")
    params = _fill(section.get("params", {}), "optimizer.params.", {
        "lr": ("optim.lr", optim.lr), "weight_decay": ("optim.weight_decay", optim.weight_decay),
        "betas": ("optim.betas", optim.betas), "eps": ("optim.eps", optim.eps)}, path)
    _only_type_and_params(section, "optimizer", path)
    return {"type": "AdamW", "params": params}


def _fill_scheduler(section, optim: OptimSettings | None, path: Path) -> dict:
    """The JSON's ``scheduler`` section checked against the trainer's ``WarmupCosine``, named with
    DeepSpeed's ``WarmupCosineLR`` parameters (ratios are of ``optim.lr``)."""
    if optim is None:
        raise ValueError(f"{path}: a \"scheduler\" section needs the trainer's schedule to check it against")
    if not isinstance(section, dict):
        raise ValueError(f"{path}: scheduler must be an object, got {section!r}")
    kind = section.get("type", AUTO)
    if kind not in (AUTO, "WarmupCosineLR"):
        raise ValueError(f"{path}: scheduler.type = {kind!r} contradicts the trainer's schedule = 'WarmupCosineLR' "
                         f"(linear warm-up, then cosine to optim.min_lr); set it to \"auto\" or \"WarmupCosineLR\"")
    ratio = (lambda value: value / optim.lr) if optim.lr else (lambda value: 0.0)
    params = _fill(section.get("params", {}), "scheduler.params.", {
        "total_num_steps": ("train.epochs x train.steps_per_epoch", optim.total_steps),
        "warmup_num_steps": ("optim.warmup_epochs x train.steps_per_epoch", optim.warmup_steps),
        "warmup_min_ratio": ("optim.warmup_lr / optim.lr", ratio(optim.warmup_lr)),
        "cos_min_ratio": ("optim.min_lr / optim.lr", ratio(optim.min_lr)),
        "warmup_type": ("the trainer's warm-up", "linear")}, path)
    _only_type_and_params(section, "scheduler", path)
    return {"type": "WarmupCosineLR", "params": params}


def _leftover_auto(value, where: str = "") -> str | None:
    if value == AUTO:
        return where
    if isinstance(value, dict):
        for key, item in value.items():
            found = _leftover_auto(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    return None


def read_deepspeed_config(path: str | Path, settings: StepSettings, optim: OptimSettings | None = None) -> dict:
    """The DeepSpeed JSON at ``path`` resolved against the dias config.

    ``"auto"`` (or a missing key) is filled, an equal value kept, for: ``train_batch_size``
    (train.batch_size), ``gradient_accumulation_steps`` (train.grad_accum),
    ``train_micro_batch_size_per_gpu`` (their quotient over the world size), ``gradient_clipping``
    (optim.grad_clip), ``bf16.enabled`` (``settings.amp``: train.amp on CUDA, train.cpu_bf16 on CPU),
    ``fp16.enabled`` (false), and, given ``optim``, the ``optimizer`` section (type AdamW; lr,
    weight_decay, betas, eps) and the ``scheduler`` section (type WarmupCosineLR; total_num_steps,
    warmup_num_steps, warmup_min_ratio, cos_min_ratio, warmup_type "linear"). The returned dict
    keeps both sections, resolved; the engine does not pass them to DeepSpeed.

    Raises ``ValueError`` naming the file and key for a missing file, bad JSON, a value that
    contradicts the dias config (both values named), an unknown key in those sections, "auto"
    anywhere else, a ZeRO stage outside 0..2 (ZeRO-3: ``ZERO3_REASON``), and when
    ``train.batch_size`` does not divide over the ranks and ``train.grad_accum``.
    """
    path = config_file(path)  # the default configs/deepspeed/zero1.json also from an installed package
    if not path.is_file():
        raise ValueError(f"dist.deepspeed_config: {path} does not exist")
    try:
        ds_config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(ds_config, dict):
        raise ValueError(f"{path}: the DeepSpeed config must be a JSON object")
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        raise ValueError(f"{path}: zero_optimization.stage = 3 is refused: {ZERO3_REASON}")
    if stage not in (0, 1, 2):
        raise ValueError(f"{path}: zero_optimization.stage = {stage!r}; this engine supports 0, 1, 2")
    micro = micro_batch_size(settings.batch_size, settings.grad_accum)
    world = dist.world_size()
    geometry = {
        "train_batch_size": ("train.batch_size", settings.batch_size),
        "gradient_accumulation_steps": ("train.grad_accum", settings.grad_accum),
        "train_micro_batch_size_per_gpu": (f"train.batch_size / (world size {world} x train.grad_accum)", micro),
    }
    ds_config.update(_fill({k: ds_config[k] for k in geometry if k in ds_config}, "", geometry, path))
    clip_json = ds_config.get("gradient_clipping", 0.0)
    clip_cfg = float(settings.grad_clip)
    if clip_json == AUTO:
        clip_json = clip_cfg
    elif isinstance(clip_json, bool) or not isinstance(clip_json, (int, float)):
        raise ValueError(f"{path}: gradient_clipping = {clip_json!r} is not a number or \"auto\"")
    if clip_json > 0 and clip_cfg > 0 and clip_json != clip_cfg:
        raise ValueError(f"{path}: gradient_clipping = {clip_json} contradicts optim.grad_clip = {clip_cfg}; "
                         f"set one of them (or \"auto\")")
    ds_config["gradient_clipping"] = max(float(clip_json), clip_cfg)
    for name, value in (("bf16", bool(settings.amp)), ("fp16", False)):
        section = ds_config.get(name)
        if isinstance(section, dict) and section.get("enabled") == AUTO:
            ds_config[name] = {**section, "enabled": value}
    if "optimizer" in ds_config:
        ds_config["optimizer"] = _fill_optimizer(ds_config["optimizer"], optim, path)
    if "scheduler" in ds_config:
        ds_config["scheduler"] = _fill_scheduler(ds_config["scheduler"], optim, path)
    left = _leftover_auto(ds_config)
    if left:
        raise ValueError(f"{path}: {left} = \"auto\", but \"auto\" is filled only for the batch keys, "
                         f"gradient_clipping, bf16/fp16.enabled and the optimizer/scheduler sections")
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
        self.ds_config = read_deepspeed_config(cfg.deepspeed_config, settings, OptimSettings.of(optimizer, schedule))
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
        # The torch AdamW's groups as the trainer built them (DeepSpeed replaces their parameter lists by
        # its flat partitions): the parameter numbering of a plain torch optimizer state dict.
        self._groups = [list(group["params"]) for group in optimizer.param_groups]
        # optimizer and scheduler are the client objects; the JSON's sections only described them
        init_config = {k: v for k, v in self.ds_config.items() if k not in ("optimizer", "scheduler")}
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=self.schedule, config=init_config)
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
        """This rank's flat fp32 master partition of each param group (ZeRO-1/2 or bf16)."""
        for name in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
            if hasattr(self.optimizer, name):
                return getattr(self.optimizer, name)
        raise AssertionError(f"unknown DeepSpeed optimizer {type(self.optimizer).__name__}")

    def _link_optimizer_state(self) -> None:
        """Point every parameter's optimizer-state fragment (what ``safe_*_optimizer_state`` read and write)
        at the current flat AdamW state tensors. DeepSpeed links them once, lazily, after the first step,
        and ZeRO-1/2 (0.19.8) do it inside the step of param group 0, before group 1 has any state: the
        fragments of later groups stay empty. Relinking is idempotent (views of the same tensors)."""
        self.optimizer._hp_optimizer_states_linked = False
        self.optimizer._lazy_init_hp_params_optimizer_state()

    def _param_names(self) -> dict[int, str]:
        names: dict[int, str] = {}
        for name, param in self.unwrap().named_parameters(remove_duplicate=False):
            names.setdefault(id(param), name)
        return names

    def state_dict(self) -> dict:
        """{"model": fp32 weights, "optimizer": plain AdamW state dict, "scheduler": ...} on rank 0, ``{}``
        on the other ranks. Collective when sharded: every rank takes part in assembling each parameter's
        fp32 weights and AdamW state (one all-reduce per tensor); only rank 0 keeps them."""
        masters, optimizer_state = self._assemble() if self.sharded else ({}, None)
        if not dist.is_main():
            return {}
        model_state = {k: _to_cpu(v.float() if v.is_floating_point() else v)
                       for k, v in self.unwrap().state_dict().items()}
        for name, param in self.unwrap().named_parameters(remove_duplicate=False):
            if id(param) in masters:
                model_state[name] = masters[id(param)]  # bf16: the fp32 master, not its rounding
        if optimizer_state is None:
            optimizer_state = _to_cpu(self._client_optimizer.state_dict())
        return {"model": model_state, "optimizer": optimizer_state, "scheduler": self.schedule.state_dict()}

    def _assemble(self) -> tuple[dict[int, torch.Tensor], dict]:
        """Collective: ({id(param): full fp32 master}, plain torch AdamW state dict) on rank 0, ({}, {}) elsewhere.

        Parameters are numbered as ``torch.optim.Optimizer.state_dict`` numbers them (groups in order)."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        keep = dist.is_main()
        base = self.optimizer.optimizer
        flat_states = [base.state.get(flat, {}) for flat in self._fp32_partitions()]
        if any("step" in flat_state for flat_state in flat_states):
            self._link_optimizer_state()
        masters, state, groups, index = {}, {}, [], 0
        for group, flat_state, base_group in zip(self._groups, flat_states, base.param_groups):
            stepped = "step" in flat_state  # the same on every rank: all ranks step together
            for param in group:
                master = safe_get_full_fp32_param(param)
                moments = {key: safe_get_full_optimizer_state(param, key) for key in ADAM_STATE_KEYS} if stepped else {}
                if keep:
                    masters[id(param)] = _to_cpu(master)
                    if stepped:
                        state[index] = {"step": _to_cpu(flat_state["step"]), **_to_cpu(moments)}
                index += 1
            groups.append({**{k: v for k, v in base_group.items() if k != "params"},
                           "params": list(range(index - len(group), index))})
        return masters, ({"state": state, "param_groups": _to_cpu(groups)} if keep else {})

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint of either engine, any ZeRO stage or bf16 setting and any world size
        (``state_dict()`` output); every rank calls it with the same ``state``."""
        saved = state["optimizer"]
        if isinstance(saved, dict) and saved.get("format") == SHARDED_FORMAT:
            self._load_sharded_format(state)
            return
        sizes = [len(g.get("params", ())) for g in saved.get("param_groups", [])] if isinstance(saved, dict) else None
        ours = [len(group) for group in self._groups]
        if sizes != ours:
            raise ValueError(f"checkpoint optimizer state has parameter groups of sizes {sizes}; this model's "
                             f"AdamW has {ours} (a different model or a foreign checkpoint)")
        steps = self._group_steps(saved) if self.sharded else None  # refused before anything is loaded
        self.unwrap().load_state_dict(state["model"])  # copy_ casts fp32 -> the bf16 weights if needed
        if self.sharded:
            self._distribute(state["model"], saved, steps)
        else:
            self._client_optimizer.load_state_dict(saved)
        self.schedule.load_state_dict(state["scheduler"])

    def _group_steps(self, saved: dict) -> list[torch.Tensor]:
        """The AdamW step count of each param group in ``saved`` (plain torch format; 0 for a group without
        state). ValueError when the parameters of one group disagree: ZeRO keeps one count per group."""
        entries, steps, index = saved["state"], [], 0
        for g, group in enumerate(self._groups):
            indices = range(index, index + len(group))
            index += len(group)
            counts = {float(entries[i]["step"]) for i in indices if i in entries}
            if len(counts) > 1:
                raise ValueError(f"checkpoint optimizer state: parameter group {g} has AdamW step counts "
                                 f"{sorted(counts)}; ZeRO keeps one count per group")
            first = next((i for i in indices if i in entries), None)
            steps.append(torch.as_tensor(entries[first]["step"]).clone() if first is not None else torch.tensor(0.0))
        return steps

    def _distribute(self, model_state: dict, saved: dict, steps: list[torch.Tensor]) -> None:
        """Partition fp32 masters (from ``model_state``) and AdamW state (``saved``, plain torch format, each
        group's step count in ``steps``: ``_group_steps``) over this world size: each rank copies the fragments
        it owns.

        ZeRO keeps one AdamW state per group (over its flat partition); a group the checkpoint has no
        state for starts at step 0 with zero moments, which is what torch's AdamW does for it."""
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        base, names, entries = self.optimizer.optimizer, self._param_names(), saved["state"]
        flats, index, spans = self._fp32_partitions(), 0, []
        for g, (group, flat, saved_group, step) in enumerate(zip(self._groups, flats, saved["param_groups"], steps)):
            indices = list(range(index, index + len(group)))
            index += len(group)
            spans.append((flat, step, group, indices))
            base.param_groups[g].update({k: v for k, v in saved_group.items()
                                         if k != "params" and k in base.param_groups[g]})
            for param in group:
                safe_set_full_fp32_param(param, model_state[names[id(param)]].to(flat.device, torch.float32))
        if not entries:  # a checkpoint taken before the first step: AdamW starts fresh, as torch's would
            for flat in flats:
                base.state.pop(flat, None)
            self.optimizer._hp_optimizer_states_linked = False  # DeepSpeed links the fragments after the next step
            return
        for flat, step, _, _ in spans:
            base.state[flat] = {"step": step, **{key: torch.zeros_like(flat) for key in ADAM_STATE_KEYS}}
        self._link_optimizer_state()  # each parameter's fragments: views of these flat tensors
        for _, _, group, indices in spans:
            for i, param in zip(indices, group):
                for key in ADAM_STATE_KEYS:
                    value = entries[i][key] if i in entries else torch.zeros(param.shape)
                    if tuple(value.shape) != tuple(param.shape):
                        raise ValueError(f"checkpoint optimizer state {key} of {names[id(param)]} has shape "
                                         f"{tuple(value.shape)}, the parameter {tuple(param.shape)}")
                    safe_set_full_optimizer_state(param, value.to(self.device, torch.float32), key)

    def _load_sharded_format(self, state: dict) -> None:
        """The earlier checkpoint format: every rank's flat partitions, valid only for the same layout."""
        saved = state["optimizer"]
        here = f"ZeRO-{self.zero_stage}{' bf16' if self.bf16 else ''} on {dist.world_size()} rank(s)"
        there = f"ZeRO-{saved['zero_stage']}{' bf16' if saved['bf16'] else ''} on {saved['world_size']} rank(s)"
        if not self.sharded or there != here:
            raise ValueError(f"checkpoint optimizer state is in the earlier sharded format of DeepSpeed {there} "
                             f"and cannot be resumed under DeepSpeed {here}; resume it once with the same stage, "
                             f"bf16 setting and world size (its next checkpoint resumes anywhere), or start a "
                             f"new run from its weights only")
        self.unwrap().load_state_dict(state["model"])
        own = saved["ranks"][dist.rank()]
        with torch.no_grad():
            for dst, src in zip(self._fp32_partitions(), own["fp32_partitions"]):
                dst.copy_(src)
        self.optimizer.optimizer.load_state_dict(own["base"])
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
