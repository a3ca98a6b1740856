"""benchmarks/cpu_trials.py on a tiny VSS-Net (no compilation: too slow for a test): every variant is
timed against eager, its output compared, and a failing variant is recorded instead of crashing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # multi-process / cluster / browser / benchmark: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]


def test_trials_json_compares_each_variant_with_eager(tmp_path):
    out = tmp_path / "trials.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cpu_trials.py"), "--width", "4", "--eval-batch", "2",
           "--train-batch", "2", "--patch", "16", "--repeats", "1", "--eval-variants", "channels_last,no_such",
           "--train-variants", "channels_last", "--adopt", "0", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout.splitlines()[-1])["workloads"] == result["workloads"]
    evaluation, training = result["workloads"]["eval_forward"], result["workloads"]["train_step"]
    for entry in (evaluation["channels_last"], training["channels_last"]):
        assert entry["status"] == "ok"
        assert entry["speedup_vs_eager"] == pytest.approx(entry["eager_seconds_min"] / entry["seconds_min"])
        assert entry["max_rel_diff_vs_eager"] < 1e-3  # same model, other memory format
    assert evaluation["no_such"]["status"].startswith("failed")
    # --adopt 0: everything within tolerance that ran is adoptable, nothing that failed
    expected = {f"{w}/channels_last" for w, entry in (("eval_forward", evaluation), ("train_step", training))
                if entry["channels_last"]["max_rel_diff_vs_eager"] <= 1e-4}
    assert set(result["adoptable"]) == expected
