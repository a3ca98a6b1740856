"""OS errors of the commands that write files (`dias phantom`, `dias shard`, `dias evaluate --out`, `dias baseline
--out`): an output path under a regular file, a read-only folder, a full disk are one line naming the path and
the cause, exit status 1, no traceback (cli.run_command, run_folder.describe_os_error). An OSError that is no
file-system fault stays a traceback: it may be a bug.

Read-only folders: CI runs as root, and root writes into a chmod 0555 folder, so that variant is skipped for root
(the path-under-a-file and /proc variants fail for root too); a full disk is simulated by a write that raises
ENOSPC without naming a file, as a write to a full disk does."""
import errno
import os
from pathlib import Path

import pytest
import torch

from dias_dist import cli
from dias_dist.run import checkpoint
from dias_dist.config import load_config, to_dict
from dias_dist.data import phantom_cli
from dias_dist.models import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_shards):
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "debug.yaml", ["model.params.width=2", "eval.batch_size=32",
                                                        "data.num_workers=0", f"data.shards={tiny_shards}"])
    path = tmp_path_factory.mktemp("ckpt") / "final.pt"
    checkpoint.save(path, {"model": build_model(cfg.model.name, **cfg.model.params).state_dict(),
                           "config": to_dict(cfg), "step": 1})
    return path


def _commands(out, tiny_shards, tiny_checkpoint):
    """Each writing command with its output at ``out``."""
    return {
        "phantom": ["phantom", str(out), "--size", "64", "--train", "1", "--val", "1", "--test", "1",
                    "--unlabeled", "0"],
        "shard": ["shard", str(tiny_shards.parent / "src"), str(out)],
        "evaluate": ["evaluate", str(tiny_checkpoint), "--split", "test", "--out", str(out)],
        "baseline": ["baseline", str(tiny_shards), "--split", "test", "--out", str(out)],
    }


def _one_line_error(argv, capsys, *expected):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"dias {argv[0]}: error: ")
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize("command", ["phantom", "shard", "evaluate", "baseline"])
def test_output_under_a_regular_file(command, tmp_path, tiny_shards, tiny_checkpoint, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"not a folder")
    argv = _commands(blocker / "out", tiny_shards, tiny_checkpoint)[command]
    err = _one_line_error(argv, capsys, "a file is in the way")
    assert str(blocker) in err
    assert blocker.read_bytes() == b"not a folder"


@pytest.mark.parametrize("command", ["phantom", "shard", "evaluate", "baseline"])
def test_output_in_a_read_only_folder(command, tmp_path, tiny_shards, tiny_checkpoint, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only (0555) folder; the path-under-a-file case covers root")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        err = _one_line_error(_commands(folder / "out", tiny_shards, tiny_checkpoint)[command], capsys,
                              "Permission denied")
        assert str(folder) in err
    finally:
        folder.chmod(0o755)


def test_output_under_proc(tiny_shards, tiny_checkpoint, capsys):
    """/proc takes no new folders, for root too."""
    _one_line_error(_commands(Path("/proc/dias-test-out"), tiny_shards, tiny_checkpoint)["baseline"], capsys,
                    "/proc/dias-test-out")


def test_full_disk_names_the_output_folder(tmp_path, monkeypatch, capsys):
    from PIL import Image

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write to a full disk: no file named

    monkeypatch.setattr(Image.Image, "save", full)
    argv = ["phantom", str(tmp_path / "data"), "--size", "64", "--train", "1", "--val", "1", "--test", "1"]
    _one_line_error(argv, capsys, f"{tmp_path / 'data'} (writing into it): No space left on device; the disk is full")


@pytest.mark.parametrize("error", [OSError("no errno, no file"), ConnectionResetError(errno.ECONNRESET, "reset"),
                                   RuntimeError("a bug")])
def test_other_errors_stay_tracebacks(error, monkeypatch, tmp_path):
    def broken(args):
        raise error

    monkeypatch.setattr(phantom_cli, "main", broken)
    with pytest.raises(type(error)):
        cli.main(["phantom", str(tmp_path / "x")])


@pytest.mark.timeout(60)
def test_report_against_an_unreachable_server_is_one_line(tmp_path, capsys):
    """Before: five chained tracebacks. Port 1 on 127.0.0.1 refuses every connection."""
    import time

    start = time.monotonic()
    code = cli.main(["report", "dias-supervised", "--tracking-uri", "http://127.0.0.1:1", "--out", str(tmp_path / "r")])
    seconds = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("dias report: error: MLflow store http://127.0.0.1:1 cannot be used (")
    assert "Connection refused" in err
    assert seconds < 20
    assert not (tmp_path / "r").exists()
