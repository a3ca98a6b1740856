"""One CPU report: VSS-Net vs the reference ConvGRU cell, loader patches/s and ``dias predict --fast`` time.

    benchmarks/run_cpu_report.sh                 # all parts, full size (tens of minutes on 2 cores)
    benchmarks/run_cpu_report.sh --quick         # tiny sizes: checks that the script works (seconds)
    benchmarks/run_cpu_report.sh --parts loader  # one part

Writes ``<out-dir>/cpu_report_<cpu-slug>.json`` and ``.md`` for the machine it runs on (CPU model as
``dias_dist.models.cpu_tuning.cpu_model`` reads it, torch version, threads, load average before/after).
Nothing is copied from the other benchmarks; each part calls theirs:

- ``ratios``: ``roofline.make_cases`` / ``roofline.time_interleaved`` with the per-timestep reference
  cell of ``train_step.with_reference_gru``: VSS-Net training step (``--train-batch`` patches), evaluation
  forward (``--eval-batch`` tiles) and sliding-window prediction forward (one ``--image`` px sequence),
  8 frames of ``--patch`` px. Ours uses the ConvGRU arrangement ``cpu_tuning.tune_network`` chooses (measured
  at these shapes, or taken from its cache) for each mode. Each ratio = reference seconds / our seconds,
  each the minimum of ``--repeats`` (>= 5) repeats run alternately (ours, reference, ours, ...):
  > 1 means ours is faster.
- ``loader``: ``data_throughput.shard_rate`` -- training patches/s of one loader process on the
  memory-mapped shard reader (batch 64, 64 patches per sequence, patch 64, shuffle buffer 2048, float32
  batches), the best of ``--loader-repeats``; torch runs on 1 thread there, as in a loader worker.
- ``predict``: ``predict.time_predict`` (read, sliding window, outputs written) of one ``--predict-size``
  px 8-frame series with what ``dias predict --fast`` sets (``cli.FAST_TILE`` / ``FAST_STRIDE``, bf16
  only on a CPU that multiplies it natively), full-size VSS-Net, random weights; the minimum of
  ``--predict-repeats`` after one warm-up. ``--predict-options`` adds rows for other tile/stride and
  tile-batch settings, fp32 forced and ``eval.compile`` (the candidates of ``--fast`` on a CPU without
  native bf16; compiling takes minutes on a loaded 2-core machine).

Prints the JSON last.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_throughput  # noqa: E402
import predict as predict_bench  # noqa: E402
import roofline  # noqa: E402
from machine import git_sha, load_average  # noqa: E402
from train_step import with_reference_gru  # noqa: E402

from dias_dist.config import Config, ModelConfig  # noqa: E402
from dias_dist.data.phantom_cli import write_phantom_dataset  # noqa: E402
from dias_dist.data.shards import write_shards  # noqa: E402
from dias_dist.models import build_model, convgru, cpu_tuning  # noqa: E402
from dias_dist.predict.cli import FAST_STRIDE, FAST_TILE, native_bf16  # noqa: E402
from dias_dist.predict.model import TrainedModel  # noqa: E402

PARTS = ("ratios", "loader", "predict")
FULL = dict(width=32, train_batch=4, eval_batch=16, patch=64, image=128, repeats=5, warmup=1, loader_size=800,
            loader_train=12, loader_seconds=6.0, loader_repeats=3, predict_size=800, predict_repeats=2)
QUICK = dict(width=2, train_batch=1, eval_batch=2, patch=16, image=32, repeats=5, warmup=1, loader_size=96,
             loader_train=2, loader_seconds=0.3, loader_repeats=1, predict_size=64, predict_repeats=1)
# (tile, stride, tile batch (None: the model's eval.batch_size), compile, bf16 (None: as --fast decides)):
# the first row is --fast; the others are what --fast could be on a CPU without native bf16 (issue 29)
PREDICT_OPTIONS = ((FAST_TILE, FAST_STRIDE, None, False, None), (FAST_TILE, FAST_STRIDE, None, False, False),
                   (FAST_TILE, 32, None, False, False), (FAST_TILE, FAST_STRIDE, 16, False, False),
                   (FAST_TILE, FAST_STRIDE, 256, False, False), (128, 96, None, False, False),
                   (256, 224, None, False, False), (FAST_TILE, FAST_STRIDE, None, True, False),
                   (FAST_TILE, FAST_TILE, None, False, False))


def _load() -> list[float] | None:
    """Load average over 1, 5 and 15 minutes, rounded."""
    load = load_average()
    return None if load is None else [round(x, 2) for x in load]


def slug(text: str) -> str:
    """File-name form of a CPU model: 'AMD EPYC 7B13 64-Core Processor' -> 'amd-epyc-7b13-64-core-processor'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown-cpu"


def ratios(s: argparse.Namespace) -> dict:
    """reference_s / ours_s of VSS-Net per path (training step, evaluation forward, prediction forward)."""
    device = torch.device("cpu")
    saved = dict(convgru.PREFERRED_ARRANGEMENT)
    try:
        torch.manual_seed(0)
        ours = build_model("vss_net", width=s.width, gru_impl="torch")
        torch.manual_seed(0)
        reference = with_reference_gru(build_model("vss_net", width=s.width, gru_impl="torch"))
        examples = cpu_tuning.examples_for(ours, frames=8, train_batch=s.train_batch, patch=s.patch,
                                           eval_batch=s.eval_batch, tile=s.patch)
        tags = cpu_tuning.tune_network(ours, examples)  # makes the measured choice the "auto" arrangement
        out = {"settings": {k: getattr(s, k) for k in ("width", "train_batch", "eval_batch", "patch", "image",
                                                       "warmup", "repeats")},
               "tuning": tags or "measuring off (DIAS_CPU_CHOICES=table): the table in convgru"}
        for path in roofline.PATHS:
            kw = dict(args=s, device=device)
            cases = (roofline.make_cases("vss_net", ours, "auto", "fp32", [path], **kw)
                     + roofline.make_cases("vss_net", reference, "reference_gru", "fp32", [path], **kw))
            roofline.time_interleaved(cases, device, s.warmup, s.repeats)
            ours_s, reference_s = min(cases[0].times), min(cases[1].times)
            out[path] = {"arrangement": convgru.resolve_arrangement("auto", device, path == "train_step"),
                         "ours_s": ours_s, "reference_s": reference_s, "ratio": reference_s / ours_s,
                         "ours_times_s": cases[0].times, "reference_times_s": cases[1].times}
        return out
    finally:
        convgru.PREFERRED_ARRANGEMENT.clear()
        convgru.PREFERRED_ARRANGEMENT.update(saved)


def loader(s: argparse.Namespace, work: Path) -> dict:
    """Best patches/s of the memory-mapped shard reader over ``loader_repeats`` measurements."""
    src, shard_dir = work / "phantom", work / "shards"
    write_phantom_dataset(src, size=s.loader_size, train=s.loader_train, val=0, test=0, unlabeled=0, seed=0,
                          preview=False)
    write_shards(src, shard_dir, splits=["training"], min_shards=min(4, s.loader_train))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one loader worker's share
    try:
        rates = [data_throughput.shard_rate(shard_dir, "float32", s.loader_seconds, 64)
                 for _ in range(s.loader_repeats)]
    finally:
        torch.set_num_threads(threads)
    return {"size": s.loader_size, "sequences": s.loader_train, "patch": 64, "batch": 64,
            "patches_per_sequence": 64, "torch_threads": 1, "seconds_per_measurement": s.loader_seconds,
            "patches_per_s": round(max(r[0] for r in rates)), "patches_per_cpu_s": round(max(r[1] for r in rates)),
            "repeats_patches_per_s": [round(r[0]) for r in rates]}


def _model(width: int | None) -> TrainedModel:
    if width is None or width == 32:
        return predict_bench.full_size("vss_net")
    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(name="vss_net", params={"width": width}))
    return TrainedModel(build_model("vss_net", width=width).eval(), cfg, f"vss_net (width {width}, random weights)")


def predict(s: argparse.Namespace, work: Path) -> dict:
    """Seconds per ``predict_size`` px 8-frame series with the ``--fast`` settings (and ``--predict-options``)."""
    device = torch.device("cpu")
    model = _model(s.width)
    work.mkdir(parents=True, exist_ok=True)
    series = work / "series.npy"
    np.save(series, np.random.default_rng(0).integers(0, 256, (8, s.predict_size, s.predict_size), dtype=np.uint8))
    native = native_bf16(device)
    chosen = [0] + [int(i) for i in s.predict_rows.split(",") if i] if s.predict_rows else (
        range(len(PREDICT_OPTIONS)) if s.predict_options else [0])
    rows = []
    for index in dict.fromkeys(chosen):
        tile, stride, batch, compiled, bf16 = PREDICT_OPTIONS[index]
        amp = native if bf16 is None else bf16
        cfg_eval = model.cfg.eval
        model.cfg.eval = dataclasses.replace(cfg_eval, compile=compiled, **({"batch_size": batch} if batch else {}))
        times = []
        try:
            for repeat in range(1 + s.predict_repeats):
                times.append(predict_bench.time_predict(model, series, work / f"out{index}_{repeat}", tile, stride,
                                                        amp)[0])
        finally:
            model.cfg.eval = cfg_eval
        rows.append({"tile": tile, "stride": stride, "tile_batch": batch or cfg_eval.batch_size, "compile": compiled,
                     "bf16": amp, "is_fast": index == 0, "seconds": min(times[1:]), "first_s": times[0],
                     "times_s": times[1:]})
    return {"size": s.predict_size, "frames": 8, "model": model.source, "fast_tile": FAST_TILE,
            "fast_stride": FAST_STRIDE, "bf16_native": native,
            # the no-grad arrangement in force (dias predict measures its own with cpu_tuning.tune_for_inference)
            "convgru_arrangement": convgru.resolve_arrangement("auto", device, False),
            "seconds_per_series": rows[0]["seconds"], "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"# CPU report: {result['cpu']}", "",
             f"torch {result['torch']}, {result['torch_threads']} threads (OMP_NUM_THREADS="
             f"{result['omp_num_threads']}), {result['logical_cores']} logical cores; load average (1, 5, 15 min) "
             f"before {result['load_average_before']}, after {result['load_average_after']}; "
             f"{'QUICK MODE (tiny sizes: not a measurement)' if result['quick'] else 'full size'}; "
             f"git {result['git_sha']}.",
             ""]
    if "ratios" in result:
        r = result["ratios"]
        st = r["settings"]
        lines += [f"## VSS-Net (width {st['width']}) vs the reference per-timestep ConvGRU cell", "",
                  f"min of {st['repeats']} alternating repeats; ratio = reference s / ours s (> 1: ours faster)", "",
                  "| path | shape | our arrangement | ours s | reference s | ratio |", "|---|---|---|---|---|---|"]
        shapes = {"train_step": f"batch {st['train_batch']}, {st['patch']} px", "eval_forward":
                  f"{st['eval_batch']} tiles of {st['patch']} px", "predict_forward": f"{st['image']} px sequence"}
        for path in roofline.PATHS:
            p = r[path]
            lines.append(f"| {path} | {shapes[path]}, 8 frames | {p['arrangement']} | {p['ours_s']:.4g} | "
                         f"{p['reference_s']:.4g} | {p['ratio']:.3f} |")
        lines += ["", f"arrangement choice: {r['tuning']}", ""]
    if "loader" in result:
        r = result["loader"]
        lines += ["## Loader (memory-mapped shards, one process)", "",
                  f"{r['patches_per_s']:,} patches/s ({r['patches_per_cpu_s']:,} per CPU second), patch 64, "
                  f"{r['size']} px sequences; repeats {r['repeats_patches_per_s']}", ""]
    if "predict" in result:
        r = result["predict"]
        lines += [f"## dias predict --fast, {r['size']}x{r['size']} 8-frame series, {r['model']}", "",
                  "| tile/stride | tile batch | compile | bf16 | s per series |", "|---|---|---|---|---|"]
        lines += [f"| {x['tile']}/{x['stride']} | {x['tile_batch']} | {x['compile']} | {x['bf16']} | "
                  f"{x['seconds']:.3g} |" for x in r["rows"]]
        lines += ["", f"first row = what --fast does on this CPU (native bf16: {r['bf16_native']}; ConvGRU "
                  f"arrangement {r['convgru_arrangement']})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="tiny widths and sizes (a smoke test, not a measurement)")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="", help="file stem (default: cpu_report_<cpu-slug>)")
    parser.add_argument("--predict-rows", default="",
                        help="comma-separated indices of PREDICT_OPTIONS to time after the --fast row (0)")
    parser.add_argument("--predict-options", action="store_true",
                        help="also time the candidate tile/stride, tile batch and eval.compile settings")
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                            help=f"default {value} ({QUICK[key]} with --quick)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    parts = [p for p in args.parts.split(",") if p]
    if not parts or set(parts) - set(PARTS):
        raise SystemExit(f"--parts: choose from {', '.join(PARTS)}")
    if args.repeats < 5:
        raise SystemExit("--repeats: at least 5")
    cpu = cpu_tuning.cpu_model()
    result = {"benchmark": "cpu_report", "cpu": cpu, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "logical_cores": os.cpu_count(), "quick": args.quick, "parts": parts, "git_sha": git_sha(),
              "load_average_before": _load()}
    tic = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dias_cpu_report_") as tmp:
        if "ratios" in parts:
            result["ratios"] = ratios(args)
        if "loader" in parts:
            result["loader"] = loader(args, Path(tmp) / "loader")
        if "predict" in parts:
            result["predict"] = predict(args, Path(tmp) / "predict")
    result["load_average_after"] = _load()
    result["seconds"] = round(time.perf_counter() - tic, 1)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"cpu_report_{slug(cpu)}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(result) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("ratios", "predict")}
                     | {"ratios": {p: result["ratios"][p]["ratio"] for p in roofline.PATHS} if "ratios" in result
                        else None,
                        "predict_seconds_per_series": result.get("predict", {}).get("seconds_per_series")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
