"""Process-group setup and rank helpers. With ``dias_dist.engine`` the only code that touches torch.distributed.

Works under torchrun (one node or many, c10d rendezvous), under Ray Train (a process group that
already exists is reused, never re-created) and as a plain single process (no group at all).
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as tdist

from dias_dist.config import DistConfig

_OWNS_GROUP = False


def init(cfg: DistConfig | str = "auto", device: str = "auto") -> torch.device:
    """Join the process group described by the torchrun env vars (if any) and pick this rank's device.

    cfg: the ``dist`` section (its ``backend`` is used), or a backend name (scripts, tests):
    auto | nccl | gloo ("auto" = nccl when the device is CUDA, else gloo).
    device:  auto | cpu | cuda (``train.device``). Returns the torch.device this rank should use.
    """
    global _OWNS_GROUP
    backend = cfg if isinstance(cfg, str) else cfg.backend
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1)) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"dist.backend must be auto, nccl or gloo, got {backend!r}")
    if tdist.is_available() and not tdist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        tdist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30),
                                 device_id=dev if use_cuda else None)
        _OWNS_GROUP = True
    return dev


def teardown() -> None:
    """Destroy the process group if this module created it."""
    global _OWNS_GROUP
    if _OWNS_GROUP and tdist.is_initialized():
        tdist.destroy_process_group()
    _OWNS_GROUP = False


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity without a group); returns ``t``."""
    if is_distributed():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """In-place max over ranks (identity without a group); returns ``t``."""
    if is_distributed():
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return t


def any_rank(flag: torch.Tensor) -> bool:
    """True on every rank if the one-element (bool) tensor ``flag`` is true on any rank (NaN stops):
    reduced on ``flag``'s device, so the only host sync is the final ``.item()``."""
    return bool(all_reduce_max(flag.detach().float().reshape(1)).item() > 0)


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank; a one-element list without a group."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Gather a picklable object from every rank onto rank ``dst`` only: the list there, None elsewhere
    (a one-element list without a group). Cheaper than ``all_gather_object`` when one rank writes."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == dst else None
    tdist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]
