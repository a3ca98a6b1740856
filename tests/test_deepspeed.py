"""DeepSpeed engine on CPU: real ``deepspeed.initialize`` under torchrun (2 ranks, gloo, docs/REFERENCE.md §10).

One torchrun launch runs this file as a script (the worker below); each rank writes its findings to
a JSON file and the tests assert on them. The worker trains a tiny conv net for a few steps with
the DDP engine and with DeepSpeed ZeRO 0/1/2 (fp32) and ZeRO-2 bf16, round-trips checkpoints and
tries cross-engine resumes.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
STEPS, MORE_STEPS, GLOBAL_BATCH = 3, 2, 8


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def probe_input() -> torch.Tensor:
    return torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(99))


# ---------------------------------------------------------------------------------------------
# worker (run by torchrun)


def _config(engine: str, ds_json: str = "zero0.json", grad_clip: float = 0.0):
    from dias_dist.config import load_config

    return load_config(None, [f"dist.engine={engine}", f"dist.deepspeed_config={ROOT}/configs/deepspeed/{ds_json}",
                              f"train.batch_size={GLOBAL_BATCH}", "train.epochs=1", "train.steps_per_epoch=10",
                              "optim.lr=0.01", "optim.warmup_epochs=0.2", f"optim.grad_clip={grad_clip}"])


def _settings(engine: str, grad_clip: float = 0.0):
    """The engine settings the trainer resolves from ``_config(engine, grad_clip=...)`` on CPU."""
    from dias_dist.engine import StepSettings

    return StepSettings(grad_clip=grad_clip, batch_size=GLOBAL_BATCH)


def _engine(engine: str, ds_json: str = "zero0.json"):
    from dias_dist.trainer import make_engine

    return make_engine(_config(engine, ds_json), tiny_model(), torch.device("cpu"))


def _train(engine, steps: int, first_step: int = 0) -> list[dict]:
    """``steps`` optimizer steps on fixed global batches; this rank uses its slice of each."""
    from dias_dist import dist

    log = []
    per_rank = GLOBAL_BATCH // dist.world_size()
    for step in range(first_step, first_step + steps):
        gen = torch.Generator().manual_seed(step)
        image = torch.randn(GLOBAL_BATCH, 2, 8, 8, generator=gen)
        target = torch.randint(0, 2, (GLOBAL_BATCH, 8, 8), generator=gen)
        mine = slice(dist.rank() * per_rank, (dist.rank() + 1) * per_rank)
        with engine.autocast():
            logits = engine.model(engine.prepare_input(image[mine]))
            loss = nn.functional.cross_entropy(logits.float(), target[mine])
        engine.backward(loss, sync=True)
        lr = engine.lr
        norm = engine.step()
        assert isinstance(norm, torch.Tensor) and norm.dim() == 0  # no host sync inside step()
        log.append({"loss": float(loss), "lr": lr, "grad_norm": float(norm)})
    return log


def _params(engine) -> list[torch.Tensor]:
    return [p.detach().float().clone() for p in engine.unwrap().parameters()]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _error_of(fn) -> str:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return ""


def worker(out_dir: Path) -> None:
    import deepspeed

    from dias_dist import checkpoint, dist

    dist.init("gloo", "cpu")
    result: dict = {"rank": dist.rank(), "world_size": dist.world_size()}

    ddp = _engine("ddp")
    ddp_log = _train(ddp, STEPS)
    ddp_params = _params(ddp)
    result["ddp"] = ddp_log

    engines = {}
    for name in ("zero0", "zero1", "zero2", "zero2_bf16"):
        engine = _engine("deepspeed", f"{name}.json")
        log = _train(engine, STEPS)
        params = _params(engine)
        # ranks in sync: every rank's weights equal rank 0's
        gathered = dist.all_gather_object(params)
        result[name] = {"log": log, "optimizer": type(engine.optimizer).__name__,
                        "max_diff_vs_ddp": _max_diff(params, ddp_params),
                        "max_diff_vs_rank0": _max_diff(params, gathered[0]),
                        "param_dtype": str(next(engine.unwrap().parameters()).dtype)}
        engines[name] = engine

    # checkpoint round trips: continue the saved engine and a restored copy for MORE_STEPS each
    for name in ("zero0", "zero2", "zero2_bf16"):
        own = engines[name].state_dict()  # collective under ZeRO 1/2: the complete state on rank 0 only
        result[name]["state_keys"] = sorted(own)
        state = dist.broadcast_object(own)  # every rank resumes from what rank 0 writes
        restored = _engine("deepspeed", f"{name}.json")
        restored.load_state_dict(copy.deepcopy(state))  # as if read back from a file
        _train(restored, MORE_STEPS, first_step=STEPS)
        _train(engines[name], MORE_STEPS, first_step=STEPS)
        result[name]["resume_max_diff"] = _max_diff(_params(restored), _params(engines[name]))
        result[name]["resume_lr"] = [restored.lr, engines[name].lr]
        if name == "zero2" and dist.is_main():
            checkpoint.save(out_dir / "zero2.pt", {**state, "step": STEPS})
        if name == "zero0":
            zero0_state = state
            zero0_continued = _params(engines[name])
        if name == "zero2":
            zero2_state = state

    # checkpoint weights as dias evaluate reads them: forward of the model rebuilt from the file
    if dist.is_main():
        probe = tiny_model()
        probe.load_state_dict(checkpoint.model_state(out_dir / "zero2.pt"))
        result["zero2_checkpoint_logits"] = probe(probe_input()).tolist()

    # cross-engine resumes
    ddp_from_zero0 = _engine("ddp")
    ddp_from_zero0.load_state_dict(copy.deepcopy(zero0_state))
    _train(ddp_from_zero0, MORE_STEPS, first_step=STEPS)
    result["ddp_from_zero0_max_diff"] = _max_diff(_params(ddp_from_zero0), zero0_continued)
    zero0_from_ddp = _engine("deepspeed", "zero0.json")
    zero0_from_ddp.load_state_dict(ddp.state_dict())
    result["zero0_from_ddp_max_diff"] = _max_diff(_params(zero0_from_ddp), ddp_params)
    zero1 = engines["zero1"]
    result["zero1_from_zero2_error"] = _error_of(lambda: zero1.load_state_dict(zero2_state))
    result["zero2_from_ddp_error"] = _error_of(lambda: engines["zero2"].load_state_dict(ddp.state_dict()))
    result["deepspeed_version"] = deepspeed.__version__

    (out_dir / f"rank{dist.rank()}.json").write_text(json.dumps(result))
    dist.teardown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # a ZeRO-0 native thread may abort at interpreter exit (docs/REFERENCE.md §10)


# ---------------------------------------------------------------------------------------------
# tests


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    pytest.importorskip("deepspeed")
    out_dir = tmp_path_factory.mktemp("deepspeed")
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", __file__, str(out_dir)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    for result in results:
        result["out_dir"] = str(out_dir)
    return results


def test_all_stages_train_in_sync_and_equal_ddp(ranks):
    for result in ranks:
        assert result["world_size"] == 2
        for name in ("zero0", "zero1", "zero2"):
            stage = result[name]
            assert stage["param_dtype"] == "torch.float32"
            assert stage["max_diff_vs_rank0"] == 0.0
            assert stage["max_diff_vs_ddp"] < 1e-6, (name, stage["max_diff_vs_ddp"])
            for got, want in zip(stage["log"], result["ddp"]):
                assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
                assert got["lr"] == pytest.approx(want["lr"], rel=1e-12)  # the same WarmupCosine schedule
                assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
        assert ranks[0]["zero1"]["optimizer"] == "DeepSpeedZeroOptimizer"
        assert ranks[0]["zero0"]["optimizer"] == "AdamW"
    # the weights moved at all (so the equality above is not vacuous)
    losses = [step["loss"] for step in ranks[0]["ddp"]]
    assert len(set(losses)) == len(losses)


def test_bf16_zero2_trains_in_sync(ranks):
    for result in ranks:
        stage = result["zero2_bf16"]
        assert stage["param_dtype"] == "torch.bfloat16"
        assert stage["max_diff_vs_rank0"] == 0.0
        assert stage["max_diff_vs_ddp"] < 5e-2  # bf16 weights vs fp32 DDP after 3 steps
        for got, want in zip(stage["log"], result["ddp"]):
            assert got["loss"] == pytest.approx(want["loss"], rel=5e-2)


def test_checkpoint_round_trip_resumes_exactly(ranks):
    for result in ranks:
        for name in ("zero0", "zero2", "zero2_bf16"):
            assert result[name]["resume_max_diff"] == 0.0, name
            lr_restored, lr_continued = result[name]["resume_lr"]
            assert lr_restored == lr_continued


def test_deepspeed_checkpoint_loads_as_plain_model_weights(ranks):
    """``dias evaluate`` reads ``checkpoint.model_state``: fp32 weights of the bare module."""
    from dias_dist import checkpoint

    weights = checkpoint.model_state(Path(ranks[0]["out_dir"]) / "zero2.pt")
    assert all(t.dtype == torch.float32 for t in weights.values())
    model = tiny_model()
    fresh_logits = model(probe_input())
    model.load_state_dict(weights)  # strict: same keys as the bare module
    logits = model(probe_input())
    torch.testing.assert_close(logits, torch.tensor(ranks[0]["zero2_checkpoint_logits"]))
    assert not torch.allclose(logits, fresh_logits)  # trained weights, not the initial ones


def test_cross_engine_resume(ranks):
    for result in ranks:
        assert result["ddp_from_zero0_max_diff"] < 1e-6
        assert result["zero0_from_ddp_max_diff"] == 0.0
        assert "sharded for DeepSpeed ZeRO-2 on 2 rank(s)" in result["zero1_from_zero2_error"]
        assert "cannot be resumed under DeepSpeed ZeRO-1" in result["zero1_from_zero2_error"]
        assert "plain torch optimizer" in result["zero2_from_ddp_error"]


def test_state_dict_is_complete_on_rank0_only(ranks):
    """Only rank 0 writes, so only rank 0 gathers the optimizer shards and builds the fp32 model copy."""
    for name in ("zero0", "zero2", "zero2_bf16"):
        assert ranks[0][name]["state_keys"] == ["model", "optimizer", "scheduler"], name
        assert ranks[1][name]["state_keys"] == [], name


def test_config_errors_name_the_file_and_key(tmp_path):
    pytest.importorskip("deepspeed")
    from dias_dist.engine.deepspeed import read_deepspeed_config

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 16, "zero_optimization": {"stage": 1}}))
    with pytest.raises(ValueError, match=r"bad.json: key\(s\) train_batch_size"):
        read_deepspeed_config(bad, _settings("deepspeed"))
    bad.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ValueError, match="zero_optimization.stage = 3"):
        read_deepspeed_config(bad, _settings("deepspeed"))
    bad.write_text(json.dumps({"gradient_clipping": 1.0}))
    with pytest.raises(ValueError, match="contradicts optim.grad_clip = 2.0"):
        read_deepspeed_config(bad, _settings("deepspeed", grad_clip=2.0))
    with pytest.raises(ValueError, match="does not exist"):
        read_deepspeed_config(tmp_path / "missing.json", _settings("deepspeed"))
    ds = read_deepspeed_config(ROOT / "configs/deepspeed/zero1.json", _settings("deepspeed", grad_clip=0.5))
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_clipping"]) == (8, 8, 0.5)


def test_shipped_configs_are_valid():
    pytest.importorskip("deepspeed")
    from dias_dist.engine.deepspeed import read_deepspeed_config

    paths = sorted((ROOT / "configs/deepspeed").glob("*.json"))
    assert paths
    for path in paths:
        ds = read_deepspeed_config(path, _settings("deepspeed"))
        # the geometry the engine fills in from cfg.train (one process: the whole batch per micro-batch)
        assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) \
            == (GLOBAL_BATCH, GLOBAL_BATCH, 1), path.name


# ---------------------------------------------------------------------------------------------
# the real training loop with the DeepSpeed engine (one process, in a subprocess so that the
# process group DeepSpeed creates does not outlive the test)


class _FramesNet(nn.Module):
    input_layout = "frames"

    def __init__(self, num_frames: int = 8, num_classes: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(num_frames, num_classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def _fake_stream(cfg, sources, *, micro_batch, seed, step):
    """Deterministic batches (B, 8, P, P) / (B, P, P), one sample at a time so micro-batches concatenate."""
    gen = torch.Generator().manual_seed(1000 + step)
    size = cfg.patch_size_px
    while True:
        images, targets = [], []
        for _ in range(micro_batch):
            targets.append((torch.rand(size, size, generator=gen) > 0.7).long())
            images.append(torch.randn(8, size, size, generator=gen) + 2.0 * targets[-1])
        yield {"image": torch.stack(images), "target": torch.stack(targets),
               "is_pseudo": torch.zeros(micro_batch, dtype=torch.bool)}


def trainer_worker(out_dir: Path) -> None:
    from dias_dist import trainer
    from dias_dist.data import loader
    from dias_dist.config import load_config
    from dias_dist.models import MODELS

    MODELS["ds_test_frames_net"] = _FramesNet
    loader.train_stream = _fake_stream
    loader.default_sources = lambda cfg: []
    weights = {}
    for name, engine, ds_json, accum in (("ddp", "ddp", "zero0.json", 2), ("zero0", "deepspeed", "zero0.json", 2),
                                         ("zero2", "deepspeed", "zero2.json", 2)):
        cfg = load_config(ROOT / "configs/debug.yaml", [
            "model.name=ds_test_frames_net", "model.params={}", f"train.run_dir={out_dir / name}",
            "train.run_name=t", "eval.test_split=", "eval.val_every_epochs=1000", "optim.lr=0.01",
            "train.max_steps=3", "train.batch_size=4", f"train.grad_accum={accum}", "method.name=supervised",
            f"dist.engine={engine}", f"dist.deepspeed_config={ROOT}/configs/deepspeed/{ds_json}"])
        result = trainer.run(cfg)
        weights[name] = {"step": result["step"], "final": str(out_dir / name / "t/checkpoints/final.pt")}
    (out_dir / "trainer.json").write_text(json.dumps(weights))
    sys.stdout.flush()
    os._exit(0)


def test_training_loop_with_deepspeed_and_grad_accumulation(tmp_path):
    """trainer.run with dist.engine=deepspeed (ZeRO 0 and 2, 2 micro-batches) ends with the same weights
    as the DDP engine with the same accumulation, and its final.pt holds plain fp32 model weights."""
    pytest.importorskip("deepspeed")
    from dias_dist import checkpoint

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--trainer", str(tmp_path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    runs = json.loads((tmp_path / "trainer.json").read_text())
    ddp = checkpoint.model_state(runs["ddp"]["final"])
    assert all(run["step"] == 3 for run in runs.values())
    for name in ("zero0", "zero2"):
        state = checkpoint.model_state(runs[name]["final"])
        for key, value in ddp.items():
            assert state[key].dtype == torch.float32
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)
    # grad norms and lr as logged by the loop: equal, so the loss is scaled once (Adam would hide a 2x)
    logs = {name: [json.loads(line) for line in (tmp_path / name / "t/metrics.jsonl").read_text().splitlines()]
            for name in runs}
    ddp_log = [r for r in logs["ddp"] if r["kind"] == "train"]
    assert len(ddp_log) == 3
    for name in ("zero0", "zero2"):
        ds_log = [r for r in logs[name] if r["kind"] == "train"]
        assert [r["grad_norm"] for r in ds_log] == pytest.approx([r["grad_norm"] for r in ddp_log], rel=1e-5)
        assert [r["lr"] for r in ds_log] == pytest.approx([r["lr"] for r in ddp_log], rel=1e-12)
    torch.manual_seed(7)  # train.seed of debug.yaml: the initial weights, which training must have moved
    assert not torch.allclose(ddp["conv.weight"], _FramesNet().conv.weight, atol=1e-4)


if __name__ == "__main__":
    if sys.argv[1] == "--trainer":
        trainer_worker(Path(sys.argv[2]))
    else:
        worker(Path(sys.argv[1]))


@pytest.mark.timeout(300)
def test_zero2_two_ranks_through_the_trainer_checkpoints_and_evaluates(tiny_shards, tmp_path):
    """2 torchrun ranks, ZeRO-2, the real loader: checkpoints are gathered collectively (a rank-0-only
    gather would hang here), and the result evaluates with `dias evaluate` like a DDP checkpoint."""
    root = Path(__file__).resolve().parents[1]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    train = subprocess.run(
        [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node=2", "launch/train.py", "configs/debug.yaml",
         f"data.shards={tiny_shards}", "model.name=fr_unet", "model.params={width: 4}", "train.epochs=2",
         "train.steps_per_epoch=2", f"train.run_dir={tmp_path}", "train.run_name=z2", "eval.test_split=test",
         "dist.engine=deepspeed", "dist.deepspeed_config=configs/deepspeed/zero2.json"],
        cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    final = tmp_path / "z2" / "checkpoints" / "final.pt"
    assert final.is_file() and (tmp_path / "z2" / "checkpoints" / "last.pt").is_file()
    evaluate = subprocess.run(
        [str(bin_dir / "dias"), "evaluate", str(final), "--split", "test", "--out", str(tmp_path / "ev"), "--no-images"],
        cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-3000:]
    assert (tmp_path / "ev" / "summary.csv").is_file()
