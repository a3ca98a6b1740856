"""Speed of the ConvGRU hot path: eager PyTorch vs ``torch.compile`` vs the fused Triton kernels.

Two workloads, each timed as forward + backward (median of ``--iters`` after ``--warmup``):
- ``convgru_layer``: one ``ConvGRU`` direction, x (B, T, C, H, W) -> hidden states, loss = mean(h^2).
- ``vss_net_step``: one VSS-Net training step (forward, cross-entropy, backward, AdamW step) on a
  batch of (B, T, P, P) patches; bf16 autocast on CUDA as in training (``--no-amp`` to turn off).
Variants: ``eager`` (gru_impl=torch), ``compile`` (gru_impl=torch, ``torch.compile``), ``fused``
(gru_impl=triton, eager otherwise). On CPU the fused kernels only run under the Triton interpreter,
which says nothing about speed: the variant is recorded as not applicable unless
``--allow-interpreted`` (used by the tests to exercise the code path).

    python benchmarks/convgru.py                                   # GPU defaults: batch 64, full width
    python benchmarks/convgru.py --device cpu --batch 4 --width 8 --layer-batch 8 --layer-channels 16 \
        --layer-size 32 --out benchmarks/results/convgru_cpu.json

Writes JSON (device named, software versions, load average, settings, timings, speed-ups).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from machine import describe as device_name

from dias_dist.models import build_model
from dias_dist.models import convgru

VARIANTS = ("eager", "compile", "fused")


def timed(fn, device: torch.device, warmup: int, iters: int) -> dict:
    """Run ``fn`` warmup + iters times; per-call wall times in ms (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(iters):
        sync()
        tic = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - tic) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "iters": iters, "warmup_s_incl_compile": warmup_s}


def layer_workload(variant: str, args, device: torch.device):
    """(step function, output function) for one ConvGRU direction."""
    torch.manual_seed(0)
    layer = convgru.ConvGRU(args.layer_channels, impl="triton" if variant == "fused" else "torch").to(device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    shape = (args.layer_batch, args.frames, args.layer_channels, args.layer_size, args.layer_size)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_()
    forward = torch.compile(layer) if variant == "compile" else layer

    def step():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        with autocast(args, device):
            hidden = forward(x, x[:, 0])
        hidden.float().square().mean().backward()

    def output():
        with torch.no_grad(), autocast(args, device):
            return forward(x, x[:, 0]).float()

    return step, output


def vss_workload(variant: str, args, device: torch.device):
    """(step function, output function) for one VSS-Net training step."""
    torch.manual_seed(0)
    model = build_model("vss_net", num_frames=args.frames, width=args.width,
                        gru_impl="triton" if variant == "fused" else "torch").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(device="cpu").manual_seed(2)
    image = torch.randn(args.batch, 1, args.frames, args.patch, args.patch, generator=gen).to(device)
    target = torch.randint(0, 2, (args.batch, args.patch, args.patch), generator=gen).to(device)
    forward = torch.compile(model) if variant == "compile" else model

    def step():
        model.train()
        with autocast(args, device):
            loss = F.cross_entropy(forward(image).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def output():
        model.eval()
        with torch.no_grad(), autocast(args, device):
            return forward(image).float()

    return step, output


def autocast(args, device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and args.amp)


def run(args) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"--variants: unknown {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    report = {
        "device": device_name(device), "device_type": device.type,
        "torch": torch.__version__, "triton": _version("triton"), "python": platform.python_version(),
        "load_average_before": os.getloadavg(), "triton_interpret": interpreted,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "workloads": {},
    }
    workloads = {"convgru_layer": layer_workload, "vss_net_step": vss_workload}
    for name, make in workloads.items():
        if name not in args.workloads:
            continue
        results, reference = {}, None
        for variant in args.variants:
            if variant == "fused" and device.type != "cuda" and not args.allow_interpreted:
                results[variant] = {"status": "not applicable: the Triton kernels run on CPU only under "
                                              "the interpreter, whose timings say nothing about speed"}
                continue
            print(f"[convgru bench] {name} / {variant} ...", file=sys.stderr, flush=True)
            step, output = make(variant, args, device)
            entry = timed(step, device, args.warmup, args.iters)
            if name == "convgru_layer":  # same weights and input: the outputs must agree
                out = output()
                reference = out if reference is None else reference
                entry["max_abs_diff_vs_first"] = float((out - reference).abs().max())
            entry["status"] = "ok"
            results[variant] = entry
            del step, output
        base = results.get("eager", {}).get("median_ms")
        for variant, entry in results.items():
            if base and "median_ms" in entry:
                entry["speedup_vs_eager"] = base / entry["median_ms"]
        if "median_ms" in results.get("fused", {}) and "median_ms" in results.get("compile", {}):
            results["fused"]["speedup_vs_compile"] = results["compile"]["median_ms"] / results["fused"]["median_ms"]
        report["workloads"][name] = results
    report["load_average_after"] = os.getloadavg()
    return report


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=64, help="VSS-Net step batch size")
    parser.add_argument("--width", type=int, default=32, help="VSS-Net width (32 = the paper's model)")
    parser.add_argument("--patch", type=int, default=64, help="patch side in pixels")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--layer-batch", type=int, default=64)
    parser.add_argument("--layer-channels", type=int, default=32, help="ConvGRU hidden channels (en1: 32)")
    parser.add_argument("--layer-size", type=int, default=64, help="ConvGRU feature map side (en1: 64)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--workloads", nargs="+", default=["convgru_layer", "vss_net_step"])
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    parser.add_argument("--allow-interpreted", action="store_true",
                        help="run the fused variant on CPU under TRITON_INTERPRET=1 (correctness only)")
    parser.add_argument("--out", default="", help="JSON path (default benchmarks/results/convgru_<device>.json)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    out = Path(args.out or f"benchmarks/results/convgru_{report['device_type']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["workloads"], indent=2))
    print(f"[convgru bench] wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
