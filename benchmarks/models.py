"""Forward+backward throughput (patches/s) and peak memory of every registered model.

    python benchmarks/models.py --batch 64 --out benchmarks/results/models_cuda.json   # a GPU machine
    python benchmarks/models.py --batch 2 --repeats 2 --out benchmarks/results/models_cpu.json

Each model runs in its own subprocess at its full-size configuration on (batch, 8, 64, 64) patches
(CE + soft Dice loss, backward), so its peak memory is its own: ``torch.cuda.max_memory_allocated``
on a GPU, the process's peak resident set size (ru_maxrss) on a CPU. Prints one line of JSON last.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

import torch

from machine import describe, step_seconds, write_result

from dias_dist.models import MODELS, build_model, count_parameters, input_layout, to_layout


def measure(name: str, *, batch: int, patch: int, warmup: int, repeats: int, device: torch.device,
            amp: bool) -> dict:
    """One model: median step time over ``repeats`` after ``warmup`` steps, and peak memory."""
    torch.manual_seed(0)
    model = build_model(name).to(device).train()
    layout = input_layout(model)
    image = to_layout(torch.randn(batch, 8, patch, patch, device=device), layout)
    target = (torch.rand(batch, patch, patch, device=device) > 0.8).long()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    amp = amp and device.type == "cuda"  # bf16 autocast on GPU only
    times = []
    for i in range(warmup + repeats):
        seconds = step_seconds(model, image, target, device, amp)
        if i >= warmup:
            times.append(seconds)
    step = statistics.median(times)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        memory = "cuda_max_allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        memory = "process_peak_rss"
    return {"model": name, "layout": layout, "params": count_parameters(model), "step_ms": step * 1e3,
            "patches_per_s": batch / step, "peak_memory_mb": peak_mb, "memory_measure": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--no-amp", action="store_true", help="fp32 on GPU (default: bf16 autocast)")
    parser.add_argument("--models", nargs="+", default=sorted(MODELS), help="registry names (default: all)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model in this process
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(sorted(MODELS))}")
    kwargs = dict(batch=args.batch, patch=args.patch, warmup=args.warmup, repeats=args.repeats, device=device,
                  amp=not args.no_amp)
    if args.one:
        print(json.dumps(measure(args.one, **kwargs)))
        return 0
    rows = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--one", name, "--batch", str(args.batch), "--patch", str(args.patch),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--device", device.type]
        if args.no_amp:
            cmd.append("--no-amp")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:  # e.g. out of memory at this batch: reported, the others still run
            rows.append({"model": name, "error": proc.stderr.strip().splitlines()[-1][:300]})
        row = rows[-1]
        print(f"{name:15s} " + (f"{row['patches_per_s']:9.2f} patches/s  {row['peak_memory_mb']:9.0f} MB"
                                if "error" not in row else f"ERROR {row['error']}"), file=sys.stderr, flush=True)
    result = {
        "benchmark": "models", "device": describe(device), "device_type": device.type, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "load_average_1_5_15": list(os.getloadavg()),
        "batch": args.batch, "patch_px": args.patch, "frames": 8, "amp_bf16": device.type == "cuda" and not args.no_amp,
        "models": rows,
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
