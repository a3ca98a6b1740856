"""What a run tells the person watching it (dias_dist/console.py, dias_dist/progress.py): the start
block, one line per validation, plain progress lines without a terminal, one error line under
torchrun, and absolute paths in checkpoints so that `dias evaluate` works from any directory."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dias_dist import cli, trainer
from dias_dist.config import load_config
from dias_dist.progress import PlainLines, Progress

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "debug.yaml"


def _train(tiny_shards, run_dir, *overrides):
    cfg = load_config(DEBUG, [f"data.shards={tiny_shards}", f"train.run_dir={run_dir}", "train.run_name=c",
                              "eval.test_split=", *overrides])
    return trainer.run(cfg)


def test_start_block_says_where_the_run_goes_and_what_it_runs_on(tiny_shards, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _train(tiny_shards, tmp_path, "train.max_steps=2", "eval.val_every_epochs=1000", "track.enabled=true",
                    f"track.tracking_uri={uri}")
    out = capsys.readouterr().out.splitlines()
    start = out.index("[dias] run c")
    facts = dict(line.split(None, 1) for line in out[start + 1:start + 11])
    assert list(facts) == ["folder", "mlflow", "device", "world_size", "backend", "precision", "engine", "data",
                           "steps"], out
    assert facts["folder"] == str(tmp_path / "c")
    assert facts["mlflow"].startswith(f"run {result['run_id']}: mlflow ui --backend-store-uri sqlite:///")
    assert f"/runs/{result['run_id']}" in facts["mlflow"] and "http://127.0.0.1:5000/#/experiments/" in facts["mlflow"]
    assert facts["data"] == str(tiny_shards) and facts["device"] == "cpu" and facts["world_size"] == "1"
    assert facts["steps"].startswith("0 -> 2 (3 epochs x 4 steps, global batch 4")


def test_start_block_without_tracking_says_so(tiny_shards, tmp_path, capsys):
    _train(tiny_shards, tmp_path, "train.max_steps=1", "eval.val_every_epochs=1000")
    assert "  mlflow     off (track.enabled=false)" in capsys.readouterr().out


def test_every_validation_prints_one_line_with_step_and_metrics(tiny_shards, tmp_path, capsys):
    _train(tiny_shards, tmp_path, "eval.val_every_epochs=1", "train.epochs=2")
    lines = [line for line in capsys.readouterr().out.splitlines() if " validation: " in line]
    assert [line.split(" validation: ")[0] for line in lines] == ["[dias] step 4/8 epoch 1", "[dias] step 8/8 epoch 2"]
    for line in lines:
        assert " dsc 0." in line and " auc " in line and " cldice " in line and "(best auc " in line, line


def test_without_a_terminal_progress_is_plain_lines(tiny_shards, tmp_path, capsys):
    _train(tiny_shards, tmp_path, "train.max_steps=10", "eval.val_every_epochs=1000", "train.progress=true")
    err = capsys.readouterr().err  # pytest's capture is no terminal
    assert "\r" not in err
    steps = [line for line in err.splitlines() if line.startswith("[dias] train step ")]
    assert steps[0].startswith("[dias] train step 1/10 (10%)") and steps[-1].startswith("[dias] train step 10/10 (100%)")
    assert len(steps) == 10 and all(" it/s, elapsed " in line for line in steps)
    assert "loss 0." in steps[-1] and "ETA 0m00s" in steps[-1]


def test_plain_lines_come_at_each_tenth_and_at_the_end(capsys):
    lines = PlainLines(95, "work", "it", every_s=1e9)
    for _ in range(95):
        lines.update(1)
    lines.close()
    out = capsys.readouterr().err.splitlines()
    assert out[0].startswith("[dias] work 9/95 (9%), ") and out[-1].startswith("[dias] work 95/95 (100%), ")
    assert [int(line.split()[2].split("/")[0]) for line in out] == [9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 95]


def test_a_terminal_gets_the_bar_and_no_plain_lines(capsys):
    progress = Progress(3, 0, 4, enabled=True, terminal=True)
    for _ in range(3):
        progress.update(torch.tensor(0.5), 0.0, 0.01)
    progress.close()
    err = capsys.readouterr().err
    assert "[dias]" not in err and "3/3" in err


@pytest.mark.parametrize("local_rank, printed", [("0", 1), ("1", 0)])
def test_a_config_error_is_printed_by_local_rank_0_only(monkeypatch, capsys, local_rank, printed):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert cli.main(["train", str(DEBUG), "optim.lr=-1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if "optim.lr must be in [0, 1], got -1.0" in line]) == printed
    assert len(err) == printed


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_config_error_under_torchrun_is_one_line(tmp_path):
    """Two ranks meet the same bad config: one error line. torchrun's own failure summary (its
    ChildFailedError traceback) is printed by the launcher process and cannot be suppressed by a worker."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "launch" / "train.py"), str(DEBUG), "optim.lr=-1", f"train.run_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=170, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert errors == ["python -m dias_dist.train: error: " + errors[0].split(": error: ", 1)[1]]
    assert "optim.lr must be in [0, 1], got -1.0" in errors[0]


def test_checkpoints_hold_absolute_paths_and_evaluate_runs_from_anywhere(tiny_shards, tmp_path, monkeypatch, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    shutil.copytree(tiny_shards, work / "shards")
    monkeypatch.chdir(work)
    cfg = load_config(DEBUG, ["data.shards=shards", "train.run_dir=runs", "train.run_name=rel", "train.max_steps=2",
                              "eval.val_every_epochs=1000", "eval.test_split="])
    trainer.run(cfg)
    last = work / "runs" / "rel" / "checkpoints" / "last.pt"
    stored = torch.load(last, map_location="cpu", weights_only=True)["config"]
    assert stored["data"]["shards"] == str(work / "shards") and stored["train"]["run_dir"] == str(work / "runs")
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert cli.main(["evaluate", str(last), "--split", "test", "--out", str(elsewhere / "ev"), "--no-images"]) == 0
    assert (elsewhere / "ev").is_dir()
    (work / "shards").rename(work / "shards_moved")
    capsys.readouterr()
    assert cli.main(["evaluate", str(last), "--split", "test", "--out", str(elsewhere / "ev2"), "--no-images"]) == 2
    err = capsys.readouterr().err
    assert "is not there any more (moved or deleted?)" in err and "data.shards=NEW_PLACE" in err
    assert len(err.strip().splitlines()) == 1


def test_a_transient_loop_prints_only_when_it_runs_long(capsys):
    from dias_dist.progress import bar

    assert list(bar(range(5), desc="eval validation", unit="img", enabled=True, leave=False)) == list(range(5))
    assert capsys.readouterr().err == ""  # a short validation inside training: no lines
    lines = PlainLines(4, "eval test", "img", every_s=0.0, transient=True)
    for _ in range(4):
        lines.update(1)
    lines.close()
    assert len(capsys.readouterr().err.splitlines()) == 4  # past every_s: a line per update
