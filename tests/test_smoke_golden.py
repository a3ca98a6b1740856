"""Golden-loss smoke test: the debug config on the tiny synthetic shards reproduces the stored
per-step losses. A refactor that changes no computation must keep them; regenerate on purpose with
``DIAS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_smoke_golden.py`` (and say why in the commit).
"""
import os
from pathlib import Path

import pytest

from dias_dist import trainer
from dias_dist.config import load_config
from dias_dist.track import MetricsLog

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "assets" / "losses" / "debug_cpu.txt"
NUM_STEPS = 6


def test_debug_config_reproduces_golden_losses(tiny_shards, tmp_path):
    cfg = load_config(ROOT / "configs" / "debug.yaml", [
        f"data.shards={tiny_shards}", f"train.run_dir={tmp_path}", "train.run_name=golden",
        f"train.max_steps={NUM_STEPS}", "eval.val_every_epochs=1000", "eval.test_split="])
    trainer.run(cfg)
    records = [r for r in MetricsLog(tmp_path / "golden" / "metrics.jsonl", True).read() if r["kind"] == "train"]
    losses = [r["loss_total"] for r in records]
    assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1))
    if os.environ.get("DIAS_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text("# step loss_total (configs/debug.yaml on the tiny_shards fixture, CPU, 1 thread)\n"
                          + "".join(f"{i + 1} {v:.8f}\n" for i, v in enumerate(losses)))
    golden = [float(line.split()[1]) for line in GOLDEN.read_text().splitlines() if not line.startswith("#")]
    assert len(golden) == NUM_STEPS
    assert losses == pytest.approx(golden, rel=1e-5, abs=1e-6)
    assert len(set(golden)) == NUM_STEPS  # the loss moves: the golden file is not a constant
