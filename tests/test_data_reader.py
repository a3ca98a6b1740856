"""Reader of the DIAS release layout: generator output end to end, and every bad input it must name."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dias_dist.data import dias
from dias_dist.data.phantom_cli import write_phantom_dataset


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    write_phantom_dataset(root, size=64, train=3, val=2, test=2, unlabeled=2, seed=3, preview=False)
    return root


@pytest.fixture
def copy(release, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(release, target)
    return target


def save(path: Path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_reads_generator_output(release):
    ids = {}
    for split in dias.SPLITS:
        seqs = dias.read_split(release, split)
        ids[split] = [s.seq_id for s in seqs]
        for seq in seqs:
            assert seq.frames.dtype == np.uint8 and seq.frames.ndim == 3
            assert 4 <= seq.frames.shape[0] <= 14 and seq.frames.shape[1:] == (64, 64)
            if split == "unlabeled":
                assert seq.label is None
            else:
                assert seq.label.dtype == np.uint8 and set(np.unique(seq.label)) <= {0, 1} and seq.label.any()
            if split == "training":
                assert sorted(seq.scribbles) == ["rdfa", "sale"]
                for scribble in seq.scribbles.values():
                    assert set(np.unique(scribble)) <= {0, 1, 255}
            else:
                assert seq.scribbles == {}
    assert ids == {"training": [0, 1, 2], "validation": [3, 4], "test": [5, 6], "unlabeled": [7, 8]}


def test_frames_sort_as_integers_and_single_frame_is_accepted(tmp_path):
    for f in range(12):
        save(tmp_path / "test/images" / f"image_s7_i{f}.png", np.full((8, 8), f))
    save(tmp_path / "test/images/image_s9_i0.png", np.zeros((8, 8)))
    save(tmp_path / "test/labels/label_s7.png", np.full((8, 8), 99))
    save(tmp_path / "test/labels/label_s9.png", np.full((8, 8), 100))
    files = dias.list_sequences(tmp_path, "test")
    assert [p.name for p in files[0].frames][9:] == ["image_s7_i9.png", "image_s7_i10.png", "image_s7_i11.png"]
    seq7, seq9 = (dias.read_sequence(f) for f in files)
    assert seq7.frames[:, 0, 0].tolist() == list(range(12))
    assert seq9.frames.shape == (1, 8, 8)
    assert not seq7.label.any() and seq9.label.all()  # binarised at >= 100


def test_unlabeled_with_images_subfolder(copy):
    flat = copy / "unlabeled_DSA"
    (flat / "images").mkdir()
    for path in list(flat.glob("*.png")):
        path.rename(flat / "images" / path.name)
    assert [s.seq_id for s in dias.list_sequences(copy, "unlabeled")] == [7, 8]


def _bad(copy, split="training"):
    with pytest.raises(ValueError) as info:
        dias.read_split(copy, split)
    return str(info.value)


def test_unreadable_png(copy):
    target = copy / "training/images/image_s1_i2.png"
    target.write_bytes(b"not a png at all")
    assert str(target) in _bad(copy) and "unreadable" in _bad(copy)


def test_truncated_png(copy):
    target = copy / "training/labels/label_s0.png"
    target.write_bytes(target.read_bytes()[:60])
    assert str(target) in _bad(copy)


def test_frames_of_different_sizes(copy):
    target = copy / "training/images/image_s2_i1.png"
    save(target, np.zeros((64, 60)))
    message = _bad(copy)
    assert str(target) in message and "differs" in message


def test_label_size_differs_from_frames(copy):
    target = copy / "validation/labels/label_s3.png"
    save(target, np.zeros((32, 32)))
    assert str(target) in _bad(copy, "validation")


def test_gap_in_frame_numbers(copy):
    (copy / "test/images/image_s5_i1.png").unlink()
    message = _bad(copy, "test")
    assert "image_s5_i1.png" in message and "gaps" in message


def test_scribble_values_outside_0_1_255(copy):
    target = copy / "training/scribble_labels/RDFA/label_s1.png"
    save(target, np.full((64, 64), 2))
    message = _bad(copy)
    assert str(target) in message and "[2]" in message


def test_split_with_no_sequences(copy):
    for path in (copy / "validation/images").iterdir():
        path.unlink()
    assert "no sequences" in _bad(copy, "validation")


def test_label_with_no_frames(copy):
    extra = copy / "test/labels/label_s99.png"
    save(extra, np.zeros((64, 64)))
    assert str(extra) in _bad(copy, "test")


def test_frames_with_no_label(copy):
    (copy / "test/labels/label_s6.png").unlink()
    message = _bad(copy, "test")
    assert "label_s6.png" in message and "no label" in message


def test_unknown_split(copy):
    with pytest.raises(ValueError, match="unknown split"):
        dias.list_sequences(copy, "train")
