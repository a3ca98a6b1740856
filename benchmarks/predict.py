"""Seconds per 800x800 8-frame series: ``dias predict`` against ``dias evaluate``, and the tile / stride
study (DSC change against speed-up).

    python benchmarks/predict.py --data data/study800 --demo-checkpoint runs/<demo run>/checkpoints/best.pt \\
        --out benchmarks/results/predict_cpu.json

``--data``: a release-layout folder whose test split holds 800x800 sequences (``dias phantom DIR
--size 800 ...``). Speed: full-size VSS-Net and FR-UNet (default widths, random weights: the time
does not depend on them), the first test sequence with at least 8 frames cut to 8 frames;
``evaluate`` is ``evaluate_split`` on a one-sequence shard set of it (what ``dias evaluate`` runs,
shard decoding and metrics included), ``predict`` is what ``dias predict`` runs per series (read the
PNG frames, preprocess, sliding window, write every output). The two are timed in alternation,
``--repeats`` times, and the minimum is kept. Tile study: the demo model's mean test DSC at each
``--tile``/``--stride`` setting on every test sequence of ``--data`` (and of ``--demo-data``, the
demo's own 128-px test split), and full-size VSS-Net's predict seconds at each setting.
Records the machine and ``/proc/loadavg`` before and after each timing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from dias_dist.config import Config, ModelConfig  # noqa: E402
from dias_dist.data import dias  # noqa: E402
from dias_dist.data.shards import write_shards  # noqa: E402
from dias_dist.evaluation.evaluate import evaluate_split  # noqa: E402
from dias_dist.metrics import image_metrics  # noqa: E402
from dias_dist.models import build_model  # noqa: E402
from dias_dist.predict.model import TrainedModel, load_trained_model, series_probability  # noqa: E402
from dias_dist.predict.readers import read_series  # noqa: E402
from dias_dist.predict.writers import write_series_outputs  # noqa: E402

SETTINGS = ((64, 32), (64, 48), (64, 64), (128, 96), (256, 224), (0, 0))  # (tile, stride); 0 = whole image


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def one_sequence_folders(data: Path, work: Path) -> tuple[Path, Path]:
    """(frame folder of 8 frames, shard set of the same sequence) from the first test sequence with >= 8 frames."""
    files = next(f for f in dias.list_sequences(data, "test") if len(f.frames) >= 8)
    frames_dir = work / "series" / f"s{files.seq_id}"
    release = work / "release"
    (release / "test" / "images").mkdir(parents=True)
    (release / "test" / "labels").mkdir(parents=True)
    frames_dir.mkdir(parents=True)
    for index, path in enumerate(files.frames[:8]):
        shutil.copy(path, frames_dir / f"frame{index}.png")
        shutil.copy(path, release / "test" / "images" / f"image_s{files.seq_id}_i{index}.png")
    shutil.copy(files.label, release / "test" / "labels" / files.label.name)
    write_shards(release, work / "shards", progress=False)
    return frames_dir, work / "shards"


def full_size(name: str) -> TrainedModel:
    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(name=name))
    return TrainedModel(build_model(name).eval(), cfg, f"{name} (full size, random weights)")


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_predict(model: TrainedModel, frames_dir: Path, out: Path, tile: int, stride: int,
                 amp: bool = False) -> tuple[float, float]:
    def run():
        series = read_series(frames_dir)
        prob = series_probability(model, series.frames, tile=tile, stride=stride, amp=amp)
        write_series_outputs(out / series.name, series, prob, threshold=0.5, dti=False, summary={})
    return _timed(run)


def time_evaluate(model: TrainedModel, shards: Path, tile: int, stride: int, amp: bool = False) -> tuple[float, float]:
    eval_cfg = dataclasses.replace(model.cfg.eval, patch_size_px=tile, stride_px=stride or 1)
    return _timed(lambda: evaluate_split(model.network, shards, "test", eval_cfg, device="cpu", out_dir=None,
                                         amp=amp))


def speed(models: list[str], frames_dir: Path, shards: Path, work: Path, repeats: int, tile: int,
          stride: int, amp: bool = False) -> dict:
    out = {}
    for name in models:
        model = full_size(name)
        runs = {"predict": [], "evaluate": []}
        load = [loadavg()]
        for repeat in range(repeats):  # alternate, and swap who goes first, so that load and warm-up hit both alike
            order = ("evaluate", "predict") if repeat % 2 == 0 else ("predict", "evaluate")
            for what in order:
                runs[what].append(time_evaluate(model, shards, tile, stride, amp) if what == "evaluate"
                                  else time_predict(model, frames_dir, work / "out", tile, stride, amp))
            print(name, tile, stride, runs, flush=True)
        load.append(loadavg())
        best = {k: min(v) for k, v in runs.items()}  # (wall, cpu) of the fastest wall time
        out[f"{name}_tile{tile}_stride{stride}{'_bf16' if amp else ''}"] = {
            "model": name, "tile": tile, "stride": stride, "bf16": amp,
            "wall_s_predict": round(best["predict"][0], 2), "wall_s_evaluate": round(best["evaluate"][0], 2),
            "cpu_s_predict": round(best["predict"][1], 2), "cpu_s_evaluate": round(best["evaluate"][1], 2),
            "predict_over_evaluate_wall": round(best["predict"][0] / best["evaluate"][0], 3),
            "predict_over_evaluate_cpu": round(best["predict"][1] / best["evaluate"][1], 3),
            "runs_wall_cpu_s": {k: [[round(x, 2) for x in pair] for pair in v] for k, v in runs.items()},
            "loadavg_before_after": load}
    return out


def mean_dsc(model: TrainedModel, root: Path, tile: int, stride: int, limit: int,
             amp: bool = False) -> tuple[float, int]:
    scores = []
    for files in dias.list_sequences(root, "test")[:limit or None]:
        seq = dias.read_sequence(files)
        prob = series_probability(model, seq.frames / 255.0, tile=tile, stride=stride, amp=amp)
        scores.append(image_metrics(prob, seq.label, model.cfg.eval.threshold, model.cfg.eval.dti)["dsc"])
    return float(np.mean(scores)), len(scores)


def tile_study(checkpoint: str, data_sets: list[Path], frames_dir: Path, work: Path, repeats: int,
               sections: set[str], limit: int, previous: dict, speed_tiles: set, amp: bool = False) -> dict:
    """Rows per (tile, stride): the demo model's mean test DSC per data set (``dsc``) and full-size
    VSS-Net's predict seconds (``tile-speed``); a section not run keeps the values of ``previous``.
    ``amp``: bf16 autocast, recorded under ``*_bf16`` keys next to the fp32 ones (DSC change against
    fp32 64/32)."""
    tag = "_bf16" if amp else ""
    demo = load_trained_model(checkpoint)
    vss = full_size("vss_net")
    old = {(r["tile"], r["stride"]): r for r in previous.get("settings", [])}
    rows = []
    for tile, stride in SETTINGS:
        row = dict(old.get((tile, stride), {"tile": tile, "stride": stride}))
        if "dsc" in sections:
            for root in data_sets:
                dsc, count = mean_dsc(demo, root, tile, stride, limit if root == data_sets[0] else 0, amp)
                row[f"dsc{tag}_{root.name}"] = round(dsc, 5)
                row[f"images_{root.name}"] = count
        if "tile-speed" in sections and (tile, stride) in speed_tiles:
            load = [loadavg()]
            runs = [time_predict(vss, frames_dir, work / "out", tile, stride, amp) for _ in range(repeats)]
            load.append(loadavg())
            wall, cpu = min(runs)
            row.update({f"wall_s{tag}_vss_net_full": round(wall, 2), f"cpu_s{tag}_vss_net_full": round(cpu, 2),
                        f"runs_wall_cpu_s{tag}": [[round(x, 2) for x in pair] for pair in runs],
                        f"loadavg_before_after{tag}": load})
        print(row, flush=True)
        rows.append(row)
    base = rows[0]
    for row in rows:
        for key in [k for k in row if k.startswith("dsc_") and not k.startswith("dsc_change_")]:
            fp32_key = key.replace("dsc_bf16_", "dsc_")  # every change is against fp32 at 64/32
            if fp32_key in base:
                row[f"dsc_change_{key[4:]}"] = round(row[key] - base[fp32_key], 5)
        for t in ("", "_bf16"):
            if f"cpu_s{t}_vss_net_full" in row and "cpu_s_vss_net_full" in base:
                row[f"speedup{t}_vs_64_32_cpu"] = round(base["cpu_s_vss_net_full"] / row[f"cpu_s{t}_vss_net_full"], 2)
                row[f"speedup{t}_vs_64_32_wall"] = round(base["wall_s_vss_net_full"] / row[f"wall_s{t}_vss_net_full"], 2)
    return {"demo_checkpoint": checkpoint, "settings": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="release-layout folder with 800x800 test sequences")
    parser.add_argument("--demo-checkpoint", required=True, help="the demo run's best.pt")
    parser.add_argument("--demo-data", default="data/demo", help="the demo's own data (its test split too)")
    parser.add_argument("--models", default="vss_net,fr_unet")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sections", default="speed,dsc,tile-speed",
                        help="comma list of: speed (predict vs evaluate), dsc and tile-speed (the tile study)")
    parser.add_argument("--tile", default="64/32", help="TILE/STRIDE of the speed section (0/0: whole image)")
    parser.add_argument("--speed-tiles", default="64/32,64/48,128/96,256/224,0/0",
                        help="TILE/STRIDE settings timed by tile-speed (the others keep earlier values)")
    parser.add_argument("--dsc-limit", type=int, default=0, help="score only the first N test sequences of --data")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16 autocast (dias predict --bf16) in every section; results under *_bf16 keys")
    parser.add_argument("--out", required=True, help="JSON file (merged into when it exists)")
    args = parser.parse_args(argv)
    sections = set(filter(None, args.sections.split(",")))
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="dias-bench-predict-") as tmp:
        work = Path(tmp)
        frames_dir, shards = one_sequence_folders(Path(args.data), work)
        result.update(device=describe(torch.device("cpu")), torch_threads=torch.get_num_threads(),
                      omp_num_threads=os.environ.get("OMP_NUM_THREADS", ""), series="800x800, 8 frames",
                      note="the 2-core machine is shared with other jobs: compare ratios of interleaved runs, "
                           "loads are recorded next to each timing")
        if "speed" in sections:
            tile, stride = map(int, args.tile.split("/"))
            result["speed"] = {**result.get("speed", {}),
                               **speed(args.models.split(","), frames_dir, shards, work, args.repeats, tile, stride, args.bf16)}
            out.write_text(json.dumps(result, indent=2) + "\n")
        if sections & {"dsc", "tile-speed"}:
            data_sets = [Path(args.data)] + ([Path(args.demo_data)] if Path(args.demo_data).is_dir() else [])
            result["tile_study"] = tile_study(args.demo_checkpoint, data_sets, frames_dir, work, args.repeats,
                                              sections, args.dsc_limit, result.get("tile_study", {}),
                                              {tuple(map(int, t.split("/"))) for t in args.speed_tiles.split(",")},
                                              args.bf16)
            result["tile_study"]["dsc_limit"] = args.dsc_limit
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
