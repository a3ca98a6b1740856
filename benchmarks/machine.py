"""The machine a benchmark ran on, in words, for its JSON (``device`` field), and the timed
training step the model benchmarks share (``step_seconds``).

    describe(torch.device("cpu"))  -> "CPU AMD EPYC (2 logical cores visible, torch threads 2)"
    describe(torch.device("cuda")) -> "NVIDIA H100 80GB HBM3"
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import torch

from dias_dist.losses import ce_dice_loss
from dias_dist.models.cpu_tuning import cpu_model  # noqa: F401 (the benchmarks' one name for the CPU)
from dias_dist.predict.cli import native_bf16


def has_bf16_matmul(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 natively: the same test `dias predict --fast` uses."""
    return native_bf16(device)


def load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def git_sha() -> str:
    """The short commit the benchmark ran at ("" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        return ""


def write_result(result: dict, out: str = "") -> str:
    """One line of JSON: written to ``out`` (folders made; temp file then rename, so a killed run
    leaves the previous result) when given, printed, and returned."""
    line = json.dumps(result)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(line + "\n")
        os.replace(tmp, path)
    print(line)
    return line


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()} ({os.cpu_count()} logical cores visible, torch threads {torch.get_num_threads()})"


def step_seconds(model: torch.nn.Module, image: torch.Tensor, target: torch.Tensor, device: torch.device,
                 amp: bool) -> float:
    """Wall seconds of one training step: forward (bf16 autocast on ``device`` when ``amp``), CE+Dice
    loss in fp32, backward, zero_grad; CUDA synchronised before and after. A tuple output (UNet_CCT's
    (main, aux) in train mode) is scored on its first element."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(image)
        out = out[0] if isinstance(out, tuple) else out
        loss = ce_dice_loss(out.float(), target)["total"]
    loss.backward()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tic
