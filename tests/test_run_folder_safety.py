"""Run folders never destroy what a run did not write (issue 28): train.run_name is one folder name, a folder
that is not a run folder is never emptied whatever train.resume / train.overwrite say, and a full disk while a
checkpoint is written is one error line naming the file."""
import errno
from pathlib import Path

import pytest
import torch

from dias_dist import cli
from dias_dist.run import checkpoint, folder as run_folder
from dias_dist.config import load_config
from dias_dist.run.folder import RunFolderError, claim

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "debug.yaml")


def snapshot(folder: Path) -> dict:
    """Every entry below ``folder``: relative path -> file bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def user_folder(path: Path) -> Path:
    """A folder of someone's data, including names a run would also write."""
    (path / "scans").mkdir(parents=True)
    (path / "scans" / "s1.dcm").write_bytes(b"DICM" + bytes(range(256)))
    (path / "notes.txt").write_text("do not delete\n")
    (path / "config.yaml").write_text("mine: true\n")  # a name a run writes does not make it a run folder
    return path


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def train(shards, run_dir, *extra):
    return cli.main(["train", CONFIG, f"data.shards={shards}", f"train.run_dir={run_dir}", "eval.test_split=",
                     "train.epochs=1", "train.steps_per_epoch=2", "train.checkpoint_every_steps=1", *extra])


@pytest.mark.parametrize("name", ["..", ".", "../x", "x/..", "a/b", "/tmp/abs", "x\\y"])
def test_run_name_must_be_one_folder_name(name):
    with pytest.raises(ValueError) as err:
        load_config(CONFIG, [f"train.run_name={name}"])
    assert f"train.run_name={name!r} must be one folder name inside train.run_dir" in str(err.value)


@pytest.mark.parametrize("mode", ["train.resume=auto", "train.overwrite=true"])
def test_run_name_dotdot_leaves_the_parent_of_run_dir_byte_identical(mode, tiny_shards, tmp_path, capsys):
    parent = user_folder(tmp_path / "home")
    (parent / "runs").mkdir()
    before = snapshot(parent)
    assert train(tiny_shards, parent / "runs", "train.run_name=..", mode) == 2
    assert "train.run_name='..' must be one folder name" in one_error_line(capsys.readouterr().err)
    assert snapshot(parent) == before


@pytest.mark.parametrize("mode", ["train.resume=auto", "train.overwrite=true"])
def test_a_folder_with_user_files_is_never_emptied(mode, tiny_shards, tmp_path, capsys):
    data = user_folder(tmp_path / "mydata")
    before = snapshot(tmp_path)
    assert train(tiny_shards, tmp_path, "train.run_name=mydata", mode) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{data} is not a run folder (it holds notes.txt, scans," in line and "never emptied" in line
    assert snapshot(tmp_path) == before  # not even a lock file was added


def test_a_run_folder_with_a_foreign_file_is_refused_but_a_clean_one_is_replaced(tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"x")
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    (run / "draft.ipynb").write_text("{}")
    before = snapshot(run)
    for auto, overwrite in ((True, False), (False, True), (False, False)):
        with pytest.raises(RunFolderError, match=r"r is not a run folder \(it holds draft.ipynb"):
            claim(run, continuing=False, auto=auto, overwrite=overwrite)
        assert snapshot(run) == before
    (run / "draft.ipynb").unlink()
    assert run_folder.foreign_files(run) == []
    claim(run, continuing=False, auto=False, overwrite=True).release("FINISHED")
    assert [p.name for p in run.iterdir()] == [".lock"]


def test_the_run_folder_rule(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_folder.foreign_files(empty) == []  # nothing to lose
    records = tmp_path / "records"
    (records / "eval" / "test").mkdir(parents=True)
    (records / "eval" / "test" / "summary.csv").write_text("x")
    (records / ".config.yaml.tmp42").write_text("torn")
    assert run_folder.foreign_files(records) == [".config.yaml.tmp42", "eval"]  # no run record: not a run folder
    (records / "start.json").write_text("{}")
    assert run_folder.foreign_files(records) == []
    (records / "checkpoints").mkdir()
    (records / "checkpoints" / "final.pt").write_bytes(b"x")
    (records / "start.json").unlink()
    assert run_folder.foreign_files(records) == []


# ------------------------------------------------------------------ a full disk while a checkpoint is written


class _FillsUp:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def flush(self):
        self.handle.flush()


def _full_disk_after(room: int):
    real_save = torch.save

    def save(obj, handle, *args, **kwargs):  # what torch.save does when the disk fills up mid-file
        return real_save(obj, _FillsUp(handle, room), *args, **kwargs)

    return save


def test_a_full_disk_while_saving_is_one_line_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    checkpoint.save(path, {"step": 1, "model": {"w": torch.ones(4)}})
    monkeypatch.setattr(checkpoint.torch, "save", _full_disk_after(1000))
    with pytest.raises(RunFolderError) as err:  # torch.save itself raises RuntimeError "unexpected pos"
        checkpoint.save(path, {"step": 2, "model": {"w": torch.zeros(100_000)}})
    text = str(err.value)
    assert "\n" not in text and "unexpected pos" not in text
    assert f"{path}: No space left on device; the last complete checkpoint" in text, text
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1 and [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_a_full_disk_during_training_is_one_error_line(tiny_shards, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checkpoint.torch, "save", _full_disk_after(5000))
    assert train(tiny_shards, tmp_path, "train.run_name=r") == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'r' / 'checkpoints' / 'last.pt'}: No space left on device" in line, line
