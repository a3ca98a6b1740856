"""Training-patch throughput: the shard readers (by location) vs the PNG folder path.

Every path produces the same thing: K random 64x64x8 patches per sequence with the weak augmentation.
- shard paths: ``dias_dist.data.loader.train_batches`` in this process (num_workers=0), batches of 64,
  shuffle buffer 2048, float32 batches (the contract), from the same shard set read as
    mmap         a local folder: memory-mapped, zero copy (``ShardReader``; also with float16 batches)
    wds_file     file:// -- the local files streamed through WebDataset (gopen + tar iterator) into memory
    wds_http     http://127.0.0.1 -- the same, served by ``python -m http.server`` in another process, via curl
    wds_http_noverify   as wds_http with data.verify=false (the sha256 of every streamed shard not computed)
    http_cache   http:// with a cache folder: downloaded once (WebDataset's FileCache), then mmap
  The set is written with ``--min-shards`` shards, so a streamed reader reads a new shard every
  few sequences, as in a real run (one streamed shard per source is kept for the next draw).
- PNG path: read the frame PNGs + label PNG, preprocess (resample to 8 + z-score), cut K patches,
  augment -- what a loader without shards does per sequence.

The shard paths are measured ``--repeats`` times, interleaved (mmap, wds_file, wds_http, ... then
again), and the best (least disturbed) rate of each is the headline; every repeat is in the JSON.
Rates are per wall second and per CPU second of this process (curl and the HTTP server are other
processes: their CPU is not in the per-CPU-second rate); ``load_average`` says how busy the machine
was. The last line printed is the JSON result.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_throughput.py --seconds 6 --repeats 3 \
        --out benchmarks/results/data_throughput_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dias_dist.data import dias
from dias_dist.data.augment import apply_weak, weak_params
from dias_dist.data.loader import TrainSource, train_batches
from dias_dist.data.phantom_cli import write_phantom_dataset
from dias_dist.data.preprocess import preprocess_sequence
from dias_dist.data.shards import write_shards
from machine import cpu_model, git_sha, write_result


def measure(run, seconds):
    """Call ``run()`` (returns patches made) until ``seconds`` of wall time passed; (wall rate, CPU rate)."""
    patches, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        patches += run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return patches / wall, patches / cpu


def shard_rate(shard_dir, image_dtype, seconds, patches_per_sequence, **kwargs):
    stream = iter(train_batches(TrainSource(str(shard_dir)), batch_size=64, patches_per_sequence=patches_per_sequence,
                                shuffle_buffer=2048, num_workers=0, seed=0, image_dtype=image_dtype, **kwargs))
    for _ in range(40):  # fill the shuffle buffer and the page cache
        next(stream)
    return measure(lambda: next(stream)["image"].shape[0], seconds)


def png_rate(src, seconds, patches_per_sequence, patch=64):
    files = dias.list_sequences(src, "training")
    rng = np.random.default_rng(0)

    def one_sequence():
        seq = dias.read_sequence(files[int(rng.integers(len(files)))])
        frames, _ = preprocess_sequence(seq.frames)
        height, width = seq.label.shape
        tops = rng.integers(0, height - patch, patches_per_sequence)
        lefts = rng.integers(0, width - patch, patches_per_sequence)
        flip_h, flip_w, turns = weak_params(rng, patches_per_sequence)
        images = [apply_weak(frames[:, t:t + patch, l:l + patch], flip_h[i], flip_w[i], turns[i])
                  for i, (t, l) in enumerate(zip(tops, lefts))]
        targets = [apply_weak(seq.label[t:t + patch, l:l + patch], flip_h[i], flip_w[i], turns[i])
                   for i, (t, l) in enumerate(zip(tops, lefts))]
        np.stack(images).astype(np.float32), np.stack(targets).astype(np.int64)
        return patches_per_sequence

    one_sequence()
    return measure(one_sequence, seconds)


def http_server(folder: Path):
    """``python -m http.server`` serving ``folder`` on 127.0.0.1 in its own process: (process, base URL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--train", type=int, default=12, help="training sequences to generate")
    parser.add_argument("--min-shards", type=int, default=4, help="shards the training split is written as")
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per path and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the shard paths")
    parser.add_argument("--patches-per-sequence", type=int, default=64)
    parser.add_argument("--workdir", default="", help="keep the generated data here (default: a temp folder)")
    parser.add_argument("--out", default="", help="also write the JSON result to this file")
    parser.add_argument("--load-note", default="", help="what else ran on the machine (recorded in the JSON)")
    args = parser.parse_args()
    os.environ.setdefault("WDS_SECURE", "0")  # file:// is read by WebDataset's gopen only when not secured
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dias_throughput_"))
    src, shard_dir = work / "phantom", work / "shards"
    if not (shard_dir / "manifest.json").is_file():
        write_phantom_dataset(src, size=args.size, train=args.train, val=0, test=0, unlabeled=0, seed=0, preview=False)
        write_shards(src, shard_dir, splits=["training"], min_shards=args.min_shards)
    k = args.patches_per_sequence
    load_before = round(os.getloadavg()[0], 2)
    server, base = http_server(work)
    cache = work / "cache"
    paths = {
        "mmap": (str(shard_dir), {}),
        "wds_file": (f"file://{shard_dir.resolve()}", {}),
        "wds_http": (f"{base}/shards", {}),
        "wds_http_noverify": (f"{base}/shards", {"verify": False}),
        "http_cache": (f"{base}/shards", {"cache_dir": str(cache)}),
    }
    repeats: dict[str, list] = {name: [] for name in paths}
    try:
        for _ in range(args.repeats):
            for name, (where, kwargs) in paths.items():
                repeats[name].append([round(x) for x in shard_rate(where, "float32", args.seconds, k, **kwargs)])
    finally:
        server.terminate()
        server.wait()
    shard16 = shard_rate(shard_dir, "float16", args.seconds, k)
    png = png_rate(src, args.seconds, k)
    # the least disturbed repeat of each path: highest wall rate, highest CPU rate (each on its own)
    best = {name: (max(r[0] for r in runs), max(r[1] for r in runs)) for name, runs in repeats.items()}
    manifest = json.loads((shard_dir / "manifest.json").read_text())["splits"]["training"]
    result = {
        "benchmark": "data_throughput", "git_sha": git_sha(),
        "machine": f"{cpu_model()}, {os.cpu_count()} logical cores (CPU, no GPU), {platform.node()}",
        "load_average_1m_before": load_before, "load_average_1m_after": round(os.getloadavg()[0], 2),
        "size": args.size, "patches_per_sequence": k, "patch": [8, 64, 64], "loader_processes": 1,
        "shards": manifest["num_shards"], "shard_mb": round(sum(s["bytes"] for s in manifest["shards"]) / 2**20
                                                            / manifest["num_shards"], 1),
        "seconds_per_measurement": args.seconds, "repeats": args.repeats,
        "repeat_patches_per_s_and_per_cpu_s": repeats,
        **{f"{name}_patches_per_s": rate[0] for name, rate in best.items()},
        **{f"{name}_patches_per_cpu_s": rate[1] for name, rate in best.items()},
        "mmap_float16_patches_per_s": round(shard16[0]), "png_patches_per_s": round(png[0]),
        "png_patches_per_cpu_s": round(png[1]),
        "speedup_mmap_vs_png_wall": round(best["mmap"][0] / png[0], 1),
        "mmap_vs_wds_file_wall": round(best["mmap"][0] / best["wds_file"][0], 2),
        "mmap_vs_wds_http_wall": round(best["mmap"][0] / best["wds_http"][0], 2),
        "mmap_vs_wds_file_cpu": round(best["mmap"][1] / best["wds_file"][1], 2),
        "mmap_vs_wds_http_cpu": round(best["mmap"][1] / best["wds_http"][1], 2),
        "load": args.load_note,
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
