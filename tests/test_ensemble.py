"""Ensembles: the averaged model's probability map is the mean of its members' maps, through the
network, `dias predict --ensemble` and `dias evaluate --ensemble` (tiny checkpoints, no training)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dias_dist import cli
from dias_dist.run import checkpoint
from dias_dist.config import load_config, to_dict
from dias_dist.data import dias
from dias_dist.models import build_model
from dias_dist.predict.ensemble import MeanProbability, ensemble_of
from dias_dist.predict.model import load_trained_model, series_probability

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(folder: Path, name: str, seed: int, overrides: list[str]) -> Path:
    torch.manual_seed(seed)
    cfg = load_config(ROOT / "configs" / "debug.yaml", ["eval.batch_size=32", *overrides])
    network = build_model(cfg.model.name, **cfg.model.params)
    path = folder / f"{name}.pt"
    checkpoint.save(path, {"model": network.state_dict(), "config": to_dict(cfg), "step": seed})
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three tiny checkpoints: two VSS-Nets (sequence layout) of other seeds and an FR-UNet (frames layout)."""
    folder = tmp_path_factory.mktemp("members")
    return [_checkpoint(folder, "vss_a", 1, ["model.params.width=2"]),
            _checkpoint(folder, "vss_b", 2, ["model.params.width=2"]),
            _checkpoint(folder, "frunet", 3, ["model.name=fr_unet", "model.params={width: 4}"])]


@pytest.fixture(scope="module")
def series(tiny_shards, tmp_path_factory):
    files = dias.list_sequences(tiny_shards.parent / "src", "test")[0]
    folder = tmp_path_factory.mktemp("series") / "frames"
    folder.mkdir()
    for index, path in enumerate(files.frames):
        shutil.copy(path, folder / f"frame{index}.png")
    return folder, dias.read_sequence(files).frames, f"s{files.seq_id:05d}"


def test_ensemble_probability_is_the_mean_of_its_members(members, series):
    _, frames, _ = series
    models = [load_trained_model(str(p)) for p in members]
    singles = [series_probability(m, frames / 255.0) for m in models]
    assert np.abs(singles[0] - singles[1]).max() > 1e-3  # the members differ: the mean is a real test
    ensemble = ensemble_of(models)
    assert isinstance(ensemble.network, MeanProbability) and ensemble.source.startswith("ensemble(")
    np.testing.assert_allclose(series_probability(ensemble, frames / 255.0), np.mean(singles, axis=0), atol=1e-6)
    # also tile by tile through the network: log-probabilities whose limited softmax is the mean
    x = torch.randn(3, 8, 32, 32)
    with torch.no_grad():
        from dias_dist.models import to_layout, vessel_probability

        expected = torch.stack([vessel_probability(m.network(to_layout(x, m.network.input_layout)))
                                for m in models]).mean(0)
        np.testing.assert_allclose(vessel_probability(ensemble.network(x)).numpy(), expected.numpy(), atol=1e-6)


def test_dias_predict_and_evaluate_average_the_models(members, series, tiny_shards, tmp_path):
    folder, frames, key = series
    a, b, c = (str(p) for p in members)
    assert cli.main(["predict", a, str(folder), "--out", str(tmp_path / "pred"), "--ensemble", b,
                     "--ensemble", c]) == 0
    out = tmp_path / "pred" / "frames"
    singles = []  # each member through dias predict with the same (default) options
    for index, path in enumerate((a, b, c)):
        assert cli.main(["predict", path, str(folder), "--out", str(tmp_path / f"p{index}")]) == 0
        singles.append(np.load(tmp_path / f"p{index}" / "frames" / "prob.npy").astype(np.float32))
    np.testing.assert_allclose(np.load(out / "prob.npy").astype(np.float32), np.mean(singles, axis=0),
                               atol=2e-3)  # float16 files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == f"ensemble({a}, {b}, {c})"

    single = []
    for index, path in enumerate((a, b, c)):
        assert cli.main(["evaluate", path, "--out", str(tmp_path / f"ev{index}"), f"data.shards={tiny_shards}"]) == 0
        single.append(np.load(tmp_path / f"ev{index}" / "prob" / f"{key}.npy"))
    assert cli.main(["evaluate", a, "--ensemble", b, "--ensemble", c, "--out", str(tmp_path / "ev"),
                     f"data.shards={tiny_shards}"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "ev" / "prob" / f"{key}.npy"), np.mean(single, axis=0), atol=1e-6)


def test_members_of_different_frame_counts_are_refused_in_one_line(members, tmp_path, capsys):
    other = _checkpoint(tmp_path, "t4", 4, ["model.name=fr_unet", "model.params={width: 4, num_frames: 4}"])
    frames = tmp_path / "x.npy"
    np.save(frames, np.random.default_rng(0).random((4, 32, 32)).astype(np.float32))
    assert cli.main(["predict", str(members[0]), str(frames), "--out", str(tmp_path / "p"),
                     "--ensemble", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different numbers of frames" in err[0] and "T=4" in err[0] and "T=8" in err[0]
    assert not (tmp_path / "p").exists()
