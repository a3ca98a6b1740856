"""The training loop in one process with an in-memory stream (no shards): losses, accumulation,
NaN stop, dry run, config validation of every YAML under configs/."""
from pathlib import Path

import pytest
import torch
from torch import nn

from dias_dist import trainer
from dias_dist.data import loader
from dias_dist.evaluation import evaluate
from dias_dist.config import load_config
from dias_dist.methods import METHODS, Method
from dias_dist.models import MODELS
from dias_dist.run.track import MetricsLog

ROOT = Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
    """frames layout: (B, T, H, W) -> logits (B, 2, H, W)."""

    input_layout = "frames"

    def __init__(self, num_frames: int = 8, num_classes: int = 2, poison: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(num_frames, num_classes, 3, padding=1)
        self.poison = poison

    def forward(self, x):
        out = self.conv(x)
        return out * float("nan") if self.poison else out


class CrossEntropyOnly(Method):
    """Mean CE only: the mean over a batch equals the mean of equal micro-batch means."""

    def losses(self, model, batch):
        return {"total": torch.nn.functional.cross_entropy(model(batch["image"]), batch["target"])}


def fake_stream(cfg, sources, *, micro_batch, seed, step):
    """Deterministic per (seed, step): vessels are bright in frame 3."""
    gen = torch.Generator().manual_seed(loader.derived_seed(seed, step) % 2**31)
    size = cfg.patch_size_px
    while True:
        samples = []
        for _ in range(micro_batch):  # one sample at a time: micro-batches concatenate to batches
            target = (torch.rand(size, size, generator=gen) > 0.7).long()
            image = torch.randn(8, size, size, generator=gen) * 0.3
            image[3] += target * 2.0
            samples.append((image, target))
        yield {"image": torch.stack([s[0] for s in samples]), "target": torch.stack([s[1] for s in samples]),
               "is_pseudo": torch.zeros(micro_batch, dtype=torch.bool)}


@pytest.fixture
def fake_data(monkeypatch):
    monkeypatch.setitem(MODELS, "tiny_test_net", TinyNet)
    monkeypatch.setitem(METHODS, "ce_only_test", CrossEntropyOnly)
    monkeypatch.setattr(loader, "train_stream", fake_stream)
    monkeypatch.setattr(loader, "default_sources", lambda cfg: [])


def tiny_cfg(tmp_path, *extra):
    return load_config(ROOT / "configs" / "debug.yaml", [
        "model.name=tiny_test_net", "model.params={}", f"train.run_dir={tmp_path}", "train.run_name=t",
        "eval.test_split=", "eval.val_every_epochs=1000", "optim.lr=0.05", *extra])


def test_loss_decreases_and_files_are_written(tmp_path, fake_data):
    result = trainer.run(tiny_cfg(tmp_path, "train.epochs=5"))
    assert result["step"] == 20
    records = MetricsLog(tmp_path / "t" / "metrics.jsonl", True).read()
    losses = [r["loss_total"] for r in records if r["kind"] == "train"]
    assert len(losses) == 20
    assert sum(losses[-4:]) < sum(losses[:4]) - 0.2
    assert {"lr", "grad_norm", "patches_per_s", "data_wait_share", "loss_ce", "loss_dice"} <= set(records[0])
    for name in ("last.pt", "final.pt"):
        assert (tmp_path / "t" / "checkpoints" / name).is_file()
    assert (tmp_path / "t" / "config.yaml").read_text().count("run_name: t") == 1


def test_grad_accumulation_matches_the_full_batch(tmp_path, fake_data):
    """Two micro-batches of 2 give the same update as one batch of 4 (same patches, mean CE)."""
    def weights(accum, lr=0.01):
        trainer.run(tiny_cfg(tmp_path / str(accum), "method.name=ce_only_test", "train.max_steps=3",
                             "train.batch_size=4", f"train.grad_accum={accum}", f"optim.lr={lr}"))
        ckpt = torch.load(tmp_path / str(accum) / "t" / "checkpoints" / "final.pt", weights_only=True)
        return ckpt["model"]["conv.weight"]

    full, accumulated = weights(1), weights(2)
    torch.testing.assert_close(accumulated, full, rtol=1e-5, atol=1e-6)
    torch.manual_seed(7)  # train.seed of debug.yaml: the initial weights
    assert not torch.allclose(full, TinyNet().conv.weight, atol=1e-4)


def test_nan_loss_stops_with_the_step_and_saves_for_inspection(tmp_path, fake_data):
    cfg = tiny_cfg(tmp_path, "model.params={poison: true}")
    with pytest.raises(FloatingPointError, match="non-finite loss at step 0"):
        trainer.run(cfg)
    saved = torch.load(tmp_path / "t" / "checkpoints" / "nan_step0.pt", weights_only=True)
    assert "model" in saved and saved["batch_rank0"]["image"].shape[0] == 4


def test_dry_run_takes_one_step_and_writes_nothing(tmp_path, fake_data):
    result = trainer.run(tiny_cfg(tmp_path), dry_run=True)
    assert result["step"] == 1 and "loss_total" in result
    assert not (tmp_path / "t").exists()


def test_indivisible_batch_is_a_value_error(tmp_path, fake_data):
    with pytest.raises(ValueError, match="train.batch_size=5"):
        trainer.run(tiny_cfg(tmp_path, "train.batch_size=5", "train.grad_accum=2"))


def test_resume_path_must_exist(tmp_path, fake_data):
    with pytest.raises(ValueError, match="train.resume"):
        trainer.run(tiny_cfg(tmp_path, "train.resume=/nope/last.pt"))


@pytest.mark.parametrize("name", ["debug.yaml", "demo/vss_net_cpu.yaml", "demo/vss_net_first_cpu.yaml"])
def test_training_configs_validate_and_build(name):
    """(tests/test_config.py validates every YAML; here: ours also build their model and method.)"""
    from dias_dist.methods import build_network

    cfg = load_config(ROOT / "configs" / name)
    _, model = build_network(cfg.model, cfg.method)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_dias_evaluate_rebuilds_the_model_and_matches_the_trainers_test(tiny_shards, tmp_path, capsys):
    """`dias evaluate CHECKPOINT --split test --out DIR key=value` == the trainer's final test."""
    from dias_dist.cli import main as dias

    cfg = load_config(ROOT / "configs" / "debug.yaml", [
        f"data.shards={tiny_shards}", f"train.run_dir={tmp_path}", "train.run_name=e", "train.max_steps=2",
        "eval.val_every_epochs=1000"])
    result = trainer.run(cfg)
    ckpt = tmp_path / "e" / "checkpoints" / "final.pt"
    out = tmp_path / "again"
    assert dias(["evaluate", str(ckpt), "--split", "test", "--out", str(out), "--no-images",
                 "eval.batch_size=3"]) == 0
    printed = capsys.readouterr().out
    assert "test split" in printed and "DSC" in printed
    import csv

    rows = {r["metric"]: float(r["mean"]) for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["dsc"] == pytest.approx(result["test_dsc"], abs=1e-6)
    assert rows["auc"] == pytest.approx(result["test_auc"], abs=1e-6)
    assert dias(["evaluate", str(tmp_path / "missing.pt")]) == 2


def test_best_checkpoint_without_validation_is_a_clear_error(tiny_shards, tmp_path):
    cfg = load_config(ROOT / "configs" / "debug.yaml", [
        f"data.shards={tiny_shards}", f"train.run_dir={tmp_path}", "train.run_name=b", "train.max_steps=1",
        "eval.val_every_epochs=1000", "eval.test_checkpoint=best"])
    with pytest.raises(ValueError, match="eval.test_checkpoint='best'.*never written"):
        trainer.run(cfg)


@pytest.mark.gpu
def test_cuda_bf16_channels_last_step(tmp_path, fake_data):
    """On a GPU: bf16 autocast + channels-last train and the loss stays finite."""

    engine = trainer.make_engine(tiny_cfg(tmp_path, "train.device=cuda", "train.channels_last=true"), TinyNet(),
                                 torch.device("cuda"))
    x = engine.prepare_input(torch.randn(2, 8, 16, 16))
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)
    with engine.autocast():
        assert engine.model(x).dtype == torch.bfloat16
    result = trainer.run(tiny_cfg(tmp_path, "train.device=cuda", "train.channels_last=true", "train.max_steps=3"))
    assert result["step"] == 3


def test_cpu_runs_fp32_by_default_and_bf16_with_cpu_bf16(tmp_path, fake_data):
    """train.amp is for CUDA; on CPU bf16 autocast needs train.cpu_bf16 (training and evaluation)."""
    from dias_dist.evaluation.tiling import model_predict_fn

    cpu = torch.device("cpu")
    default = tiny_cfg(tmp_path)
    assert default.train.amp and not default.train.bf16_autocast(cpu) and default.train.bf16_autocast("cuda")
    engine = trainer.make_engine(default, TinyNet(), cpu)
    with engine.autocast():
        assert engine.model(torch.randn(2, 8, 16, 16)).dtype == torch.float32
    cfg = tiny_cfg(tmp_path, "train.cpu_bf16=true", "train.amp=false")
    assert cfg.train.bf16_autocast(cpu) and not cfg.train.bf16_autocast("cuda")
    engine = trainer.make_engine(cfg, TinyNet(), cpu)
    with engine.autocast():
        assert engine.model(torch.randn(2, 8, 16, 16)).dtype == torch.bfloat16
    net = TinyNet().eval()
    tiles = torch.randn(3, 8, 16, 16)
    fp32, bf16 = (model_predict_fn(net, cpu, "frames", amp)(tiles) for amp in (False, True))
    assert fp32.dtype == bf16.dtype == torch.float32  # probabilities stay float32
    assert not torch.equal(fp32, bf16) and torch.allclose(fp32, bf16, atol=0.05)  # bf16 logits, close
    result = trainer.run(tiny_cfg(tmp_path, "train.cpu_bf16=true", "train.max_steps=3", "train.run_name=bf16"))
    assert result["step"] == 3
    losses = [r["loss_total"] for r in MetricsLog(tmp_path / "bf16" / "metrics.jsonl", True).read() if r["kind"] == "train"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_method_and_target_map_must_agree():
    from dias_dist.data.loader import TrainSource
    from dias_dist.methods import build_method

    support = loader
    support.check_targets(build_method("pce"), [TrainSource("x", target="scribble_sale")])
    support.check_targets(build_method("supervised"), [TrainSource("x", target="label"),
                                                       TrainSource("y", target="pseudo", is_pseudo=True)])
    with pytest.raises(ValueError, match="learns from scribble targets but data.target='label'"):
        support.check_targets(build_method("pce"), [TrainSource("x", target="label")])
    with pytest.raises(ValueError, match="use one of label, pseudo"):
        support.check_targets(build_method("supervised"), [TrainSource("x", target="scribble_rdfa")])


def test_target_mismatch_fails_before_the_run_exists(tmp_path, fake_data, monkeypatch):
    """trainer.run checks the target maps first: no run folder, config.yaml or MLflow run is left behind."""
    from dias_dist.data.loader import TrainSource

    monkeypatch.setattr(loader, "default_sources", lambda cfg: [TrainSource("x", target="label")])
    with pytest.raises(ValueError, match="learns from scribble targets"):
        trainer.run(tiny_cfg(tmp_path, "method.name=pce", "track.enabled=true",
                             f"track.tracking_uri=sqlite:///{tmp_path}/mlflow.db"))
    assert list(tmp_path.iterdir()) == []


def test_ddp_engine_refuses_a_zero_sharded_optimizer_state_clearly():
    from dias_dist.config import load_config
    from dias_dist.engine.ddp import DDPEngine

    engine = trainer.make_engine(load_config(None), torch.nn.Conv2d(1, 2, 1), torch.device("cpu"))
    assert isinstance(engine, DDPEngine)
    state = engine.state_dict()
    state["optimizer"] = {"format": "deepspeed-zero-sharded", "shards": []}
    with pytest.raises(ValueError, match="dist.engine=deepspeed"):
        engine.load_state_dict(state)


def test_best_checkpoint_holds_its_own_score_and_resumes_selecting(tmp_path, fake_data, monkeypatch):
    """best.pt stores the score that made it best (the best validation value in metrics.jsonl), and a
    run resumed from it keeps that score as the bar: a later, lower score does not replace it."""
    scores = iter([0.3, 0.7, 0.5, 0.6])  # one validation per epoch, scripted

    def scripted(model, shards, split, eval_cfg, **kwargs):
        return [], {"auc": (next(scores), 0.0)}

    monkeypatch.setattr(evaluate, "evaluate_summary", scripted)
    result = trainer.run(tiny_cfg(tmp_path, "train.epochs=2", "eval.val_every_epochs=1", "eval.select_from_epoch=0"))
    best = torch.load(tmp_path / "t" / "checkpoints" / "best.pt", weights_only=True)
    vals = [r for r in MetricsLog(tmp_path / "t" / "metrics.jsonl", True).read() if r["kind"] == "val"]
    assert [r["val_auc"] for r in vals] == [0.3, 0.7]
    assert best["best"] == max(r["val_auc"] for r in vals) == result["best_val_score"] == 0.7
    assert best["step"] == 8  # written at the second validation

    resumed = trainer.run(tiny_cfg(tmp_path, "train.epochs=4", "eval.val_every_epochs=1", "eval.select_from_epoch=0",
                                   f"train.resume={tmp_path / 't' / 'checkpoints' / 'best.pt'}"))
    assert resumed["best_val_score"] == 0.7  # 0.5 and 0.6 after the resume never beat 0.7
    assert torch.load(tmp_path / "t" / "checkpoints" / "best.pt", weights_only=True)["step"] == 8


def test_share_of_pseudo_labelled_patches_is_logged(tmp_path, fake_data, monkeypatch):
    """The is_pseudo flags of a batch become the logged pseudo_share (RPST's patch mixture, visible per step)."""
    def one_in_four_pseudo(*args, **kwargs):
        for batch in fake_stream(*args, **kwargs):
            yield {**batch, "is_pseudo": torch.arange(len(batch["target"])) % 4 == 0}

    monkeypatch.setattr(loader, "train_stream", one_in_four_pseudo)
    trainer.run(tiny_cfg(tmp_path, "train.max_steps=2"))
    shares = [r["pseudo_share"] for r in MetricsLog(tmp_path / "t" / "metrics.jsonl", True).read() if r["kind"] == "train"]
    assert shares == [0.25, 0.25]
