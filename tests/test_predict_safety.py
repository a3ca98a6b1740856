"""`dias predict` never deletes or replaces what it did not write, never waits on a FIFO, and names every
input that gives nothing to predict.

The deletion tests hash every file under the inputs before and after (`_tree`) and assert they are
byte-identical; the FIFO tests finish within their stated timeout (before: blocked forever in open())."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_predict import tiny_checkpoint  # noqa: F401 — the module fixture: a width-2 VSS-Net checkpoint

from dias_dist import cli
from dias_dist.predict.readers import expand_inputs, read_series
from dias_dist.predict.writers import MARKER, safe_name, unique_names


def _tree(root: Path) -> dict:
    """Every entry under ``root`` (not following links): relative path -> sha256 / "dir" / link target."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _frames(folder: Path, count: int = 3, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / f"frame{index}.png")
    return folder


def _npy(path: Path, seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(seed).integers(0, 256, (3, 64, 64), dtype=np.uint8))
    return path


def _predict(ckpt, *args) -> int:
    return cli.main(["predict", str(ckpt), *map(str, args)])


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- --out against the inputs


def test_out_equal_to_a_batch_input_is_refused_and_the_inputs_stay(tiny_checkpoint, tmp_path, capsys):
    """`dias predict MODEL DIR --out DIR`: before, every series in DIR was replaced by its result."""
    data = tmp_path / "data"
    _frames(data / "s1")
    _npy(data / "s2.npy")
    before = _tree(data)
    status = _predict(tiny_checkpoint, data, "--out", data)
    assert _tree(data) == before
    assert status == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--out {data} is the input {data}" in line or f"--out {data} contains the input {data}" in line
    assert _tree(data) == before


def test_out_equal_to_a_series_input_is_refused(tiny_checkpoint, tmp_path, capsys):
    series = _frames(tmp_path / "s1")
    before = _tree(tmp_path)
    status = _predict(tiny_checkpoint, series, "--out", series)
    assert _tree(tmp_path) == before
    assert status == 2
    assert f"--out {series} is the input {series}" in _one_error_line(capsys.readouterr().err)
    assert _tree(tmp_path) == before


def test_out_equal_to_the_parent_of_a_series_is_refused(tiny_checkpoint, tmp_path, capsys):
    """Before: the result of series `data/s1` was swapped into `data/s1`, deleting its frames."""
    data = tmp_path / "data"
    series = _frames(data / "s1")
    npy = _npy(data / "s2.npy")
    before = _tree(tmp_path)
    status = _predict(tiny_checkpoint, series, npy, "--out", data)
    assert _tree(tmp_path) == before
    assert status == 2
    assert f"--out {data} contains the input {series}" in _one_error_line(capsys.readouterr().err)
    assert _tree(tmp_path) == before


def test_out_inside_an_input_is_refused_before_anything_is_written(tiny_checkpoint, tmp_path, capsys):
    series = _frames(tmp_path / "s1")
    before = _tree(tmp_path)
    status = _predict(tiny_checkpoint, series, "--out", series / "pred")
    assert _tree(tmp_path) == before  # not even the empty --out folder
    assert status == 2
    assert f"--out {series / 'pred'} lies inside the input {series}" in _one_error_line(capsys.readouterr().err)
    assert _tree(tmp_path) == before  # not even the empty --out folder


def test_out_through_a_symbolic_link_is_compared_by_real_path(tiny_checkpoint, tmp_path, capsys):
    """`--out link` where link -> the parent of the input; and a frame folder whose frames are links into
    the output folder: both would have replaced real input files."""
    data = tmp_path / "data"
    series = _frames(data / "s1")
    (tmp_path / "link").symlink_to(data)
    store = _frames(tmp_path / "store" / "x")  # the real frames of series `x`, linked from elsewhere
    linked = tmp_path / "linked" / "x"
    linked.mkdir(parents=True)
    for frame in sorted(store.iterdir()):
        (linked / frame.name).symlink_to(frame)
    before = _tree(tmp_path)
    status = _predict(tiny_checkpoint, series, "--out", tmp_path / "link")
    assert _tree(tmp_path) == before
    assert status == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--out {tmp_path / 'link'} (real path {data}) contains the input {series}" in line
    status = _predict(tiny_checkpoint, linked, "--out", tmp_path / "store")
    assert _tree(tmp_path) == before
    assert status == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"contains the input {linked / 'frame0.png'} (real path {store / 'frame0.png'})" in line
    assert _tree(tmp_path) == before


# ------------------------------------------------------------------------ existing OUT/<name> folders


def test_an_existing_folder_predict_did_not_write_is_refused_up_front(tiny_checkpoint, tmp_path, capsys):
    """Before: OUT/s1 (the user's own folder) was replaced by the result. Now nothing is predicted at all
    (not even the series before it), and --overwrite replaces it."""
    inputs = tmp_path / "in"
    first = _npy(inputs / "a.npy")
    series = _frames(inputs / "s1")
    out = tmp_path / "out"
    (out / "s1").mkdir(parents=True)
    (out / "s1" / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    status = _predict(tiny_checkpoint, first, series, "--out", out)
    assert _tree(tmp_path) == before
    assert status == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{out / 's1'}: exists (a folder) and was not written by dias predict (no {MARKER} marker)" in line
    assert "--overwrite" in line
    assert _tree(tmp_path) == before
    (tmp_path / "out2" / "a").mkdir(parents=True)
    (tmp_path / "out2" / "s1").mkdir()
    assert _predict(tiny_checkpoint, first, series, "--out", tmp_path / "out2") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'out2' / 'a'}: exists (a folder)" in line
    assert f"(and 1 more: {tmp_path / 'out2' / 's1'})" in line
    assert _predict(tiny_checkpoint, first, series, "--out", out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "s1"]
    assert (out / "s1" / "mask.png").is_file() and not (out / "s1" / "notes.txt").exists()


def test_predicts_own_results_are_replaced_and_carry_the_marker(tiny_checkpoint, tmp_path):
    series = _frames(tmp_path / "in" / "s1")
    out = tmp_path / "out"
    assert _predict(tiny_checkpoint, series, "--out", out) == 0
    marker = json.loads((out / "s1" / MARKER).read_text())
    assert marker["written_by"] == "dias predict" and marker["input"] == str(series)
    (out / "s1" / "stale.txt").write_text("from the earlier run's folder")
    assert _predict(tiny_checkpoint, series, "--out", out, "--threshold", "0.4") == 0
    assert not (out / "s1" / "stale.txt").exists()
    assert json.loads((out / "s1" / "summary.json").read_text())["threshold"] == 0.4


def test_a_link_or_file_in_the_way_is_refused(tiny_checkpoint, tmp_path, capsys):
    """A symbolic link to one of predict's results is not predict's result (it would replace the link's
    name, not the folder, but the user made it); a plain file likewise."""
    series = _frames(tmp_path / "in" / "s1")
    npy = _npy(tmp_path / "in" / "a.npy")
    assert _predict(tiny_checkpoint, series, "--out", tmp_path / "elsewhere") == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "s1").symlink_to(tmp_path / "elsewhere" / "s1")
    (out / "a").write_text("a file")
    before = _tree(tmp_path)
    status = _predict(tiny_checkpoint, series, "--out", out)
    assert _tree(tmp_path) == before
    assert status == 2
    assert f"{out / 's1'}: exists (a symbolic link)" in _one_error_line(capsys.readouterr().err)
    status = _predict(tiny_checkpoint, npy, "--out", out)
    assert _tree(tmp_path) == before
    assert status == 2
    assert f"{out / 'a'}: exists (a file)" in _one_error_line(capsys.readouterr().err)
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------------- series names


@pytest.mark.parametrize("name, safe", [
    (".", "_"), ("..", "__"), ("", "series"), ("a/b", "a_b"), ("a\\b", "a_b"), ("a\x00b", "a_b"),
    ("tab\there", "tab_here"), (".hidden", "_hidden"), ("..x", "__x"), ("ok-name_1.2 é", "ok-name_1.2 é"),
    ("x" * 300, "x" * 200), ("é" * 150, "é" * 100),
])
def test_safe_name_is_one_safe_path_component(name, safe):
    assert safe_name(name) == safe
    assert Path(safe).name == safe and safe not in (".", "..") and not safe.startswith(".")


def test_an_input_named_dot_dot_npy_does_not_replace_the_output_folder(tiny_checkpoint, tmp_path, monkeypatch):
    """Before: `..npy` gave the name `.`, i.e. OUT itself, and the earlier results in OUT were deleted."""
    out = tmp_path / "out"
    assert _predict(tiny_checkpoint, _npy(tmp_path / "in" / "earlier.npy"), "--out", out) == 0
    earlier = _tree(out)
    dotdot = _npy(tmp_path / "in" / "..npy", seed=2)
    assert _predict(tiny_checkpoint, dotdot, "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["_", "earlier"]
    assert {k: v for k, v in _tree(out).items() if k.startswith("earlier")} == earlier
    assert json.loads((out / "_" / "summary.json").read_text())["input"] == str(dotdot)
    monkeypatch.chdir(tmp_path / "in")
    assert unique_names([Path("."), Path("..npy"), Path(".."), Path("earlier.npy")]) == \
        ["in", "_", tmp_path.name, "earlier"]


# ----------------------------------------------------------------------------- FIFOs never block


@pytest.mark.timeout(120)
def test_fifos_among_inputs_are_refused_never_waited_on(tiny_checkpoint, tmp_path, capsys):
    """A FIFO as a frame, as a `.npy`/`.dcm`, as an extension-less entry of a batch folder, among the
    files of a DICOM series and as a command-line argument: each is a failed series naming it, the good
    series is predicted. Before: open() of the FIFO blocked forever."""
    from test_predict import _dicom

    batch = tmp_path / "batch"
    _npy(batch / "good.npy")
    frames = _frames(batch / "frames")
    os.mkfifo(frames / "frame3.png")
    os.mkfifo(batch / "pipe.npy")
    os.mkfifo(batch / "pipe.dcm")
    os.mkfifo(batch / "IM0001")
    dicoms = batch / "dicoms"
    dicoms.mkdir()
    _dicom(np.zeros((1, 64, 64), np.uint8), dicoms / "a.dcm", multiframe=False)
    os.mkfifo(dicoms / "b.dcm")
    argument = tmp_path / "arg.npy"
    os.mkfifo(argument)
    assert _predict(tiny_checkpoint, batch, argument, "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "6 series failed" in err
    for path in (frames / "frame3.png", batch / "pipe.npy", batch / "pipe.dcm", batch / "IM0001",
                 dicoms / "b.dcm", argument):
        assert f"{path}: a FIFO, not a regular file; dias predict reads only regular files" in err, path
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good"]
    for path in (frames, batch / "pipe.npy", dicoms):  # the library function too
        with pytest.raises(ValueError, match="a FIFO, not a regular file"):
            read_series(path)


# ------------------------------------------------------------------ inputs that give nothing to predict


def test_inputs_with_nothing_to_predict_fail_naming_their_reason(tiny_checkpoint, tmp_path, capsys):
    """A folder of only a symbolic link loop, of only a `.txt`, of only hidden files, and an empty folder:
    before, the first two gave "0 of 0 series predicted" and exit 0."""
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "self").symlink_to(loop / "self")
    text = tmp_path / "text"
    text.mkdir()
    (text / "notes.txt").write_text("no series here")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / ".DS_Store").write_bytes(b"\0")
    empty = tmp_path / "empty"
    empty.mkdir()
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    (dangling / "scan.dcm").symlink_to(tmp_path / "gone.dcm")
    expected = {
        loop: f"{loop / 'self'}: a symbolic link loop, not a regular file",
        text: f"{text}: no frames (.png, .jpg, .jpeg, .tif, .tiff), DICOM files, .npy or series in this folder "
              "(it holds notes.txt)",
        hidden: f"{hidden}: empty folder (expected frames, DICOM files or series); it holds only 1 hidden entries",
        empty: f"{empty}: empty folder",
        dangling: f"{dangling / 'scan.dcm'}: a dangling symbolic link, not a regular file",
    }
    for folder, message in expected.items():  # each alone: non-zero, its reason
        assert _predict(tiny_checkpoint, folder, "--out", tmp_path / "out") == 1, folder
        captured = capsys.readouterr()
        assert message in captured.err, folder
        assert "0 of 1 series predicted" in captured.out
    good = _npy(tmp_path / "good.npy")
    assert _predict(tiny_checkpoint, good, *expected, "--out", tmp_path / "out") == 1  # all: one line each
    err = capsys.readouterr().err
    assert "5 series failed" in err and all(message in err for message in expected.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good"]
    assert expand_inputs([str(text)]) == [text]
