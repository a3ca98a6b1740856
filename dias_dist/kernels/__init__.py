"""Fused GPU kernels. ``convgru_triton`` holds the Triton ConvGRU step kernels (imported on demand,
since importing it imports triton); ``dias_dist.models.convgru`` picks them with ``set_impl``."""
from __future__ import annotations

import importlib.util


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it still needs CUDA or TRITON_INTERPRET=1 to launch)."""
    return importlib.util.find_spec("triton") is not None
