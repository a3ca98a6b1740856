"""Process-group setup and rank helpers. With ``dias_dist.engine`` the only code that touches torch.distributed.

Works under torchrun (one node or many, c10d rendezvous), under Ray Train (a process group that
already exists is reused, never re-created) and as a plain single process (no group at all). Under
torchrun each attempt of the worker group (``--max-restarts``) forms its process group in a namespace of
the agent's store that no earlier attempt used (see ``_attempt_store``).
"""
from __future__ import annotations

import datetime
import os
import time
import uuid
from typing import Any

import torch
import torch.distributed as tdist

from dias_dist import devices
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
    use_cuda = devices.check(device)  # cuda without a usable GPU: ValueError with the reason; auto: warns
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1)) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"dist.backend must be auto, nccl or gloo, got {backend!r}")
    if tdist.is_available() and not tdist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        timeout = datetime.timedelta(minutes=30)
        store = _attempt_store(timeout)
        if store is None:  # plain env:// (no torchelastic agent store, e.g. TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1)
            tdist.init_process_group(backend=backend, timeout=timeout, device_id=dev if use_cuda else None)
        else:
            tdist.init_process_group(backend=backend, timeout=timeout, device_id=dev if use_cuda else None,
                                     store=store, rank=int(os.environ["RANK"]),
                                     world_size=int(os.environ["WORLD_SIZE"]))
        _OWNS_GROUP = True
    return dev


# --------------------------------------------------------------------------------------------
# torchelastic restarts and the agent's store
#
# Under torchrun the workers meet on the TCPStore that the torchrun agent hosts
# (TORCHELASTIC_USE_AGENT_STORE=True, MASTER_ADDR:MASTER_PORT). The agent keeps that one store for the
# whole job: a restarted worker group gets the same address and port, and the store still holds every
# key the earlier attempts wrote. torch (2.13) puts no per-attempt prefix on it (rendezvous.py assumes
# "a new TCPStore for every retry", which holds neither for the c10d rendezvous, whose handler caches its
# store server across rounds, nor for the static one). gloo's connectFullMesh publishes each rank's
# listening address under a fixed key and reads its peers' keys as soon as they exist, so a restarted
# rank 0 that is quicker than the restarted rank 1 reads the address of the rank 1 that died and gets
# "Connection refused" (or waits on it until the timeout). The process group therefore runs in a
# namespace of the store that no earlier attempt used, agreed by the handshake below. torchrun's restart
# count is not used as that namespace: it is per agent, and agents disagree on it after a membership change.

_STORE_KEYS = "dias_dist/pg"


def _attempt_store(timeout: datetime.timedelta):
    """A fresh namespace (``PrefixStore``) of the torchelastic agent's store for this attempt's process
    group, or None when the workers are not on the agent's store (plain env:// rendezvous)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    world = int(os.environ["WORLD_SIZE"])
    store = tdist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                           timeout=timeout)
    epoch = attempt_epoch(store, int(os.environ["RANK"]), world, timeout)
    return tdist.PrefixStore(f"{_STORE_KEYS}/{epoch}", store)


def attempt_epoch(store, rank: int, world: int, timeout: datetime.timedelta, poll_s: float = 0.02) -> int:
    """A number that every rank of this attempt gets and that no earlier user of ``store`` got.

    Rank 0 draws it from a counter (``add`` is atomic, so it is new). The other ranks cannot read it from
    a fixed key (that key may hold an earlier attempt's number), so each publishes a random token under
    its rank and waits for rank 0's answer under that token; rank 0 answers every token it finds (an
    earlier attempt's token gets an answer nobody reads) until all ``world - 1`` ranks confirmed theirs.
    """
    deadline = time.monotonic() + timeout.total_seconds()
    if rank != 0:
        token = uuid.uuid4().hex
        store.set(f"{_STORE_KEYS}/join/{rank}", token)
        store.wait([f"{_STORE_KEYS}/ack/{token}"])
        epoch = int(store.get(f"{_STORE_KEYS}/ack/{token}"))
        store.add(f"{_STORE_KEYS}/ready/{epoch}", 1)
        return epoch
    epoch = store.add(f"{_STORE_KEYS}/epoch", 1)
    joins = [f"{_STORE_KEYS}/join/{r}" for r in range(1, world)]
    answered: set[bytes] = set()
    while True:
        for token in store.multi_get(joins) if joins else []:  # waits until every rank has published once
            if token not in answered:
                store.set(f"{_STORE_KEYS}/ack/{token.decode()}", str(epoch))
                answered.add(token)
        if store.add(f"{_STORE_KEYS}/ready/{epoch}", 0) >= world - 1:
            return epoch
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0: {world - 1 - store.add(f'{_STORE_KEYS}/ready/{epoch}', 0)} of "
                               f"{world - 1} other ranks did not join the process group within {timeout}")
        time.sleep(poll_s)


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


def backend() -> str:
    """The process group's backend (nccl, gloo), or "none" for a single process without a group."""
    return str(tdist.get_backend()) if is_distributed() else "none"


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
