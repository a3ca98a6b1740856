"""benchmarks/run_cpu_report.sh --quick: one JSON (and Markdown) per CPU with every part filled in."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_slug_is_a_file_name():
    from cpu_report import slug  # benchmarks/ is not a package: imported once its folder is on the path

    assert slug("AMD EPYC 7B13 64-Core Processor") == "amd-epyc-7b13-64-core-processor"
    assert slug("Intel(R) Xeon(R) CPU @ 2.20GHz") == "intel-r-xeon-r-cpu-2-20ghz"
    assert slug("") == "unknown-cpu"


@pytest.mark.slow
def test_quick_report_has_every_ratio_and_the_cpu(tmp_path):
    from dias_dist.models.cpu_tuning import cpu_model

    env = {**os.environ, "PYTHON": sys.executable, "DIAS_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(["bash", "benchmarks/run_cpu_report.sh", "--quick", "--out-dir", str(tmp_path / "out"),
                           "--name", "report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "report.json").read_text())
    assert result["cpu"] == cpu_model() and result["cpu"]
    assert result["quick"] is True and result["omp_num_threads"] == os.environ.get("OMP_NUM_THREADS", "2")
    for path in ("train_step", "eval_forward", "predict_forward"):
        row = result["ratios"][path]
        assert row["ratio"] > 0 and row["arrangement"] in ("batched", "stepped")
        assert len(row["ours_times_s"]) == len(row["reference_times_s"]) >= 5
    assert result["loader"]["patches_per_s"] > 0
    assert result["predict"]["seconds_per_series"] > 0
    assert len(result["load_average_before"]) == 3 and len(result["load_average_after"]) == 3
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert result["cpu"] in markdown and "predict_forward" in markdown
