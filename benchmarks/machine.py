"""The machine a benchmark ran on, in words, for its JSON (``device`` field).

    describe(torch.device("cpu"))  -> "CPU AMD EPYC (2 logical cores visible, torch threads 2)"
    describe(torch.device("cuda")) -> "NVIDIA H100 80GB HBM3"
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()} ({os.cpu_count()} logical cores visible, torch threads {torch.get_num_threads()})"
