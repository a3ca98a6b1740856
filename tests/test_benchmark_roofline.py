"""benchmarks/roofline.py on tiny models: every model x path x precision row, counted FLOPs equal across
ConvGRU arrangements and the reference cell, rates and peak fractions that follow from the timings."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dias_dist.models.convgru import resolve_arrangement

pytestmark = pytest.mark.slow  # multi-process / cluster / browser / benchmark: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]


def test_roofline_json_covers_every_path_with_consistent_rates(tmp_path):
    out = tmp_path / "roofline.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "roofline.py"), "--width", "4", "--train-batch", "2",
           "--eval-batch", "2", "--patch", "16", "--image", "16", "--warmup", "0", "--repeats", "1",
           "--peak-size", "256", "--bf16", "on", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout.splitlines()[-1]) == result
    assert result["device"].startswith("CPU ") and result["load_average_1_5_15_before"] is not None
    peaks = result["matmul_peak_gflop_per_s"]
    assert peaks["fp32"] > 0 and peaks["bf16"] > 0
    rows = result["rows"]
    paths = ("train_step", "eval_forward", "predict_forward")
    for model in ("vss_net", "fr_unet"):
        for path in paths:
            for precision in ("fp32", "bf16"):
                assert any((r["model"], r["path"], r["precision"]) == (model, path, precision) for r in rows)
    for path in paths:  # the arrangements and the reference cell do the same arithmetic
        flops = {r["gflop"] for r in rows if r["model"] == "vss_net" and r["path"] == path}
        assert len(flops) == 1 and flops.pop() > 0
    # a 16 px image pads to 24 px: 2 x 2 tiles of 16 px at stride 8
    assert {r["batch"] for r in rows if r["path"] == "predict_forward"} == {4}
    for r in rows:
        assert r["gflop_per_s"] == pytest.approx(r["gflop"] / r["seconds_min"])
        assert r["fraction_of_fp32_peak"] == pytest.approx(r["gflop_per_s"] / peaks["fp32"])
        assert r["fraction_of_peak"] == pytest.approx(r["gflop_per_s"] / peaks[r["precision"]])
        assert r["seconds_min"] <= r["seconds_median"]
    for path, entry in result["arrangement"].items():
        assert entry["chosen"] == resolve_arrangement("auto", torch.device("cpu"), path == "train_step")
        assert {entry["chosen"], entry["other"]} == {"batched", "stepped"}
    ratios = result["vss_net_speedup_vs_reference_gru"]
    assert set(ratios) == set(paths)
    assert result["inference_at_least_reference_speed"] == (min(ratios["eval_forward"], ratios["predict_forward"]) >= 1)
    for key, split in result["profile"].items():
        assert split["conv_s"] > 0 and 0 < split["bound_fraction_of_peak"] <= 1, key
    assert set(result["bf16_speedup"]) == {f"{m}/{p}" for m in ("vss_net", "fr_unet") for p in paths}
