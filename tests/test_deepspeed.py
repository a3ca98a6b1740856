"""DeepSpeed engine on CPU: real ``deepspeed.initialize`` under torchrun (2 ranks, gloo, docs/REFERENCE.md §10).

One torchrun launch runs this file as a script (the worker below); each rank writes its findings to
a JSON file and the tests assert on them. The worker trains a tiny conv net for a few steps with
the DDP engine and with DeepSpeed ZeRO 0/1/2 (fp32) and ZeRO-2 bf16, round-trips checkpoints and
tries cross-engine resumes. Its checkpoints are then resumed by a torchrun launch of 1 and of 4 ranks
(``resume_worker``): a DeepSpeed checkpoint does not depend on the world size that wrote it.
"""
from __future__ import annotations

import copy
import json
import math
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


def _state_diff(got: dict, want: dict) -> float:
    """Largest difference between the model weights and the optimizer state tensors of two engine states
    (inf when their keys differ); 0.0 means the weights and the AdamW state were carried exactly."""
    diffs = [0.0]
    pairs = [(got["model"], want["model"]), (got["optimizer"]["state"], want["optimizer"]["state"])]
    while pairs:
        a, b = pairs.pop()
        if isinstance(a, dict):
            if not isinstance(b, dict) or set(a) != set(b):
                return float("inf")
            pairs.extend((a[k], b[k]) for k in a)
        else:
            if a.shape != b.shape:
                return float("inf")
            diffs.append(float((a.double() - b.double()).abs().max()) if a.numel() else 0.0)
    return max(diffs)


def _error_of(fn) -> str:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return ""


def worker(out_dir: Path) -> None:
    import deepspeed

    from dias_dist import dist
    from dias_dist.run import checkpoint
    from dias_dist.engine import SHARDED_FORMAT

    dist.init("gloo", "cpu")
    result: dict = {"rank": dist.rank(), "world_size": dist.world_size()}

    ddp = _engine("ddp")
    ddp_log = _train(ddp, STEPS)
    ddp_params = _params(ddp)
    result["ddp"] = ddp_log

    engines = {}
    for name in ("zero0", "zero1", "zero2", "zero2_bf16", "zero2_auto"):
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
    # (and the files the 1- and 4-rank resumes read: the checkpoint and the uninterrupted continuation)
    for name in ("zero0", "zero1", "zero2", "zero2_bf16"):
        own = engines[name].state_dict()  # collective under ZeRO 1/2: the complete state on rank 0 only
        result[name]["state_keys"] = sorted(own)
        state = dist.broadcast_object(own)  # every rank resumes from what rank 0 writes
        restored = _engine("deepspeed", f"{name}.json")
        restored.load_state_dict(copy.deepcopy(state))  # as if read back from a file
        _train(restored, MORE_STEPS, first_step=STEPS)
        continued_log = _train(engines[name], MORE_STEPS, first_step=STEPS)
        result[name]["resume_max_diff"] = _max_diff(_params(restored), _params(engines[name]))
        result[name]["resume_lr"] = [restored.lr, engines[name].lr]
        if dist.is_main():
            checkpoint.save(out_dir / f"{name}.pt", {**state, "step": STEPS})
            torch.save({"params": _params(engines[name]), "log": continued_log}, out_dir / f"{name}_continued.pt")
        if name == "zero0":
            zero0_state = state
            zero0_continued = _params(engines[name])
        if name == "zero2":
            zero2_state = state
            zero2_continued = _params(engines[name])

    # checkpoint weights as dias evaluate reads them: forward of the model rebuilt from the file
    if dist.is_main():
        probe = tiny_model()
        probe.load_state_dict(checkpoint.model_state(out_dir / "zero2.pt"))
        result["zero2_checkpoint_logits"] = probe(probe_input()).tolist()

    # cross-engine and cross-stage resumes: every engine and stage writes and reads the same format
    ddp_from_zero0 = _engine("ddp")
    ddp_from_zero0.load_state_dict(copy.deepcopy(zero0_state))
    _train(ddp_from_zero0, MORE_STEPS, first_step=STEPS)
    result["ddp_from_zero0_max_diff"] = _max_diff(_params(ddp_from_zero0), zero0_continued)
    zero0_from_ddp = _engine("deepspeed", "zero0.json")
    zero0_from_ddp.load_state_dict(ddp.state_dict())
    result["zero0_from_ddp_max_diff"] = _max_diff(_params(zero0_from_ddp), ddp_params)
    zero1_from_zero2 = _engine("deepspeed", "zero1.json")
    zero1_from_zero2.load_state_dict(copy.deepcopy(zero2_state))
    own = zero1_from_zero2.state_dict()  # collective
    if dist.is_main():
        result["zero1_from_zero2_state_diff"] = _state_diff(own, zero2_state)
    _train(zero1_from_zero2, MORE_STEPS, first_step=STEPS)
    result["zero1_from_zero2_max_diff"] = _max_diff(_params(zero1_from_zero2), zero2_continued)
    ddp_state = ddp.state_dict()  # the DDP engine returns its whole state on every rank
    zero2_from_ddp = _engine("deepspeed", "zero2.json")
    zero2_from_ddp.load_state_dict(copy.deepcopy(ddp_state))
    own = zero2_from_ddp.state_dict()
    if dist.is_main():
        result["zero2_from_ddp_state_diff"] = _state_diff(own, ddp_state)
    legacy = {"format": SHARDED_FORMAT, "zero_stage": 2, "bf16": False, "world_size": 2, "ranks": []}
    result["legacy_format_error"] = _error_of(lambda: engines["zero1"].load_state_dict({**zero2_state, "optimizer": legacy}))
    # two AdamW step counts in one group (ZeRO keeps one): refused before any weight is loaded
    uneven = copy.deepcopy(zero2_state)
    uneven["optimizer"]["state"][0]["step"] = uneven["optimizer"]["state"][0]["step"] + 1
    uneven["model"] = {k: v * 0 if v.is_floating_point() else v for k, v in uneven["model"].items()}
    before = _params(engines["zero1"])
    result["uneven_steps_error"] = _error_of(lambda: engines["zero1"].load_state_dict(uneven))
    result["uneven_steps_weights_diff"] = _max_diff(_params(engines["zero1"]), before)
    result["deepspeed_version"] = deepspeed.__version__

    (out_dir / f"rank{dist.rank()}.json").write_text(json.dumps(result))
    dist.teardown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # a ZeRO-0 native thread may abort at interpreter exit (docs/REFERENCE.md §10)


# (checkpoint written on 2 ranks, engine config that resumes it): same stage, another stage, DDP
RESUMES = (("zero0", "zero0.json"), ("zero1", "zero1.json"), ("zero2", "zero2.json"), ("zero2_bf16", "zero2_bf16.json"),
           ("zero2", "zero1.json"), ("zero2", "ddp"))


def resume_worker(out_dir: Path, save_dir: Path) -> None:
    """Resume every checkpoint the 2-rank worker wrote on this launch's world size and continue it."""
    from dias_dist import dist
    from dias_dist.run import checkpoint

    dist.init("gloo", "cpu")
    result: dict = {"rank": dist.rank(), "world_size": dist.world_size()}
    for saved_name, target in RESUMES:
        saved = checkpoint.load(save_dir / f"{saved_name}.pt")  # every rank reads what rank 0 wrote
        engine = _engine("ddp") if target == "ddp" else _engine("deepspeed", target)
        engine.load_state_dict(copy.deepcopy(saved))
        own = engine.state_dict()  # collective under ZeRO 1/2: assembled again from this world size's shards
        entry = {"state_diff": _state_diff(own, saved), "scheduler": [own["scheduler"], saved["scheduler"]]} \
            if dist.is_main() else {}  # before training on: the DDP engine's state dict is live
        continued = torch.load(save_dir / f"{saved_name}_continued.pt")
        entry.update(log=_train(engine, MORE_STEPS, first_step=STEPS), continued_log=continued["log"])
        entry["max_diff_vs_continued"] = _max_diff(_params(engine), continued["params"])
        result[f"{saved_name}->{target}"] = entry
    (out_dir / f"rank{dist.rank()}.json").write_text(json.dumps(result))
    dist.teardown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# tests


def _torchrun(nproc: int, *args: str, timeout: int = 300) -> None:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", f"--nproc_per_node={nproc}", __file__, *args],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    pytest.importorskip("deepspeed")
    out_dir = tmp_path_factory.mktemp("deepspeed")
    _torchrun(2, str(out_dir))
    results = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    for result in results:
        result["out_dir"] = str(out_dir)
    return results


@pytest.mark.slow
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


@pytest.mark.slow
def test_bf16_zero2_trains_in_sync(ranks):
    for result in ranks:
        stage = result["zero2_bf16"]
        assert stage["param_dtype"] == "torch.bfloat16"
        assert stage["max_diff_vs_rank0"] == 0.0
        assert stage["max_diff_vs_ddp"] < 5e-2  # bf16 weights vs fp32 DDP after 3 steps
        for got, want in zip(stage["log"], result["ddp"]):
            assert got["loss"] == pytest.approx(want["loss"], rel=5e-2)


@pytest.mark.slow
def test_auto_json_trains_like_the_explicit_one(ranks):
    """configs/deepspeed/zero2_auto.json ("auto" for the batch keys, clipping, optimizer, scheduler) is
    filled from the dias config and trains exactly as zero2.json."""
    for result in ranks:
        assert result["zero2_auto"]["log"] == result["zero2"]["log"]
        assert result["zero2_auto"]["max_diff_vs_rank0"] == 0.0


@pytest.mark.slow
def test_checkpoint_round_trip_resumes_exactly(ranks):
    """2 ranks -> 2 ranks: the resumed engine continues bit-identically to the uninterrupted one."""
    for result in ranks:
        for name in ("zero0", "zero1", "zero2", "zero2_bf16"):
            assert result[name]["resume_max_diff"] == 0.0, name
            lr_restored, lr_continued = result[name]["resume_lr"]
            assert lr_restored == lr_continued


@pytest.mark.slow
def test_deepspeed_checkpoint_loads_as_plain_model_weights(ranks):
    """``dias evaluate`` reads ``checkpoint.model_state``: fp32 weights of the bare module."""
    from dias_dist.run import checkpoint

    weights = checkpoint.model_state(Path(ranks[0]["out_dir"]) / "zero2.pt")
    assert all(t.dtype == torch.float32 for t in weights.values())
    model = tiny_model()
    fresh_logits = model(probe_input())
    model.load_state_dict(weights)  # strict: same keys as the bare module
    logits = model(probe_input())
    torch.testing.assert_close(logits, torch.tensor(ranks[0]["zero2_checkpoint_logits"]))
    assert not torch.allclose(logits, fresh_logits)  # trained weights, not the initial ones


@pytest.mark.slow
def test_sharded_checkpoints_hold_a_plain_adamw_state(ranks):
    """ZeRO-1/2 and bf16 write the optimizer state as torch's AdamW does: one entry per parameter."""
    from dias_dist.run import checkpoint

    from dias_dist.schedule import param_groups

    # numbered as torch numbers the trainer's AdamW groups: decayed weights first, then biases and norms
    ordered = [p for group in param_groups(tiny_model(), 0.01) for p in group["params"]]
    for name in ("zero1", "zero2", "zero2_bf16"):
        saved = checkpoint.load(Path(ranks[0]["out_dir"]) / f"{name}.pt")
        state = saved["optimizer"]["state"]
        assert sorted(state) == list(range(len(ordered))), name
        for index, param in enumerate(ordered):
            assert set(state[index]) == {"step", "exp_avg", "exp_avg_sq"}
            assert state[index]["exp_avg"].shape == param.shape and state[index]["exp_avg"].dtype == torch.float32
            assert float(state[index]["step"]) == STEPS
            assert float(state[index]["exp_avg_sq"].abs().max()) > 0  # trained moments, not zeros
        assert [len(g["params"]) for g in saved["optimizer"]["param_groups"]] == [2, 4]  # decayed, not decayed


@pytest.mark.slow
def test_cross_engine_and_cross_stage_resume(ranks):
    for result in ranks:
        assert result["ddp_from_zero0_max_diff"] < 1e-6
        assert result["zero0_from_ddp_max_diff"] == 0.0
        assert result["zero1_from_zero2_max_diff"] < 1e-6  # ZeRO-1 continues what ZeRO-2 saved
        assert "earlier sharded format of DeepSpeed ZeRO-2 on 2 rank(s)" in result["legacy_format_error"]
        assert "cannot be resumed under DeepSpeed ZeRO-1" in result["legacy_format_error"]
    assert ranks[0]["zero1_from_zero2_state_diff"] == 0.0
    assert ranks[0]["zero2_from_ddp_state_diff"] == 0.0  # a DDP checkpoint partitioned by ZeRO-2, exactly


@pytest.mark.slow
def test_a_checkpoint_with_two_step_counts_in_one_group_is_refused_before_loading(ranks):
    for result in ranks:
        assert "parameter group 0 has AdamW step counts [" in result["uneven_steps_error"]
        assert result["uneven_steps_weights_diff"] == 0.0  # the model is left as it was


@pytest.mark.slow
def test_state_dict_is_complete_on_rank0_only(ranks):
    """Only rank 0 writes, so only rank 0 gathers the optimizer shards and builds the fp32 model copy."""
    for name in ("zero0", "zero2", "zero2_bf16"):
        assert ranks[0][name]["state_keys"] == ["model", "optimizer", "scheduler"], name
        assert ranks[1][name]["state_keys"] == [], name


@pytest.fixture(scope="module", params=[1, 4], ids=["1rank", "4ranks"])
def resumed(request, ranks, tmp_path_factory) -> list[dict]:
    """The 2-rank worker's checkpoints resumed by a torchrun launch of 1 or 4 ranks."""
    nproc = request.param
    out_dir = tmp_path_factory.mktemp(f"resume{nproc}")
    _torchrun(nproc, "--resume", str(out_dir), ranks[0]["out_dir"])
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.slow
def test_checkpoint_of_2_ranks_resumes_on_another_world_size(resumed):
    """Saved on 2 ranks, resumed on 1 or 4: the weights and AdamW state are exactly the saved ones
    (assembled again from the new world size's partitions), the schedule continues where it was, and
    the next steps on the same global batches follow the uninterrupted 2-rank run (up to the order
    of the gradient sums, which changes with the number of ranks)."""
    world = len(resumed)
    for result in resumed:
        assert result["world_size"] == world
        for saved_name, target in RESUMES:
            entry = result[f"{saved_name}->{target}"]
            bf16 = "bf16" in saved_name
            assert all(math.isfinite(step["loss"]) for step in entry["log"])  # this rank's share of the batch
            assert [s["lr"] for s in entry["log"]] == [s["lr"] for s in entry["continued_log"]]
            # the gradient norm is global (over all ranks), so it compares across world sizes
            assert [s["grad_norm"] for s in entry["log"]] == pytest.approx(
                [s["grad_norm"] for s in entry["continued_log"]], rel=2e-2 if bf16 else 1e-5)
            assert entry["max_diff_vs_continued"] < (2e-2 if bf16 else 1e-6), (saved_name, target, entry["max_diff_vs_continued"])
    for saved_name, target in RESUMES:
        entry = resumed[0][f"{saved_name}->{target}"]
        assert entry["state_diff"] == 0.0, (saved_name, target)
        restored, saved = entry["scheduler"]
        assert restored == saved == {"last_step": STEPS}


def _optim_settings():
    """The OptimSettings the engine derives from the AdamW + schedule that ``_config`` builds."""
    from dias_dist.engine.deepspeed import OptimSettings
    from dias_dist.schedule import build_optimizer

    cfg = _config("deepspeed")
    optimizer, schedule = build_optimizer(tiny_model(), cfg.optim, epochs=cfg.train.epochs,
                                          steps_per_epoch=cfg.train.steps_per_epoch)
    return OptimSettings.of(optimizer, schedule)


def _read(tmp_path, ds_json: dict, grad_clip: float = 0.0, amp: bool = False) -> dict:
    from dias_dist.engine import StepSettings
    from dias_dist.engine.deepspeed import read_deepspeed_config

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds_json))
    return read_deepspeed_config(path, StepSettings(grad_clip=grad_clip, batch_size=GLOBAL_BATCH, amp=amp),
                                 _optim_settings())


def test_config_errors_name_the_file_and_key(tmp_path):
    pytest.importorskip("deepspeed")
    from dias_dist.engine.deepspeed import read_deepspeed_config

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 7}}))
    with pytest.raises(ValueError, match="bad.json: zero_optimization.stage = 7"):
        read_deepspeed_config(bad, _settings("deepspeed"))
    bad.write_text(json.dumps({"gradient_clipping": 1.0}))
    with pytest.raises(ValueError, match="contradicts optim.grad_clip = 2.0"):
        read_deepspeed_config(bad, _settings("deepspeed", grad_clip=2.0))
    with pytest.raises(ValueError, match="does not exist"):
        read_deepspeed_config(tmp_path / "missing.json", _settings("deepspeed"))
    bad.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    with pytest.raises(ValueError, match="needs the trainer's optimizer"):
        read_deepspeed_config(bad, _settings("deepspeed"))  # nothing to check it against
    ds = read_deepspeed_config(ROOT / "configs/deepspeed/zero1.json", _settings("deepspeed", grad_clip=0.5))
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_clipping"]) == (8, 8, 0.5)


def test_zero3_is_refused_with_the_reason(tmp_path):
    pytest.importorskip("deepspeed")
    with pytest.raises(ValueError, match=r"ds.json: zero_optimization.stage = 3 is refused: ZeRO-3 partitions the weights"):
        _read(tmp_path, {"zero_optimization": {"stage": 3}})


def test_auto_values_are_filled_from_the_dias_config(tmp_path):
    pytest.importorskip("deepspeed")
    from dias_dist.engine import StepSettings
    from dias_dist.engine.deepspeed import read_deepspeed_config

    ds = read_deepspeed_config(ROOT / "configs/deepspeed/zero2_auto.json",
                               StepSettings(grad_clip=0.5, batch_size=GLOBAL_BATCH), _optim_settings())
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (8, 8, 1)
    assert ds["gradient_clipping"] == 0.5
    # optim.lr=0.01 and the defaults of optim.* (weight_decay 0.01, betas, eps)
    assert ds["optimizer"] == {"type": "AdamW", "params": {"lr": 0.01, "weight_decay": 0.01, "betas": [0.9, 0.999],
                                                           "eps": 1e-8}}
    params = ds["scheduler"]["params"]
    assert ds["scheduler"]["type"] == "WarmupCosineLR"
    # train.epochs=1 x steps_per_epoch=10; warm-up 0.2 epochs = 2 steps from optim.warmup_lr=5e-7 to 0.01, cosine to 5e-6
    assert (params["total_num_steps"], params["warmup_num_steps"], params["warmup_type"]) == (10, 2, "linear")
    assert params["warmup_min_ratio"] == pytest.approx(5e-7 / 0.01)
    assert params["cos_min_ratio"] == pytest.approx(5e-6 / 0.01)
    # bf16.enabled: "auto" follows the bf16 autocast setting, as the Hugging Face Trainer's --bf16
    assert _read(tmp_path, {"bf16": {"enabled": "auto"}}, amp=True)["bf16"] == {"enabled": True}
    assert _read(tmp_path, {"bf16": {"enabled": "auto"}})["bf16"] == {"enabled": False}


def test_values_equal_to_the_dias_config_are_accepted(tmp_path):
    pytest.importorskip("deepspeed")
    ds = _read(tmp_path, {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
                          "optimizer": {"type": "adamw", "params": {"lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8}},
                          "scheduler": {"params": {"warmup_num_steps": 2, "total_num_steps": 10,
                                                   "cos_min_ratio": 5e-6 / 0.01, "warmup_type": "linear"}}})
    assert ds["optimizer"]["params"]["weight_decay"] == 0.01  # absent keys are filled too


@pytest.mark.parametrize("ds_json, message", [
    ({"train_batch_size": 16}, "train_batch_size = 16 contradicts train.batch_size = 8"),
    ({"train_micro_batch_size_per_gpu": 4},
     "train_micro_batch_size_per_gpu = 4 contradicts train.batch_size / (world size 1 x train.grad_accum) = 8"),
    ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps = 2 contradicts train.grad_accum = 1"),
    ({"optimizer": {"params": {"lr": 0.001}}}, "optimizer.params.lr = 0.001 contradicts optim.lr = 0.01"),
    ({"optimizer": {"params": {"weight_decay": 0.1}}},
     "optimizer.params.weight_decay = 0.1 contradicts optim.weight_decay = 0.01"),
    ({"optimizer": {"params": {"betas": [0.9, 0.95]}}},
     "optimizer.params.betas = [0.9, 0.95] contradicts optim.betas = (0.9, 0.999)"),
    ({"optimizer": {"params": {"eps": 1e-6}}}, "optimizer.params.eps = 1e-06 contradicts optim.eps = 1e-08"),
    ({"optimizer": {"type": "Lamb"}}, "optimizer.type = 'Lamb' contradicts the trainer's optimizer = 'AdamW'"),
    ({"optimizer": {"params": {"amsgrad": True}}}, "optimizer.params.amsgrad is not understood"),
    ({"scheduler": {"type": "WarmupDecayLR"}},
     "scheduler.type = 'WarmupDecayLR' contradicts the trainer's schedule = 'WarmupCosineLR'"),
    ({"scheduler": {"params": {"warmup_num_steps": 5}}},
     "scheduler.params.warmup_num_steps = 5 contradicts optim.warmup_epochs x train.steps_per_epoch = 2"),
    ({"scheduler": {"params": {"total_num_steps": 100}}},
     "scheduler.params.total_num_steps = 100 contradicts train.epochs x train.steps_per_epoch = 10"),
    ({"scheduler": {"params": {"warmup_type": "log"}}},
     "scheduler.params.warmup_type = 'log' contradicts the trainer's warm-up = 'linear'"),
    ({"scheduler": {"params": {"cos_min_ratio": 0.1}}},
     "scheduler.params.cos_min_ratio = 0.1 contradicts optim.min_lr / optim.lr = 0.0005"),
    ({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}},
     'zero_optimization.reduce_bucket_size = "auto", but "auto" is filled only for'),
])
def test_values_contradicting_the_dias_config_are_errors(tmp_path, ds_json, message):
    pytest.importorskip("deepspeed")
    with pytest.raises(ValueError) as err:
        _read(tmp_path, ds_json)
    assert message in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "ds.json"))


def test_shipped_configs_are_valid():
    pytest.importorskip("deepspeed")
    from dias_dist.engine.deepspeed import read_deepspeed_config

    paths = sorted((ROOT / "configs/deepspeed").glob("*.json"))
    assert paths
    for path in paths:
        ds = read_deepspeed_config(path, _settings("deepspeed"), _optim_settings())
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
    from dias_dist.run import checkpoint

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
    elif sys.argv[1] == "--resume":
        resume_worker(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        worker(Path(sys.argv[1]))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_zero2_two_ranks_through_the_trainer_checkpoints_evaluates_and_resumes_on_one(tiny_shards, tmp_path):
    """2 torchrun ranks, ZeRO-2, the real loader: checkpoints are gathered collectively (a rank-0-only
    gather would hang here), the result evaluates with `dias evaluate` like a DDP checkpoint, and the
    run continues on 1 rank with train.resume=auto for one more epoch."""
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
    from dias_dist.run import checkpoint

    resume = subprocess.run(
        [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node=1", "launch/train.py", "configs/debug.yaml",
         f"data.shards={tiny_shards}", "model.name=fr_unet", "model.params={width: 4}", "train.epochs=3",
         "train.steps_per_epoch=2", f"train.run_dir={tmp_path}", "train.run_name=z2", "train.resume=auto",
         "eval.test_split=", "dist.engine=deepspeed", "dist.deepspeed_config=configs/deepspeed/zero2.json"],
        cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    last = checkpoint.load(tmp_path / "z2" / "checkpoints" / "last.pt")
    assert last["step"] == 6 and len(last["rng"]) == 1  # written by the 1-rank run
    log = [json.loads(line) for line in (tmp_path / "z2" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train_steps] == [1, 2, 3, 4, 5, 6]  # nothing lost or logged twice
    assert all(math.isfinite(r["loss_total"]) for r in train_steps)
