"""CPU speed-up trials for VSS-Net: torch.compile (inductor's CPU backend), channels-last, oneDNN fusion.

    python benchmarks/cpu_trials.py --out benchmarks/results/cpu_trials_cpu.json

Two workloads, each against plain eager PyTorch on the same model and input (timed in alternation,
minimum of ``--repeats`` after the warm-up, which includes compilation):
- ``eval_forward``: no-grad forward of ``--eval-batch`` tiles in eval mode (fp32);
- ``train_step``: forward + CE/Dice loss + backward at ``--train-batch`` (fp32, train mode; dropout
  off so that outputs can be compared).
Variants: ``channels_last`` (model and input in channels-last memory format), ``compile``
(``torch.compile``, inductor), ``compile_freezing`` (inductor with ``freezing``: weights become
constants, oneDNN weight prepacking and conv+pointwise fusion; inference only), ``onednn_jit``
(``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference``: TorchScript's oneDNN fusion
pass; inference only). A variant is *adoptable* when it is >= ``--adopt`` (1.10) times faster than
eager and its output differs by at most ``--tolerance`` relative to the output's largest magnitude.
Each variant is timed in alternation with eager right after its warm-up, and the JSON is rewritten
after each variant: a run cut short by a time limit keeps what it measured (the rest "pending").
A variant whose warm-up would start after ``--budget-s`` seconds is skipped (recorded as such); a
failure is recorded with its error.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
import traceback

import torch

from machine import describe, git_sha, load_average

from dias_dist.losses import ce_dice_loss
from dias_dist.models import build_model, input_layout, to_layout

EVAL_VARIANTS = ("eager", "channels_last", "compile", "compile_freezing", "onednn_jit")
TRAIN_VARIANTS = ("eager", "channels_last", "compile")


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, (torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.Dropout3d)):
            module.p = 0.0
    return model


def eval_runner(variant: str, base: torch.nn.Module, x: torch.Tensor):
    """() -> logits for one no-grad forward of ``variant``."""
    model = copy.deepcopy(base).eval()
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    if variant == "compile":
        model = torch.compile(model)
    if variant == "compile_freezing":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        model = torch.compile(model)
    if variant not in EVAL_VARIANTS:
        raise ValueError(f"unknown evaluation variant {variant!r}; valid: {', '.join(EVAL_VARIANTS)}")
    if variant == "onednn_jit":
        with torch.no_grad():
            model = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))

    @torch.no_grad()
    def run():
        return model(x)

    return run


def train_runner(variant: str, base: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """() -> (loss, flat gradient) of one training step of ``variant`` (no optimizer step: comparable)."""
    if variant not in TRAIN_VARIANTS:
        raise ValueError(f"unknown training variant {variant!r}; valid: {', '.join(TRAIN_VARIANTS)}")
    model = copy.deepcopy(base).train()
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if variant == "compile" else model

    def run():
        loss = ce_dice_loss(forward(x), y)["total"]
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        model.zero_grad(set_to_none=True)
        return torch.cat([loss.detach().reshape(1), grad])

    return run


def trial(runners: dict, warmup: int, repeats: int, budget_s: float, start: float, save) -> dict:
    """Warm eager, then each variant in turn (compiling) and time it in alternation with eager.

    Outputs are compared with eager's. ``save(partial)`` is called after each variant, so a run cut
    short (a time limit around the script) keeps what it measured; variants not reached stay "pending".
    """
    out = {name: {"status": "pending"} for name in runners}
    tic = time.perf_counter()
    eager = runners["eager"]()
    for _ in range(max(warmup, 1)):
        reference = eager().float()
    out["eager"] = {"status": "ok", "warmup_s_incl_compile": time.perf_counter() - tic}
    scale = reference.abs().max().item()
    eager_times = []
    for name, make in runners.items():
        if name == "eager":
            continue
        if time.perf_counter() - start > budget_s:
            out[name] = {"status": f"skipped: time budget of {budget_s:.0f} s spent"}
            save(out)
            continue
        try:
            tic = time.perf_counter()
            run = make()
            for _ in range(max(warmup, 1)):
                result = run()
            warm = time.perf_counter() - tic
            times, pair_eager = [], []
            for _ in range(repeats):
                for fn, sink in ((eager, pair_eager), (run, times)):
                    tic = time.perf_counter()
                    fn()
                    sink.append(time.perf_counter() - tic)
        except Exception as err:  # a variant that cannot run is a result, not a crash
            out[name] = {"status": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}",
                         "traceback_tail": traceback.format_exc().splitlines()[-3:]}
            save(out)
            continue
        eager_times += pair_eager
        diff = (result.float() - reference).abs().max().item()
        out[name] = {"status": "ok", "warmup_s_incl_compile": warm, "seconds_min": min(times), "seconds": times,
                     "eager_seconds_min": min(pair_eager), "speedup_vs_eager": min(pair_eager) / min(times),
                     "max_abs_diff_vs_eager": diff, "max_rel_diff_vs_eager": diff / scale if scale else diff}
        out["eager"].update({"seconds_min": min(eager_times), "speedup_vs_eager": 1.0,
                             "max_abs_diff_vs_eager": 0.0, "max_rel_diff_vs_eager": 0.0})
        save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vss_net", help="any registered model (`dias models`)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", default="eval_forward,train_step")
    parser.add_argument("--eval-variants", default=",".join(EVAL_VARIANTS))
    parser.add_argument("--train-variants", default=",".join(TRAIN_VARIANTS))
    parser.add_argument("--adopt", type=float, default=1.10)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    start = time.perf_counter()
    load_before = load_average()
    torch.manual_seed(0)
    extra = {"gru_impl": "torch"} if args.model == "vss_net" else {}
    base = no_dropout(build_model(args.model, width=args.width, **extra))
    layout = input_layout(base)
    gen = torch.Generator().manual_seed(0)
    workloads = {}

    def save(partial=None, name=None):
        if name is not None:
            workloads[name] = partial
        if args.out:
            os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
            with open(args.out, "w") as handle:
                handle.write(json.dumps(summary()) + "\n")

    def summary() -> dict:
        adopted = sorted(f"{w}/{v}" for w, results in workloads.items() for v, r in results.items()
                         if v != "eager" and r.get("status") == "ok" and r["speedup_vs_eager"] >= args.adopt
                         and r["max_rel_diff_vs_eager"] <= args.tolerance)
        return {"benchmark": "cpu_trials", "device": describe(torch.device("cpu")), "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "load_average_1_5_15_before": load_before, "load_average_1_5_15_after": load_average(),
                "settings": {k: getattr(args, k) for k in ("model", "width", "eval_batch", "train_batch", "patch", "warmup",
                                                           "repeats", "adopt", "tolerance", "budget_s")},
                "workloads": workloads, "adoptable": adopted, "wall_s": time.perf_counter() - start,
                "git_sha": git_sha()}

    for workload in [w for w in args.workloads.split(",") if w]:
        if workload == "eval_forward":
            x = to_layout(torch.randn(args.eval_batch, 8, args.patch, args.patch, generator=gen), layout)
            runners = {v: (lambda v=v: eval_runner(v, base, x)) for v in ["eager", *args.eval_variants.split(",")]}
        elif workload == "train_step":
            x = to_layout(torch.randn(args.train_batch, 8, args.patch, args.patch, generator=gen), layout)
            y = (torch.rand(args.train_batch, args.patch, args.patch, generator=gen) > 0.8).long()
            runners = {v: (lambda v=v: train_runner(v, base, x, y)) for v in ["eager", *args.train_variants.split(",")]}
        else:
            raise SystemExit(f"--workloads: unknown {workload!r}; valid: eval_forward, train_step")
        workloads[workload] = trial(runners, args.warmup, args.repeats, args.budget_s, start,
                                    lambda partial, name=workload: save(partial, name))
    save()
    line = json.dumps(summary())
    print(line)


if __name__ == "__main__":
    main()
