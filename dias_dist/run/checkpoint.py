"""Checkpoints and the run folder. ``torch.save`` (a pickle inside a zip) written atomically.

A training checkpoint holds: ``model``, ``optimizer``, ``scheduler`` (the engine's state dict: full fp32
weights and a plain torch AdamW state dict under either engine, any ZeRO stage and any world size, so
a run may resume on another number of ranks),
``step``, ``epoch``, ``rng`` (one entry per rank: torch CPU/CUDA, numpy and Python RNG states),
``data`` (the data position: the step at which the per-rank training stream was last re-seeded
and the seed it was built from), ``config`` (the resolved config as a dict), ``mlflow_run_id``,
``best`` (best validation score so far) and ``run_name``. Only tensors and plain containers are
stored, and files are loaded with ``weights_only=True``, whose restricted unpickler refuses
anything else (no arbitrary code runs when a checkpoint is read). Nor does its stored ``config``
run anything: commands that use it (``dias evaluate``, ``dias predict``) read it through
``dias_dist.stored_config``, which never takes a ``pipe:`` command from it.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch

from dias_dist import dist
from dias_dist.config import Config, TrainConfig, save_config
from dias_dist.run.atomic import atomic_write
from dias_dist.run.folder import RunFolderError, describe_os_error


def rng_state() -> dict:
    """This process's RNG states as tensors / plain containers (safe for weights_only loading)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def restore_rng(states: list[dict], rank: int) -> bool:
    """Restore the RNG state ``rank`` saved (``states``: one per rank of the run that wrote the checkpoint).

    A run resumed on more ranks than wrote it has none for the new ranks: they keep their own state.
    (The trainer re-seeds torch from (seed, rank, step) at every data-stream start, so what this
    restores that matters is numpy's and Python's state.) Returns whether a state was restored."""
    if rank >= len(states):
        return False
    set_rng_state(states[rank])
    return True


class CheckpointWriteError(RunFolderError, OSError):
    """A checkpoint that could not be written (disk full, quota, I/O error): one line naming the file and the
    cause. A ``ValueError`` (the CLIs print it as one error line) and an ``OSError`` (a file fault);
    ``errno`` is the cause's."""

    def __str__(self) -> str:
        return str(self.args[0])


def save(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically (a crash leaves the previous file intact).

    A failed write (``torch.save`` raises the ``OSError`` of a full disk as it is, or, when it happens while the
    zip is being closed, a ``RuntimeError`` "unexpected pos" with the ``OSError`` as its context) becomes
    ``CheckpointWriteError``: one line naming the file and the cause."""
    try:
        with atomic_write(path, "wb", fsync=True) as handle:
            torch.save(payload, handle)
    except (OSError, RuntimeError) as err:
        raise _write_error(err, Path(path)) from None
    return Path(path)


def _write_error(err: BaseException, path: Path) -> CheckpointWriteError:
    """The one-line error of a failed checkpoint write, from the ``OSError`` behind ``err`` when there is one."""
    cause = err
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        line = f"{path}: checkpoint could not be written ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    else:
        line = describe_os_error(cause, str(path))
        if cause.errno is None:  # an OSError without errno says only its text
            line = f"{path}: checkpoint could not be written ({str(cause)[:200] or type(cause).__name__})"
        elif cause.filename and Path(cause.filename).name != path.name:  # the temporary file: say what it was for
            line = line.replace(f"{cause.filename}:", f"{cause.filename} (writing {path}):", 1)
    error = CheckpointWriteError(line)
    error.errno = getattr(cause, "errno", None)
    return error


def load(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by ``save``; ``ValueError`` naming the file when it is missing or bad."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which one
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from None


def model_state(path: str | Path) -> dict:
    """Only the model weights of a checkpoint (for ``init_from`` and evaluation)."""
    payload = load(path)
    if "model" not in payload:
        raise ValueError(f"checkpoint {path} has no 'model' entry; keys: {', '.join(payload)}")
    return payload["model"]


def load_weights(network: torch.nn.Module, state: dict, source: str | Path) -> None:
    """``network.load_state_dict(state)`` (strict); weights that do not fit the network (a checkpoint whose
    config was edited, or another model's weights) are a ValueError naming ``source`` and the first
    missing, unexpected or mismatching key with both shapes."""
    own = network.state_dict()
    for key, value in state.items():
        if key not in own:
            raise ValueError(f"checkpoint {source}: weight {key!r} does not exist in the model its config builds "
                             f"({type(network).__name__}); the weights are another model's")
        shape = tuple(getattr(value, "shape", ()))
        if torch.is_tensor(value) and shape != tuple(own[key].shape):
            raise ValueError(f"checkpoint {source}: weight {key!r} has shape {shape} but the model its config builds "
                             f"({type(network).__name__}) expects {tuple(own[key].shape)}; do the weights fit "
                             f"model.params (width, num_frames, num_classes)?")
    missing = [key for key in own if key not in state]
    if missing:
        raise ValueError(f"checkpoint {source}: the model its config builds ({type(network).__name__}) needs weight "
                         f"{missing[0]!r}, which the checkpoint lacks ({len(missing)} missing)")
    network.load_state_dict(state)


def broadcast_model_state(path: str | Path) -> dict:
    """Rank 0 reads the model weights of checkpoint ``path``; every rank gets them (no shared FS needed)."""
    return dist.broadcast_object(model_state(path) if dist.is_main() else None)


# --------------------------------------------------------------------------------------------
# the run folder: runs/<run_name>/{config.yaml, metrics.jsonl, checkpoints/}


def resolve_run(cfg: TrainConfig, prefix: str) -> tuple[str, Path, Path | None]:
    """(run name, run folder, checkpoint to resume from or None) for the ``train`` section. run_name ""
    -> ``<prefix>-<yymmdd_HHMMSS>`` (rank 0's clock); resume: never | a path | auto: ``last.pt`` of
    ``run_name``, or of the newest ``<prefix>-*`` run when no name is given (a fresh run when none exists)."""
    root = Path(cfg.run_dir)
    name, resume_from = cfg.run_name, None
    if cfg.resume not in ("never", "auto"):
        resume_from = Path(cfg.resume)
        if not resume_from.is_file():
            raise ValueError(f"train.resume = {cfg.resume!r}: no such checkpoint file (or use never | auto)")
        name = name or resume_from.parent.parent.name
    elif cfg.resume == "auto":
        if not name:
            candidates = sorted(p for p in root.glob(f"{prefix}-*") if (p / "checkpoints" / "last.pt").is_file())
            name = candidates[-1].name if candidates else ""
        if name and (root / name / "checkpoints" / "last.pt").is_file():
            resume_from = root / name / "checkpoints" / "last.pt"
    if not name:
        name = dist.broadcast_object(f"{prefix}-{time.strftime('%y%m%d_%H%M%S')}")
    return name, root / name, resume_from


def prepare_run_folder(cfg: Config, run_dir: Path) -> None:
    """Rank 0: create ``run_dir/checkpoints`` and write the resolved ``config.yaml``."""
    if dist.is_main():
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    dist.barrier()
