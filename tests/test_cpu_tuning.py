"""CPU choices by measurement (dias_dist/models/cpu_tuning.py): measured once per machine and shape,
cached and reused, a corrupted cache ignored with a warning, the choice applied to "auto"; every
arrangement computes the reference cell (tests/test_convgru.py)."""
import json

import pytest
import torch

from dias_dist import cli
from dias_dist.models import build_model, convgru
from dias_dist.models import cpu_tuning

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture
def measuring(monkeypatch, tmp_path):
    monkeypatch.setenv("DIAS_CPU_CHOICES", "measure")
    monkeypatch.setenv("DIAS_CACHE_DIR", str(tmp_path / "cache"))
    saved = dict(convgru.PREFERRED_ARRANGEMENT)
    yield tmp_path / "cache" / "cpu_choices.json"
    convgru.PREFERRED_ARRANGEMENT.clear()
    convgru.PREFERRED_ARRANGEMENT.update(saved)


def _tiny():
    model = build_model("vss_net", width=2)
    return model, torch.randn(2, 1, 8, 16, 16)


def test_a_measured_choice_is_cached_and_reused(measuring, monkeypatch):
    model, example = _tiny()
    calls = []
    real = cpu_tuning.measure
    monkeypatch.setattr(cpu_tuning, "measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = cpu_tuning.choose(model, example, grad=True, repeats=1)
    assert first["cached"] is False and first["choice"] in ("batched", "stepped", "split") and len(calls) == 1
    assert set(first["timings_s"]) == {"batched", "stepped", "split"} and all(t > 0 for t in first["timings_s"].values())
    second = cpu_tuning.choose(model, example, grad=True, repeats=1)
    assert second["cached"] is True and second["choice"] == first["choice"] and len(calls) == 1
    stored = json.loads(measuring.read_text())
    assert stored[first["key"]]["choice"] == first["choice"]
    assert first["key"].startswith(f"{cpu_tuning.cpu_model()} | torch {torch.__version__} | ")
    other = cpu_tuning.choose(model, torch.randn(1, 1, 8, 16, 16), grad=True, repeats=1)  # another shape
    assert other["cached"] is False and len(calls) == 2


def test_the_fastest_is_chosen_and_applied_to_auto(measuring, monkeypatch):
    model, example = _tiny()
    monkeypatch.setattr(cpu_tuning, "measure", lambda *a, **k: {"batched": 2.0, "stepped": 1.0})
    tags = cpu_tuning.tune_network(model, {True: example, False: example})
    assert tags == {"convgru_train": "stepped (batched 2 s, stepped 1 s, measured)",
                    "convgru_eval": "stepped (batched 2 s, stepped 1 s, measured)"}
    assert convgru.resolve_arrangement("auto", torch.device("cpu"), True) == "stepped"


def test_a_corrupted_cache_is_ignored_with_a_warning_and_rewritten(measuring):
    measuring.parent.mkdir(parents=True)
    measuring.write_text("{not json")
    model, example = _tiny()
    with pytest.warns(RuntimeWarning, match="ignoring the CPU-choice cache"):
        result = cpu_tuning.choose(model, example, grad=False, repeats=1)
    assert result["cached"] is False
    assert json.loads(measuring.read_text())[result["key"]]["choice"] == result["choice"]
    measuring.write_text(json.dumps({"k": {"choice": "sideways"}}))
    with pytest.warns(RuntimeWarning, match="not a mapping of measured choices"):
        assert cpu_tuning.load_cache() == {}


def test_table_mode_and_networks_without_a_convgru_measure_nothing(measuring, monkeypatch):
    model, example = _tiny()
    monkeypatch.setenv("DIAS_CPU_CHOICES", "table")
    assert cpu_tuning.choose(model, example, grad=True) is None
    monkeypatch.setenv("DIAS_CPU_CHOICES", "measure")
    assert cpu_tuning.choose(build_model("unet", width=2), example, grad=True) is None
    monkeypatch.setenv("DIAS_CPU_CHOICES", "sometimes")
    with pytest.raises(ValueError, match="DIAS_CPU_CHOICES='sometimes'"):
        cpu_tuning.choose(model, example, grad=True)
    assert not measuring.exists()


def test_the_measurement_leaves_the_network_as_it_was(measuring):
    model, example = _tiny()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cpu_tuning.measure(model, example, grad=True, repeats=1)
    assert not model.training and convgru.ConvGRU.arrangement == "auto"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_dias_tune_cpu_measures_the_configs_shapes_once(measuring, capsys):
    args = ["tune-cpu", str(ROOT / "configs" / "debug.yaml"), "model.params.width=2", "data.patch_size_px=16",
            "eval.patch_size_px=16", "eval.stride_px=8", "eval.batch_size=2", "train.batch_size=2"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "convgru_train: " in out and "convgru_eval: " in out and "measured" in out
    assert cli.main(args) == 0
    assert capsys.readouterr().out.count("cached)") == 2


def test_a_cpu_run_measures_applies_and_logs_its_choice(measuring, tiny_shards, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from dias_dist import trainer
    from dias_dist.config import load_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(ROOT / "configs" / "debug.yaml", [
        f"data.shards={tiny_shards}", f"train.run_dir={tmp_path}", "train.run_name=tuned", "train.max_steps=1",
        "eval.val_every_epochs=1000", "eval.test_split=", "track.enabled=true", f"track.tracking_uri={uri}",
        "eval.batch_size=4"])
    result = trainer.run(cfg)
    tags = MlflowClient(uri).get_run(result["run_id"]).data.tags
    for key, grad in (("convgru_train", True), ("convgru_eval", False)):
        choice = tags[key].split()[0]
        assert choice in ("batched", "stepped") and "measured" in tags[key] and " s, " in tags[key]
        assert convgru.resolve_arrangement("auto", torch.device("cpu"), grad) == choice
    out = capsys.readouterr().out
    assert "  convgru_train " in out and "  convgru_eval " in out  # in the start block
    assert json.loads(measuring.read_text())  # cached for the next run


def test_inference_tuning_applies_the_no_grad_choice_and_skips_whole_images_and_gpus(measuring, monkeypatch):
    model, _ = _tiny()
    shapes = []
    monkeypatch.setattr(cpu_tuning, "measure", lambda m, example, grad, repeats: shapes.append(
        (tuple(example.shape), grad)) or {"batched": 3.0, "stepped": 2.0, "split": 1.0})
    tags = cpu_tuning.tune_for_inference(model, torch.device("cpu"), frames=8, batch=4, tile=16)
    assert shapes == [((4, 1, 8, 16, 16), False)] and tags["convgru_eval"].startswith("split (")
    assert convgru.resolve_arrangement("auto", torch.device("cpu"), False) == "split"
    assert cpu_tuning.tune_for_inference(model, torch.device("cpu"), frames=8, batch=4, tile=0) == {}
    assert cpu_tuning.tune_for_inference(model, torch.device("meta"), frames=8, batch=4, tile=16) == {}
    assert len(shapes) == 1


def test_evaluate_applies_rank_0s_inference_choice_on_every_rank(measuring, monkeypatch):
    from dias_dist.evaluation import evaluate_cli

    model, _ = _tiny()
    calls = []
    monkeypatch.setattr(cpu_tuning, "measure", lambda m, example, grad, repeats: calls.append(grad) or
                        {"batched": 3.0, "stepped": 1.0, "split": 2.0})
    # rank 0 measures and sends its tags; here one process plays both ranks in turn
    sent = evaluate_cli.share_inference_choice(model, torch.device("cpu"), batch=4, tile=16)
    assert calls == [False] and sent["convgru_eval"].startswith("stepped (")
    convgru.PREFERRED_ARRANGEMENT[("cpu", False)] = "batched"  # what another rank would hold by itself
    monkeypatch.setattr(evaluate_cli.dist, "is_main", lambda: False)
    monkeypatch.setattr(evaluate_cli.dist, "broadcast_object", lambda obj, src=0: dict(sent) if obj is None else obj)
    got = evaluate_cli.share_inference_choice(model, torch.device("cpu"), batch=4, tile=16)
    assert got == sent and calls == [False]  # a non-zero rank measures nothing
    assert convgru.resolve_arrangement("auto", torch.device("cpu"), False) == "stepped"
