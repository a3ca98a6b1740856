from pathlib import Path

import pytest

from dias_dist.config import Config, derive, load_config, flatten, to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_paper_hyperparameters():
    cfg = load_config(None)
    assert cfg.optim.lr == 5e-4 and cfg.optim.weight_decay == 0.01
    assert cfg.train.batch_size == 64 and cfg.train.epochs == 100 and cfg.data.patch_size_px == 64
    assert cfg.eval.stride_px == 32 and cfg.eval.threshold == 0.5


def test_override_converts_and_validates(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.001\nmodel:\n  name: fr_unet\n")
    cfg = load_config(p, ["optim.lr=3e-4", "train.max_steps=5", "model.params.width=8"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.max_steps == 5 and cfg.model.params == {"width": 8}
    assert flatten(to_dict(cfg))["model.params.width"] == 8


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "unknown key(s) optim.lrr"),
        (["bogus.x=1"], "valid keys: data, model"),
        (["train.epochs=ten"], "train.epochs must be int"),
        (["train.amp=3"], "train.amp must be bool"),
        (["data.shards=???"], "data.shards is required"),
        (["optim.lr"], "must look like section.key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ValueError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_bad_file_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(p)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_every_shipped_yaml_validates():
    from dias_dist.methods import METHODS, build_method
    from dias_dist.models import MODELS

    files = sorted((ROOT / "configs").rglob("*.yaml"))
    files = [f for f in files if "ray" not in f.parts]
    assert files and MODELS and METHODS  # the registries are populated on import
    for f in files:
        cfg = load_config(f)
        assert isinstance(cfg, Config)
        assert cfg.model.name in MODELS, f"{f}: model {cfg.model.name} not registered"
        assert cfg.method.name in METHODS, f"{f}: method {cfg.method.name} not registered"
        build_method(cfg.method.name, **cfg.method.params)


def test_derive_copies_and_validates():
    cfg = load_config(None)
    child = derive(cfg, {"train.run_name": "x", "model.params": {"width": 4}})
    assert (child.train.run_name, child.model.params) == ("x", {"width": 4})
    assert cfg.train.run_name == "" and cfg.model.params == {}  # the original is untouched
    with pytest.raises(ValueError, match="stage config: train.epochs must be int"):
        derive(cfg, {"train.epochs": "many"}, "stage config")


def test_packaged_configs_load_from_any_directory(tmp_path, monkeypatch):
    """dias_dist/configs ships the configs: a name (or configs/NAME) works outside the repository."""
    from dias_dist.config import PACKAGED_CONFIGS, config_file

    monkeypatch.chdir(tmp_path)
    assert (PACKAGED_CONFIGS / "debug.yaml").is_file()
    assert load_config("debug.yaml").train.seed == load_config("configs/debug.yaml").train.seed == 7
    assert config_file("configs/deepspeed/zero1.json") == PACKAGED_CONFIGS / "deepspeed" / "zero1.json"
    (tmp_path / "debug.yaml").write_text("train: {seed: 99}\n")  # a local file wins over the packaged one
    assert load_config("debug.yaml").train.seed == 99
    with pytest.raises(ValueError, match="nope.yaml does not exist"):
        load_config("nope.yaml")
