"""RPST: pseudo-label shards with provenance, the labelled/pseudo patch mixture, stage bookkeeping, and a
2-round job under 2-process gloo that leaves teacher, round-1 and round-2 runs in MLflow under one parent."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dias_dist.config import load_config
from dias_dist.data.loader import train_batches
from dias_dist.data.phantom_cli import write_phantom_dataset
from dias_dist.data.shards import ShardReader, read_manifest, verify_shards, write_shards
from dias_dist.semi import rpst
from dias_dist.semi.pseudo_label import pseudo_label_split

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "semi" / "rpst_cpu.yaml"


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    """64x64 phantoms: 3 training, 1 validation, 1 test, 3 unlabelled sequences, sharded."""
    root = tmp_path_factory.mktemp("rpst_data")
    write_phantom_dataset(root / "phantom", size=64, train=3, val=1, test=1, unlabeled=3, seed=7, preview=False)
    write_shards(root / "phantom", root / "shards")
    return root / "shards"


class MeanFrameModel(nn.Module):
    """A pointwise "teacher": vessel logit = -mean over frames (vessels are dark), background logit 0.

    Being pointwise, its overlap-averaged sliding-window probability equals sigmoid(-mean_T x) at every
    pixel, so the expected hard label is simply mean_T(frames) <= 0."""

    input_layout = "frames"

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x_BTHW):
        vessel = -self.scale * x_BTHW.mean(dim=1, keepdim=True)
        return torch.cat([torch.zeros_like(vessel), vessel], dim=1)


def test_pseudo_label_shards_round_trip_with_provenance(shard_dir, tmp_path):
    cfg = load_config(CPU_CONFIG, [f"data.shards={shard_dir}"])
    provenance = {"teacher_run_id": "abc123", "checkpoint": "/runs/job-teacher/checkpoints/final.pt", "round": 1}
    out = tmp_path / "pseudo"
    stats = pseudo_label_split(MeanFrameModel(), shard_dir, "unlabeled", out, cfg.eval, device=torch.device("cpu"),
                               provenance=provenance, num_sequences=2)
    assert stats["num_sequences"] == 2 and 0.0 < stats["vessel_fraction"] < 1.0

    verify_shards(out)
    entry = read_manifest(out)["splits"]["unlabeled"]
    for key, value in provenance.items():
        assert entry["provenance"][key] == value
    assert entry["provenance"]["threshold"] == 0.5
    assert entry["provenance"]["source_shards"] == str(shard_dir.resolve())

    source_keys = sorted(k for s in read_manifest(shard_dir)["splits"]["unlabeled"]["shards"] for k in s["keys"])
    source = ShardReader(shard_dir / read_manifest(shard_dir)["splits"]["unlabeled"]["shards"][0]["name"])
    written = ShardReader(out / entry["shards"][0]["name"])
    assert sorted(written.keys) == source_keys[:2], "num_sequences keeps the first N keys"
    for key in written.keys:
        sample = written.decode(key)
        assert np.array_equal(sample["frames"], source.frames(key)), "frames are copied unchanged"
        expected = (source.frames(key).astype(np.float32).mean(axis=0) <= 0).astype(np.uint8)
        assert sample["pseudo"].dtype == np.uint8
        assert (sample["pseudo"] == expected).mean() > 0.999
        assert sample["meta"]["pseudo_label"]["teacher_run_id"] == "abc123"
        assert sample["meta"]["pseudo_label"]["round"] == 1
        assert sample["meta"]["id"] == int(key[1:])


def _is_pseudo_share(sources, num_batches=60, batch_size=32):
    stream = iter(train_batches(sources, batch_size=batch_size, patch_size=32, patches_per_sequence=4,
                                shuffle_buffer=16, num_workers=0, seed=3))
    flags, batch = [], None
    for _ in range(num_batches):
        batch = next(stream)
        flags.append(batch["is_pseudo"])
    return float(torch.cat(flags).float().mean()), batch


@pytest.mark.parametrize("labeled_prob", [0.5, 0.25])
def test_student_patch_mixture_follows_p(shard_dir, tmp_path, labeled_prob):
    cfg = load_config(CPU_CONFIG, [f"data.shards={shard_dir}", f"rpst.labeled_prob={labeled_prob}"])
    out = tmp_path / "pseudo"
    pseudo_label_split(MeanFrameModel(), shard_dir, "unlabeled", out, cfg.eval, device=torch.device("cpu"),
                       provenance={"round": 1})
    sources = rpst.student_sources(cfg, out)
    assert [s.is_pseudo for s in sources] == [False, True]
    assert sources[1].augment == "strong" and sources[1].target == "pseudo"
    assert sources[0].num_sequences == cfg.data.num_labeled
    share, batch = _is_pseudo_share(sources)  # 1920 patches
    assert abs(share - (1.0 - labeled_prob)) < 0.05
    assert batch["image"].shape == (32, 8, 32, 32) and batch["image"].dtype == torch.float32
    assert set(torch.unique(batch["target"]).tolist()) <= {0, 1}


def test_strong_augment_switch(shard_dir, tmp_path):
    cfg = load_config(CPU_CONFIG, [f"data.shards={shard_dir}", "rpst.strong_augment=false"])
    assert rpst.student_sources(cfg, tmp_path)[1].augment == "weak"


@pytest.mark.parametrize("override, message", [
    ("rpst.labeled_prob=1.0", "rpst.labeled_prob"),
    ("rpst.labeled_prob=0", "rpst.labeled_prob"),
    ("data.num_labeled=0", "data.num_labeled"),
    ("rpst.student_init=imagenet", "rpst.student_init"),
    ("rpst.rounds=0", "rpst.rounds"),
])
def test_bad_settings_are_value_errors(override, message):
    with pytest.raises(ValueError, match=message):
        rpst.validate(load_config(CPU_CONFIG, [override]))


def test_stage_names_and_order_checks(shard_dir, tmp_path):
    assert rpst.stage_names(2) == ["teacher", "pseudo1", "round1", "pseudo2", "round2"]
    assert [rpst.stage_round(s) for s in rpst.stage_names(2)] == [0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="unknown RPST stage"):
        rpst.stage_round("student")
    cfg = load_config(CPU_CONFIG, [f"data.shards={shard_dir}", f"train.run_dir={tmp_path}", "train.run_name=job",
                                   "track.enabled=false"])
    with pytest.raises(ValueError, match="needs stage teacher first"):
        rpst.run_stage(cfg, "pseudo1")
    with pytest.raises(ValueError, match="beyond rpst.rounds"):
        rpst.run_stage(cfg, "round3")


@pytest.mark.slow
def test_two_round_rpst_under_two_process_gloo(shard_dir, tmp_path):
    """`dias rpst` under torchrun: 5 stages nested under one parent run, pseudo labels from both ranks."""
    run_dir = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "dias_dist.cli", "rpst", str(CPU_CONFIG),
               f"data.shards={shard_dir}", f"train.run_dir={run_dir}", "train.run_name=job2",
               "rpst.rounds=2", "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=4",
               "eval.stride_px=32", "data.num_labeled=2"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    state = json.loads((run_dir / "job2" / "rpst_state.json").read_text())
    assert list(state["stages"]) == ["teacher", "pseudo1", "round1", "pseudo2", "round2"]
    for k in (1, 2):
        provenance = read_manifest(state["stages"][f"pseudo{k}"]["out_dir"])["splits"]["unlabeled"]["provenance"]
        source = "teacher" if k == 1 else "round1"
        assert provenance["round"] == k and provenance["world_size"] == 2
        assert provenance["teacher_run_id"] == state["stages"][source]["run_id"] != ""
        assert provenance["checkpoint"] == str(Path(state["stages"][source]["checkpoint"]).resolve())
        assert state["stages"][f"pseudo{k}"]["num_sequences"] == 3

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("dias-rpst-cpu")
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    parent = runs[state["parent_run_id"]]
    assert parent.info.status == "FINISHED" and parent.data.tags["rpst.num_labeled"] == "2"
    children = {r.data.tags["rpst.stage"]: r for r in runs.values()
                if r.data.tags.get("mlflow.parentRunId") == state["parent_run_id"]}
    assert set(children) == {"teacher", "pseudo1", "round1", "pseudo2", "round2"}
    for stage in ("teacher", "round1", "round2"):
        child = children[stage]
        assert child.info.run_id == state["stages"][stage]["run_id"]
        assert child.info.status == "FINISHED"
        assert child.data.tags["rpst.num_labeled"] == "2"
        assert child.data.tags["rpst.strong_augment"] == "true" and child.data.tags["rpst.student_init"] == "teacher"
        assert 0.0 <= child.data.metrics["test_dsc"] <= 1.0
    curve = client.get_metric_history(parent.info.run_id, "rpst_test_dsc")
    assert sorted(m.step for m in curve) == [0, 1, 2]


def test_cli_rejects_bad_stage_requests(shard_dir, tmp_path, capsys):
    from dias_dist.cli import main

    base = ["rpst", str(CPU_CONFIG), f"data.shards={shard_dir}", f"train.run_dir={tmp_path}", "track.enabled=false"]
    assert main(base + ["--stage", "student"]) == 2
    assert "unknown RPST stage" in capsys.readouterr().err
    assert main(base + ["--stage", "round1"]) == 2
    assert "train.run_name" in capsys.readouterr().err
