"""Roofline of every compute path of VSS-Net and FR-UNet: training step, evaluation forward, prediction forward.

    python benchmarks/roofline.py --out benchmarks/results/roofline_cpu.json

For each model and path: convolution/matmul FLOPs (``torch.utils.flop_counter``, as ``train_step.py``
counts them), wall seconds (minimum and median of ``--repeats`` after ``--warmup``), the rate reached
and its fraction of the machine's dense matmul rate on the same threads (fp32, and bf16 where the
device multiplies bf16 natively: CUDA, or a CPU with AVX512-BF16/AMX).

Paths (``batch`` tiles of ``patch`` x ``patch`` x 8 frames, random input, untrained weights):
- ``train_step``: forward + CE/Dice loss + backward at ``--train-batch`` (train mode);
- ``eval_forward``: one no-grad forward of ``--eval-batch`` tiles (eval mode), what validation and
  ``dias evaluate`` run per batch;
- ``predict_forward``: the whole sliding-window prediction of one ``--image`` x ``--image`` sequence
  (``model_probability_fn``: tiling at stride patch/2, forwards of ``--eval-batch`` tiles, softmax,
  overlap averaging), what ``dias evaluate`` / prediction run per image.

VSS-Net runs in several variants, timed in alternation with the default one so that a change of
machine load hits them alike: its ConvGRU with the arrangement chosen per mode (``auto``), each fixed
arrangement (``batched`` / ``stepped``), and the reference code's per-timestep cell
(``reference_gru``). bf16 rows run under bf16 autocast (``train.cpu_bf16`` / ``eval.cpu_bf16``).

``profile`` (per model and path, fp32, default variant): one profiled call split into convolution
time and everything else (elementwise, normalisation, concatenation: memory-bound work), and the
bound that split puts on the rate: FLOPs / (FLOPs at peak + the non-convolution seconds).

Prints one line of JSON last (the machine named, load average before and after).
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from machine import describe, git_sha, has_bf16_matmul, load_average, step_seconds, write_result
from train_step import matmul_peak_gflop_per_s, with_reference_gru

from dias_dist.config import EvalConfig
from dias_dist.evaluation.evaluate import model_probability_fn
from dias_dist.evaluation.tiling import padded_size
from dias_dist.models import build_model, input_layout, to_layout
from dias_dist.models.convgru import ConvGRU, resolve_arrangement

PATHS = ("train_step", "eval_forward", "predict_forward")
CONV_OPS = ("convolution", "conv2d", "mkldnn_conv", "addmm", "aten::mm", "bmm", "matmul")


@dataclass
class Case:
    """One timed thing: ``run()`` does the work once; ``count()`` does the same work for the FLOP counter."""

    model: str
    path: str
    variant: str
    precision: str  # fp32 | bf16
    batch: int
    run: Callable[[], None]
    count: Callable[[], None]
    flops: int = 0
    times: list | None = None


def set_arrangement(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Fix the arrangement of every ConvGRU of ``model`` ("auto" | "batched" | "stepped")."""
    for module in model.modules():
        if isinstance(module, ConvGRU):
            module.arrangement = name
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_cases(model_name: str, model: torch.nn.Module, variant: str, precision: str, paths, *, args,
               device: torch.device) -> list[Case]:
    """The cases of one model variant for ``paths`` at the benchmark's batch sizes."""
    amp = precision == "bf16"
    layout = input_layout(model)
    gen = torch.Generator().manual_seed(0)
    train_x = to_layout(torch.randn(args.train_batch, 8, args.patch, args.patch, generator=gen), layout).to(device)
    train_y = (torch.rand(args.train_batch, args.patch, args.patch, generator=gen) > 0.8).long().to(device)
    eval_x = to_layout(torch.randn(args.eval_batch, 8, args.patch, args.patch, generator=gen), layout).to(device)
    image = torch.randn(8, args.image, args.image, generator=gen)
    eval_cfg = EvalConfig(patch_size_px=args.patch, stride_px=args.patch // 2, batch_size=args.eval_batch)
    padded = padded_size(args.image, args.patch, args.patch // 2)
    tiles = ((padded - args.patch) // (args.patch // 2) + 1) ** 2

    def train(x, y):
        model.train()
        step_seconds(model, x, y, device, amp)

    @torch.no_grad()
    def forward(x):
        model.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(x)
        _sync(device)

    def predict():
        with model_probability_fn(model, eval_cfg, device, amp) as probability:
            probability(image)

    cases = []
    for path in paths:
        if path == "train_step":
            run, count, batch = (lambda: train(train_x, train_y)), (lambda: train(train_x[:1], train_y[:1])), args.train_batch
        elif path == "eval_forward":
            run, count, batch = (lambda: forward(eval_x)), (lambda: forward(eval_x[:1])), args.eval_batch
        else:
            run, count, batch = predict, predict, tiles
        cases.append(Case(model_name, path, variant, precision, batch, run, count))
    return cases


def count_flops(case: Case, args) -> int:
    """Convolution and matmul FLOPs of one call. Training/evaluation are counted on one tile and scaled
    (the FLOPs of these models are linear in the batch); the prediction is counted as it runs."""
    counter = FlopCounterMode(display=False)
    with counter:
        case.count()
    flops = counter.get_total_flops()
    return flops * case.batch if case.path != "predict_forward" else flops


def time_interleaved(cases: list[Case], device: torch.device, warmup: int, repeats: int) -> None:
    """Fill ``case.times``: each round runs every case once, so load changes hit them alike."""
    for case in cases:
        case.times = []
    for index in range(warmup + repeats):
        for case in cases:
            _sync(device)
            tic = time.perf_counter()
            case.run()
            _sync(device)
            if index >= warmup:
                case.times.append(time.perf_counter() - tic)


def profile_split(case: Case) -> dict:
    """One profiled call: seconds in convolutions/matmuls vs all other top-level operators (CPU time)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        case.run()
    conv = other = 0.0
    for event in prof.key_averages():
        name = event.key
        if not name.startswith("aten::"):
            continue
        seconds = event.self_cpu_time_total / 1e6
        if any(op in name for op in CONV_OPS):
            conv += seconds
        else:
            other += seconds
    return {"conv_s": conv, "other_s": other}


def row(case: Case, peaks: dict) -> dict:
    seconds = min(case.times)
    rate = case.flops / 1e9 / seconds
    peak = peaks[case.precision]
    out = {"model": case.model, "path": case.path, "variant": case.variant, "precision": case.precision,
           "batch": case.batch, "gflop": case.flops / 1e9, "seconds_min": seconds,
           "seconds_median": statistics.median(case.times), "repeats": len(case.times),
           "gflop_per_s": rate, "fraction_of_fp32_peak": rate / peaks["fp32"]}
    if peaks.get("bf16"):
        out["fraction_of_bf16_peak"] = rate / peaks["bf16"]
    out["fraction_of_peak"] = rate / peak  # against the peak of its own precision
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=32, help="VSS-Net and FR-UNet width (32 = full size)")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--eval-batch", type=int, default=16, help="tiles per evaluation forward")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--image", type=int, default=128, help="side of the sequence the prediction path tiles")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", default="auto", choices=["auto", "on", "off"],
                        help="bf16 rows: auto = where the device multiplies bf16 natively")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--skip-fr-unet", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--peak-size", type=int, default=4096)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        raise SystemExit(f"--paths: unknown {unknown}; valid: {', '.join(PATHS)}")
    bf16 = has_bf16_matmul(device) if args.bf16 == "auto" else args.bf16 == "on"
    load_before = load_average()
    kw = dict(args=args, device=device)

    torch.manual_seed(0)
    vss = build_model("vss_net", width=args.width, gru_impl="torch").to(device)
    torch.manual_seed(0)
    vss_fixed = build_model("vss_net", width=args.width, gru_impl="torch").to(device)  # fixed arrangement
    torch.manual_seed(0)
    vss_ref = with_reference_gru(build_model("vss_net", width=args.width, gru_impl="torch")).to(device)
    # Interleaved groups: the default arrangement, the other fixed one, the reference cell (+ bf16).
    groups = []
    for path in paths:
        mode_grad = path == "train_step"
        other = "stepped" if resolve_arrangement("auto", device, mode_grad) == "batched" else "batched"
        group = make_cases("vss_net", vss, "auto", "fp32", [path], **kw)
        fixed = make_cases("vss_net", set_arrangement(vss_fixed, other), other, "fp32", [path], **kw)
        group += fixed + make_cases("vss_net", vss_ref, "reference_gru", "fp32", [path], **kw)
        if bf16:
            group += make_cases("vss_net", vss, "auto", "bf16", [path], **kw)
        groups.append(group)
    if not args.skip_fr_unet:
        torch.manual_seed(0)
        fr = build_model("fr_unet", width=args.width).to(device)
        group = make_cases("fr_unet", fr, "default", "fp32", paths, **kw)
        if bf16:
            group += make_cases("fr_unet", fr, "default", "bf16", paths, **kw)
        groups.append(group)

    peaks = {"fp32": matmul_peak_gflop_per_s(device, False, size=args.peak_size)}
    if bf16:
        peaks["bf16"] = matmul_peak_gflop_per_s(device, True, size=args.peak_size)
    for group in groups:
        for case in group:
            case.flops = count_flops(case, args)
        time_interleaved(group, device, args.warmup, args.repeats)
    rows = [row(case, peaks) for group in groups for case in group]

    def seconds(model, path, variant, precision="fp32"):
        found = [r["seconds_min"] for r in rows if (r["model"], r["path"], r["variant"], r["precision"]) ==
                 (model, path, variant, precision)]
        return found[0] if found else None

    arrangement = {}
    for path in paths:
        grad = path == "train_step"
        chosen = resolve_arrangement("auto", device, grad)
        other = "stepped" if chosen == "batched" else "batched"
        arrangement[path] = {"grad_enabled": grad, "chosen": chosen, "chosen_s": seconds("vss_net", path, "auto"),
                             "other": other, "other_s": seconds("vss_net", path, other)}
        arrangement[path]["chosen_is_fastest"] = arrangement[path]["chosen_s"] <= arrangement[path]["other_s"]
    vs_reference = {path: seconds("vss_net", path, "reference_gru") / seconds("vss_net", path, "auto") for path in paths}
    profile = {}
    if not args.no_profile:
        for group in groups:
            for case in group:
                if case.precision == "fp32" and case.variant in ("auto", "default"):
                    split = profile_split(case)
                    at_peak = case.flops / 1e9 / peaks["fp32"]
                    split["bound_fraction_of_peak"] = at_peak / (at_peak + split["other_s"])
                    split["conv_gflop_per_s"] = case.flops / 1e9 / split["conv_s"] if split["conv_s"] else None
                    profile[f"{case.model}/{case.path}"] = split
    result = {
        "benchmark": "roofline",
        "device": describe(device), "device_type": device.type, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15_before": load_before, "load_average_1_5_15_after": load_average(),
        "settings": {k: getattr(args, k) for k in ("width", "train_batch", "eval_batch", "patch", "image", "warmup",
                                                   "repeats", "peak_size")},
        "bf16_rows": bf16,
        "matmul_peak_gflop_per_s": peaks,
        "rows": rows,
        "profile": profile,
        "arrangement": arrangement,
        "vss_net_speedup_vs_reference_gru": vs_reference,
        "inference_at_least_reference_speed": all(vs_reference[p] >= 1.0 for p in paths if p != "train_step"),
        "git_sha": git_sha(),
    }
    if bf16:
        result["bf16_speedup"] = {f"{m}/{p}": seconds(m, p, v) / seconds(m, p, v, "bf16")
                                  for m, v in (("vss_net", "auto"), ("fr_unet", "default")) for p in paths
                                  if seconds(m, p, v) and seconds(m, p, v, "bf16")}
    write_result(result, args.out)


if __name__ == "__main__":
    main()
