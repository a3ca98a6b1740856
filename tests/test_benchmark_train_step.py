"""benchmarks/train_step.py on a tiny VSS-Net: the JSON it writes, and the fact behind its roofline
fields (the batched ConvGRU and the reference per-timestep cell do exactly the same arithmetic)."""
import json
import os
import subprocess
import sys
from pathlib import Path
import pytest

pytestmark = pytest.mark.slow  # multi-process / cluster / browser / benchmark: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_json_reports_speed_and_the_equal_flops_bound(tmp_path):
    out = tmp_path / "train_step.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--batch", "2", "--patch", "16",
           "--width", "4", "--warmup", "0", "--repeats", "1", "--skip-fr-unet", "--peak-size", "512", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout.splitlines()[-1]) == result
    batched, reference = result["vss_net"], result["vss_net_reference_gru"]
    assert result["device_type"] == "cpu" and result["device"].startswith("CPU ") and result["batch"] == 2 and result["vss_net_width"] == 4
    assert batched["params"] == reference["params"]
    assert batched["gflop_per_step"] == reference["gflop_per_step"] > 0  # same arithmetic, other order
    assert result["matmul_peak_gflop_per_s"] > 0
    for entry in (batched, reference):
        assert entry["patches_per_s"] > 0 and entry["gflop_per_s"] > 0
