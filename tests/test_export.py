"""`dias export`: the network as a torch.export program whose vessel probability equals the checkpoint's within
1e-4, loadable without dias_dist; ensembles export as one program; bad options are one line."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dias_dist import cli
from dias_dist.run import checkpoint
from dias_dist.config import load_config, to_dict
from dias_dist.models import build_model, to_layout, vessel_probability

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(folder: Path, name: str, seed: int, overrides: list[str]) -> Path:
    torch.manual_seed(seed)
    cfg = load_config(ROOT / "configs" / "debug.yaml", overrides)
    network = build_model(cfg.model.name, **cfg.model.params)
    path = folder / f"{name}.pt"
    checkpoint.save(path, {"model": network.state_dict(), "config": to_dict(cfg), "step": seed})
    return path


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_exported_convgru_network_matches_the_checkpoint_and_runs_without_dias_dist(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, "vss", 1, ["model.params.width=2"])  # VSS-Net: ConvGRU, sequence layout
    out = tmp_path / "vss.pt2"
    assert cli.main(["export", str(ckpt), "--out", str(out), "--tile", "32"]) == 0
    assert "max |probability - network's|" in capsys.readouterr().out
    x = torch.randn(4, 8, 32, 32, generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "x.npy", x.unsqueeze(1).numpy())  # (B, 1, T, P, P): the sequence layout
    # a process in which importing dias_dist fails (sys.modules entry None) loads and runs the program
    code = ("import sys; sys.modules['dias_dist'] = None; import numpy as np, torch; "
            "m = torch.export.load(sys.argv[1]).module(); "
            "np.save(sys.argv[3], m(torch.from_numpy(np.load(sys.argv[2]))).detach().numpy())")
    subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True, cwd=tmp_path, timeout=300)
    from dias_dist.predict.model import load_trained_model

    network = load_trained_model(str(ckpt)).network
    with torch.no_grad():
        expected = vessel_probability(network(to_layout(x, network.input_layout)))
    got = vessel_probability(torch.from_numpy(np.load(tmp_path / "y.npy")))
    assert (got - expected).abs().max() <= 1e-4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_ensemble_exports_as_one_program(tmp_path):
    a = _checkpoint(tmp_path, "a", 1, ["model.name=fr_unet", "model.params={width: 4}"])
    b = _checkpoint(tmp_path, "b", 2, ["model.name=fr_unet", "model.params={width: 4}"])
    out = tmp_path / "ens.pt2"
    assert cli.main(["export", str(a), "--ensemble", str(b), "--out", str(out), "--tile", "32"]) == 0
    from dias_dist.predict.model import load_trained_model

    x = torch.randn(3, 8, 32, 32)
    members = [load_trained_model(str(p)).network for p in (a, b)]
    with torch.no_grad():
        mean = torch.stack([vessel_probability(m(x)) for m in members]).mean(0)
        got = vessel_probability(torch.export.load(out).module()(x))
    assert (got - mean).abs().max() <= 1e-4


def test_export_refuses_bad_options_in_one_line(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, "u", 1, ["model.name=fr_unet", "model.params={width: 4}"])
    assert cli.main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "name the program FILE.pt2" in capsys.readouterr().err
    assert cli.main(["export", str(ckpt), "--out", str(tmp_path / "x.pt2"), "--tile", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tile must be in 1..16384, got 0" in err[0]
    assert not (tmp_path / "x.pt2").exists()
