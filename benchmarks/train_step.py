"""Forward+backward throughput (patches/s) of VSS-Net and FR-UNet, and VSS-Net with its batched
ConvGRU against the reference code's per-timestep cell (``ConvGRUReference``) on the same machine.

    python benchmarks/train_step.py --batch 4 --out benchmarks/results/train_step_cpu_roofline.json

Prints one line of JSON last. Each measurement: ``--warmup`` untimed steps, then the median of
``--repeats`` timed (forward + CE/Dice loss + backward) steps on random 64x64 input, the models
timed in alternation.

Roofline fields: both ConvGRU forms do the same arithmetic, so the JSON also gives each model's
convolution/matmul FLOPs per step (``torch.utils.flop_counter``), the rate it reached, and the
machine's dense matmul rate on the same threads (``matmul_peak_gflop_per_s``; bf16 under autocast,
i.e. on GPU by default and on CPU with ``--cpu-bf16``, else fp32).
``vss_net_speedup_bound_at_equal_flops`` = that peak / the reference form's rate: no rearrangement
of the same FLOPs can beat the reference form by more than this.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from machine import describe, git_sha, step_seconds, write_result

from dias_dist.models import build_model, count_parameters, to_layout, input_layout
from dias_dist.models.convgru import BiConvGRU, ConvGRUReference


def with_reference_gru(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every batched ConvGRU of ``model`` by the per-timestep reference cell (same size)."""
    for module in model.modules():
        if isinstance(module, BiConvGRU):
            channels = module.forward_gru.channels
            device = module.forward_gru.input_conv.weight.device
            module.forward_gru = ConvGRUReference(channels).to(device)
            module.backward_gru = ConvGRUReference(channels).to(device)
    return model


def flops_per_step(model, image, target, device, amp) -> int:
    """Convolution and matmul FLOPs of one forward + loss + backward step (elementwise ops not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step_seconds(model, image, target, device, amp)
    return counter.get_total_flops()


def matmul_peak_gflop_per_s(device: torch.device, amp: bool, size: int = 4096, repeats: int = 5) -> float:
    """Best rate of a square dense matmul on ``device`` (bf16 under ``amp``, else fp32), GFLOP/s."""
    dtype = torch.bfloat16 if amp else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - tic)
    return 2 * size**3 / best / 1e9


def patches_per_second(models: dict[str, torch.nn.Module], *, batch: int, patch: int, device: torch.device,
                       warmup: int, repeats: int, amp: bool) -> dict[str, dict]:
    """Median forward+backward step time of each model -> {name: {"patches_per_s", "step_ms", "params"}}.

    The models are timed in alternation (one step each per round), so a change of machine load
    during the run affects them alike (the ratio is what the batched-GRU check needs).
    """
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(batch, 8, patch, patch, generator=gen)
    target = (torch.rand(batch, patch, patch, generator=gen) > 0.8).long().to(device)
    inputs, times = {}, {name: [] for name in models}
    for name, model in models.items():
        model.to(device).train()
        inputs[name] = to_layout(frames, input_layout(model)).to(device)
    for i in range(warmup + repeats):
        for name, model in models.items():
            seconds = step_seconds(model, inputs[name], target, device, amp)
            if i >= warmup:
                times[name].append(seconds)
    out = {}
    for name, model in models.items():
        step = statistics.median(times[name])
        flops = flops_per_step(model, inputs[name], target, device, amp)
        out[name] = {"patches_per_s": batch / step, "step_ms": step * 1e3, "params": count_parameters(model),
                     "gflop_per_step": flops / 1e9, "gflop_per_s": flops / 1e9 / step}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--width", type=int, default=32, help="VSS-Net width (32 = full size)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-amp", action="store_true", help="fp32 on GPU (default: bf16 autocast)")
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on CPU (train.cpu_bf16; default fp32)")
    parser.add_argument("--skip-fr-unet", action="store_true")
    parser.add_argument("--peak-size", type=int, default=4096, help="side of the square matmul that measures the peak")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    kw = dict(batch=args.batch, patch=args.patch, device=device, warmup=args.warmup, repeats=args.repeats,
              amp=(not args.no_amp) if device.type == "cuda" else args.cpu_bf16)
    torch.manual_seed(0)
    models = {"vss_net": build_model("vss_net", width=args.width, gru_impl="torch")}
    torch.manual_seed(0)
    models["vss_net_reference_gru"] = with_reference_gru(build_model("vss_net", width=args.width, gru_impl="torch"))
    if not args.skip_fr_unet:
        models["fr_unet"] = build_model("fr_unet")
    measured = patches_per_second(models, **kw)
    peak = matmul_peak_gflop_per_s(device, kw["amp"], size=args.peak_size)
    for entry in measured.values():
        entry["fraction_of_matmul_peak"] = entry["gflop_per_s"] / peak
    speedup = measured["vss_net"]["patches_per_s"] / measured["vss_net_reference_gru"]["patches_per_s"]
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    result = {
        "benchmark": "train_step",
        "device": describe(device), "device_type": device.type, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": load,
        "batch": args.batch, "patch_px": args.patch, "vss_net_width": args.width,
        "amp_bf16": kw["amp"],
        **measured,
        "matmul_peak_gflop_per_s": peak, "matmul_peak_size": args.peak_size,
        "vss_net_batched_gru_speedup": speedup,
        "vss_net_speedup_bound_at_equal_flops": peak / measured["vss_net_reference_gru"]["gflop_per_s"],
        "batched_gru_target": 1.3,
        "batched_gru_target_met": speedup >= 1.3,
        "git_sha": git_sha(),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
