"""Every numeric config key has a range, checked at load time for config files, overrides AND configs stored in
checkpoints; eval.select_metric names a metric; host memory bounds the sizes; YAML loading has a size and alias
budget; a checkpoint whose weights do not fit its config is one line (issue 28)."""
import dataclasses
import math
import time
import typing
from pathlib import Path

import pytest
import torch

from dias_dist import cli
from dias_dist.run import checkpoint
from dias_dist.config import (LIST_RANGES, MAX_CONFIG_BYTES, MAX_CONFIG_VALUES, RANGES, Config, check_memory,
                              from_dict, load_config, to_dict)
from dias_dist.models import MODELS, build_model

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "debug.yaml"


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def numeric_keys() -> list[tuple[str, type]]:
    """(dotted key, annotation) of every int / float / list field of the config dataclasses."""
    keys = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        for f in dataclasses.fields(cls):
            kind = typing.get_type_hints(cls)[f.name]
            if kind in (int, float, list):
                keys.append((f"{section.name}.{f.name}", kind))
    return keys


def test_every_numeric_key_has_a_range():
    missing = [key for key, kind in numeric_keys() if key not in (LIST_RANGES if kind is list else RANGES)]
    assert not missing, f"numeric config keys without a range in dias_dist/config.py: {missing}"
    assert set(RANGES) | set(LIST_RANGES) <= {key for key, _ in numeric_keys()}  # no stale entry
    load_config(None)  # the defaults are in range
    for f in sorted((ROOT / "configs").rglob("*.yaml")):
        if "ray" not in f.parts:
            load_config(f)  # and so is every shipped config


def _outside(key: str) -> list:
    """Values just outside the range of ``key``, and NaN / inf for float keys."""
    r = RANGES[key]
    values = []
    if r.low is not None:
        values.append(r.low if r.open_low else (r.low - 1 if isinstance(r.low, int) else r.low - 0.5))
    if r.high is not None:
        values.append(r.high if r.open_high else (r.high + 1 if isinstance(r.high, int) else r.high + 0.5))
    if isinstance(r.low if r.low is not None else r.high, float):
        values += [".nan", ".inf"]
    return values


@pytest.mark.parametrize("key, value", [(k, v) for k in sorted(RANGES) for v in _outside(k)])
def test_every_range_is_checked_at_load_time(key, value):
    with pytest.raises(ValueError) as err:
        load_config(None, [f"{key}={value}"])
    assert f"{key} must be" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("eval.threshold=0", "eval.threshold must be in (0, 1), got 0.0"),
    ("eval.threshold=1", "eval.threshold must be in (0, 1), got 1.0"),
    ("eval.threshold=2.0", "eval.threshold must be in (0, 1), got 2.0"),
    ("eval.threshold=-0.5", "eval.threshold must be in (0, 1), got -0.5"),
    ("eval.threshold=.nan", "eval.threshold must be a finite number in (0, 1), got nan"),
    ("eval.threshold=nan", "eval.threshold must be a finite number in (0, 1), got nan"),
    ("optim.min_lr=-0.5", "optim.min_lr must be in [0, 1], got -0.5"),
    ("optim.warmup_lr=-1e-3", "optim.warmup_lr must be in [0, 1], got -0.001"),
    ("optim.lr=1e999", "optim.lr must be a finite number in [0, 1], got inf"),
    ("optim.lr=inf", "optim.lr must be a finite number in [0, 1], got inf"),
    ("optim.lr=.inf", "optim.lr must be a finite number in [0, 1], got inf"),
    ("optim.lr=nan", "optim.lr must be a finite number in [0, 1], got nan"),
    ("optim.lr=1e300", "optim.lr must be in [0, 1], got 1e+300"),
    ("optim.betas=[0.9, 1.5]", "optim.betas must be 2 numbers, each in [0, 1), got [0.9, 1.5]"),
    ("optim.betas=[0.9]", "optim.betas must be 2 numbers"),
    ("model.params.width=-1", "model.params.width must be in [1, 4096], got -1"),
    ("model.params.width=0", "model.params.width must be in [1, 4096], got 0"),
    ("model.params.width=2.5", "model.params.width must be int, got 2.5"),
    ("model.params.num_frames=0", "model.params.num_frames must be in [1, 1024], got 0"),
    ("model.params.num_classes=1", "model.params.num_classes must be in [2, 1024], got 1"),
    ("model.params.dropout=1.5", "model.params.dropout must be in [0, 1], got 1.5"),
    ("eval.select_metric=nope", "eval.select_metric='nope' is not a metric; choose one of dsc, acc, sen, spe"),
    ("eval.select_metric=vc", "eval.select_metric='vc' is a metric where lower is better"),
    ("train.batch_size=-4", "train.batch_size must be >= 1, got -4"),
])
def test_bad_values_are_one_line_naming_key_and_value(override, message):
    with pytest.raises(ValueError) as err:
        load_config(DEBUG, [override])
    assert message in str(err.value) and str(DEBUG) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["model.params.width=-1", "eval.select_metric=nope", "optim.lr=1e999",
                                      "optim.min_lr=-0.5"])
def test_dias_train_refuses_before_anything_runs(override, tmp_path, capsys):
    assert cli.main(["train", str(DEBUG), f"train.run_dir={tmp_path / 'runs'}", override]) == 2
    assert override.split("=")[0] in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_a_model_constructor_failure_is_one_line_naming_model_params(monkeypatch):
    class Broken(torch.nn.Module):
        def __init__(self, width: int = 4):
            super().__init__()
            torch.empty(-width)  # what a negative size does deep inside a layer

    monkeypatch.setitem(MODELS, "broken", Broken)
    with pytest.raises(ValueError, match=r"model 'broken' cannot be built from model.params width=3 \(RuntimeError"):
        build_model("broken", width=3)


# ------------------------------------------------------------------ memory


@pytest.mark.timeout(30)
@pytest.mark.parametrize("override, key", [("train.batch_size=1000000000", "train.batch_size"),
                                           ("data.shuffle_buffer=1000000000", "data.shuffle_buffer"),
                                           ("eval.batch_size=1000000000", "eval.batch_size")])
def test_sizes_beyond_host_memory_are_refused_at_load_time(override, key):
    tic = time.monotonic()
    with pytest.raises(ValueError) as err:
        load_config(DEBUG, [override])
    assert f"{key}=1000000000 needs at least" in str(err.value) and "GiB is available; lower " + key in str(err.value)
    assert time.monotonic() - tic < 5  # refused from the estimate, nothing allocated


def test_memory_estimate_names_the_largest_part():
    cfg = load_config(DEBUG)
    check_memory(cfg, available=1 << 40)  # fits in a TiB
    with pytest.raises(ValueError, match=r"eval.batch_size=16 needs at least .* but 0.0 GiB is available; "
                                         r"lower eval.batch_size"):
        check_memory(cfg, available=1000)


# ------------------------------------------------------------------ YAML budget


def _alias_bomb(levels: int = 8) -> str:
    """10**levels leaves under track.tags through nested aliases, in a few hundred bytes."""
    lines = ["    a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "track:\n  tags:\n" + "\n".join(lines) + "\n"


@pytest.mark.timeout(10)
def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    assert bomb.stat().st_size < 1000
    with pytest.raises(ValueError, match=rf"bomb.yaml: the config holds more than {MAX_CONFIG_VALUES} values "
                                         rf".*aliases"):
        load_config(bomb)
    flow = ", ".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
                     + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)])
    with pytest.raises(ValueError, match="overrides: the config holds more than .* values"):  # in an override too
        load_config(None, ["track.tags={" + flow + "}"])


@pytest.mark.timeout(10)
def test_a_bomb_in_a_stored_config_is_refused_too():
    leaf: list = ["x"] * 10
    for _ in range(8):  # shared references, as the unpickler of a checkpoint would rebuild them
        leaf = [leaf] * 10
    data = to_dict(load_config(None))
    data["track"]["tags"] = {"a": leaf}
    with pytest.raises(ValueError, match="ckpt config: track.tags holds more than"):
        from_dict(Config, data, "ckpt config")


def test_aliases_within_the_budget_still_load(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("track:\n  tags:\n    a: &a {k: v}\n    b: *a\n")
    assert load_config(ok).track.tags == {"a": {"k": "v"}, "b": {"k": "v"}}


def test_an_oversized_config_file_is_refused_before_parsing(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ValueError, match=rf"big.yaml: \d+ bytes is more than a config file may hold"):
        load_config(big)


# ------------------------------------------------------------------ configs and weights stored in checkpoints


def _checkpoint(path: Path, updates: dict, *, weights_width: int | None = None) -> Path:
    """A checkpoint as training writes it (debug config, reduced-width VSS-Net), its stored config edited."""
    cfg = load_config(DEBUG, ["model.params.width=2", "eval.batch_size=32"])
    network = build_model(cfg.model.name, **{**cfg.model.params, "width": weights_width or 2})
    data = to_dict(cfg)
    for key, value in updates.items():
        node = data
        *sections, name = key.split(".")
        for part in sections:
            node = node[part]
        node[name] = value
    checkpoint.save(path, {"model": network.state_dict(), "config": data, "step": 3})
    return path


@pytest.mark.parametrize("key, value, message", [
    ("eval.threshold", 1.5, "eval.threshold must be in (0, 1), got 1.5"),
    ("eval.threshold", math.nan, "eval.threshold must be a finite number in (0, 1), got nan"),
    ("optim.min_lr", -0.5, "optim.min_lr must be in [0, 1], got -0.5"),
    ("eval.select_metric", "nope", "eval.select_metric='nope' is not a metric"),
    ("model.params.width", -1, "model.params.width must be in [1, 4096], got -1"),
])
def test_configs_read_from_checkpoints_are_range_checked(key, value, message, tiny_shards, tmp_path, capsys):
    from dias_dist.predict.model import load_trained_model

    ckpt = _checkpoint(tmp_path / "final.pt", {key: value})
    with pytest.raises(ValueError) as err:
        load_trained_model(str(ckpt))
    assert message in str(err.value) and "final.pt config" in str(err.value)
    assert cli.main(["evaluate", str(ckpt), "--out", str(tmp_path / "eval"), f"data.shards={tiny_shards}"]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "eval").exists()


def test_weights_that_do_not_fit_the_stored_config_are_one_line(tiny_shards, tmp_path, capsys):
    from dias_dist.predict.model import load_trained_model

    ckpt = _checkpoint(tmp_path / "best.pt", {}, weights_width=4)  # config says width 2
    with pytest.raises(ValueError) as err:
        load_trained_model(str(ckpt))
    text = str(err.value)
    assert f"checkpoint {ckpt}: weight '" in text and "has shape (" in text and "expects (" in text, text
    assert "\n" not in text
    assert cli.main(["evaluate", str(ckpt), "--out", str(tmp_path / "eval"), f"data.shards={tiny_shards}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "best.pt: weight '" in line and "has shape (" in line


def test_weights_of_another_model_name_the_first_foreign_key(tmp_path):
    from dias_dist.predict.model import load_trained_model

    ckpt = _checkpoint(tmp_path / "x.pt", {})
    payload = checkpoint.load(ckpt)
    payload["model"] = {"head.weight": torch.zeros(2, 2), **payload["model"]}
    checkpoint.save(ckpt, payload)
    with pytest.raises(ValueError, match=r"x.pt: weight 'head.weight' does not exist in the model"):
        load_trained_model(str(ckpt))
    payload["model"] = dict(list(checkpoint.load(ckpt)["model"].items())[2:])
    checkpoint.save(ckpt, payload)
    with pytest.raises(ValueError, match=r"x.pt: the model its config builds \(VSSNet\) needs weight '.*', which "
                                         r"the checkpoint lacks \(\d+ missing\)"):
        load_trained_model(str(ckpt))
