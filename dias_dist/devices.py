"""Which device a run trains on, said out loud.

``train.device=cuda`` that cannot get a GPU fails at once with the reason (``cuda_problem``);
``train.device=auto`` still falls back to the CPU, but warns when ``nvidia-smi`` is on PATH (a GPU seems
present but is unusable: a CPU build of torch, a driver too old for this torch, no visible device).
At the start of a run rank 0 prints one block with the device, world size, backend and precision, and
the trainer logs the same as MLflow tags (``startup_tags``).
"""
from __future__ import annotations

import os
import shutil
import warnings

import torch

# the minimum NVIDIA Linux driver of each CUDA major version (NVIDIA's minor-version compatibility table)
MIN_DRIVER = {11: 450, 12: 525, 13: 580}


def cuda_problem() -> str:
    """Why CUDA cannot be used here, as one line (call only when ``torch.cuda.is_available()`` is False).

    In order: a CPU build of torch; CUDA_VISIBLE_DEVICES hiding every device; a driver too old for this
    torch's CUDA; no NVIDIA driver or GPU (no ``nvidia-smi``); otherwise torch's own initialisation error.
    """
    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU build (torch.version.cuda is None); install the CUDA build "
                f"(scripts/bootstrap.sh on a machine with nvidia-smi, or the Docker image)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not [d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]:
        return f"no device visible: CUDA_VISIBLE_DEVICES={visible!r}"
    error = _init_error()
    major = int(torch.version.cuda.split(".")[0])
    need = f"driver >= {MIN_DRIVER[major]}" if major in MIN_DRIVER else "a newer driver"
    driver = _driver_cuda_version()
    if "too old" in error or (driver and driver < _as_number(torch.version.cuda)):
        found = f"the driver supports CUDA {driver // 1000}.{driver % 1000 // 10}; " if driver else ""
        return (f"the NVIDIA driver is too old for torch {torch.__version__} (CUDA {torch.version.cuda}, {need}): "
                f"{found}{error or 'update the driver'}")
    if shutil.which("nvidia-smi") is None:
        return f"no NVIDIA GPU or driver on this machine (nvidia-smi is not on PATH){': ' + error if error else ''}"
    return error or "torch.cuda.is_available() is False"


def _init_error() -> str:
    """torch's own reason why CUDA does not initialise, one line ("" if it does)."""
    try:
        torch.cuda.init()
    except Exception as err:  # noqa: BLE001 - torch raises AssertionError / RuntimeError with the reason
        return " ".join(str(err).split())
    return ""


def _driver_cuda_version() -> int:
    """The CUDA version the installed driver supports (e.g. 12080), 0 when unknown (no driver, CPU build)."""
    try:
        return int(torch._C._cuda_getDriverVersion())
    except Exception:  # noqa: BLE001 - absent in CPU builds; raises when libcuda cannot be loaded
        return 0


def _as_number(version: str) -> int:
    """'13.0' -> 13000, as the driver API numbers CUDA versions."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return major * 1000 + minor * 10


def check(device: str) -> bool:
    """Whether this rank uses CUDA for ``train.device`` = auto | cpu | cuda.

    cuda without a usable GPU raises ``ValueError`` with ``cuda_problem()``; auto without one returns False,
    warning (``RuntimeWarning``, on each node's local rank 0) when ``nvidia-smi`` says a GPU is there.
    """
    if device == "cpu":
        return False
    if torch.cuda.is_available():
        return True
    if device == "cuda":
        raise ValueError(f"train.device=cuda but CUDA is not usable: {cuda_problem()}")
    if shutil.which("nvidia-smi") is not None and int(os.environ.get("LOCAL_RANK", 0)) == 0:
        warnings.warn(f"train.device=auto: nvidia-smi is on PATH but CUDA is not usable, training on the CPU: "
                      f"{cuda_problem()} (set train.device=cuda to make this an error)", RuntimeWarning, stacklevel=3)
    return False


def precision(engine) -> str:
    """The engine's arithmetic: DeepSpeed bf16 weights, bf16 autocast, or fp32."""
    if getattr(engine, "bf16", False):
        return "bf16 (DeepSpeed bf16 weights)"
    return "bf16 autocast" if getattr(engine, "use_amp", False) else "fp32"


def startup_tags(device: torch.device, engine, *, world_size: int, backend: str) -> dict[str, str]:
    """``{"device", "world_size", "backend", "precision"}`` of this run (strings, as MLflow tags)."""
    name = str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})"
    return {"device": name, "world_size": str(world_size), "backend": backend, "precision": precision(engine)}

