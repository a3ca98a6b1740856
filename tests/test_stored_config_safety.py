"""A config stored in a checkpoint (or an MLflow model) never runs a command: a `pipe:` data.shards in it
is refused by `dias evaluate` (one line, exit 2, the command's marker file never appears) unless the user
gives data.shards; `dias predict`, which reads no shards, drops it for the default. The user's own
`pipe:` on the command line still works."""
from pathlib import Path

import pytest
import torch

from dias_dist import cli
from dias_dist.run import checkpoint
from dias_dist.config import load_config, to_dict
from dias_dist.models import build_model
from dias_dist.predict.model import load_trained_model
from dias_dist.stored_config import from_stored

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def allow_pipes(monkeypatch):
    """conftest sets WDS_SECURE=1, which makes WebDataset refuse every pipe: by itself; off here, so the
    refusal tested is dias_dist's own (on the code before it, the stored command ran)."""
    import webdataset.utils

    monkeypatch.setattr(webdataset.utils, "enforce_security", False)


def _checkpoint(path: Path, *overrides: str) -> Path:
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "debug.yaml", ["model.params.width=2", "eval.batch_size=32",
                                                        "data.num_workers=0", *overrides])
    network = build_model(cfg.model.name, **cfg.model.params)
    checkpoint.save(path, {"model": network.state_dict(), "config": to_dict(cfg), "step": 3})
    return path


@pytest.fixture
def planted(tmp_path, tiny_shards):
    """(checkpoint whose stored data.shards is `pipe:touch MARKER; cat <tiny>/{}`, the marker's path)."""
    marker = tmp_path / "MARKER"
    ckpt = _checkpoint(tmp_path / "final.pt", f"data.shards=pipe:touch {marker}; cat {tiny_shards}/{{}}")
    return ckpt, marker


def _evaluate(ckpt, out, *extra):
    return cli.main(["evaluate", str(ckpt), "--split", "test", "--out", str(out), "--no-images", *extra])


def test_evaluate_refuses_a_stored_pipe_command(planted, tmp_path, capsys, allow_pipes):
    ckpt, marker = planted
    assert _evaluate(ckpt, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "its stored config has data.shards='pipe:touch" in err and "give your own: data.shards=" in err
    assert str(ckpt) in err
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_evaluate_with_the_users_own_shards_runs_normally(planted, tmp_path, tiny_shards, capsys, allow_pipes):
    ckpt, marker = planted
    assert _evaluate(ckpt, tmp_path / "out", f"data.shards={tiny_shards}") == 0
    assert (tmp_path / "out" / "metrics.csv").is_file()
    assert not marker.exists()
    # the user's own pipe: on the command line is theirs to run
    mine = tmp_path / "MINE"
    assert _evaluate(ckpt, tmp_path / "out2", f"data.shards=pipe:touch {mine}; cat {tiny_shards}/{{}}") == 0
    assert mine.exists() and not marker.exists()


def test_predict_drops_a_stored_pipe_command(planted, allow_pipes):
    ckpt, marker = planted
    model = load_trained_model(str(ckpt))
    assert model.cfg.data.shards == "shards/demo"  # the default: prediction reads no shards
    assert not marker.exists()


def test_stored_cache_dir_must_be_a_local_folder():
    stored = to_dict(load_config(ROOT / "configs" / "debug.yaml"))
    stored["data"]["cache_dir"] = "pipe:touch x"
    stored["data"]["shards"] = str(ROOT / "shards")  # a folder that exists: this test is about cache_dir
    with pytest.raises(ValueError, match=r"^m.pt: its stored config has data.cache_dir='pipe:touch x', not a local "
                                         r"folder; give your own: data.cache_dir=\.\.\.$"):
        from_stored(stored, "m.pt", (), reads_data=True)
    assert from_stored(stored, "m.pt", ("data.cache_dir=/tmp/c",), reads_data=True).data.cache_dir == "/tmp/c"
    assert from_stored(stored, "m.pt", (), reads_data=False).data.cache_dir == ""
    assert stored["data"]["cache_dir"] == "pipe:touch x"  # the payload itself is left as it was
