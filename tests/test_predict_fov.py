"""`dias predict --fov`: the probability and the mask are 0 outside the field of view, inside they are the
map without it; a folder of masks is matched by series name, one file serves every series; summary.json
records the mask; a missing, colour, non-binary or empty mask is one line naming the file before the model
loads, a mask of another size fails its series only."""
import json

import numpy as np
import pytest
from PIL import Image
from test_predict import tiny_checkpoint  # noqa: F401 — module fixture: a reduced-width VSS-Net checkpoint

from dias_dist import cli
from dias_dist.predict.fov import read_fov

SIZE = 64


def _series(folder, names, seed=0):
    """One (2, SIZE, SIZE) float .npy series per name, dark vessels on a bright background."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        frames = 0.8 + 0.05 * rng.standard_normal((2, SIZE, SIZE))
        frames[:, 20:24, :] -= 0.5
        np.save(folder / f"{name}.npy", frames.astype(np.float32))
    return folder


def _disc(shape=(SIZE, SIZE), radius=24):
    y, x = np.mgrid[:shape[0], :shape[1]]
    return ((y - shape[0] / 2) ** 2 + (x - shape[1] / 2) ** 2 <= radius ** 2).astype(np.uint8) * 255


def _save(array, path, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


def _result(out, name):
    return (np.load(out / name / "prob.npy").astype(np.float32), np.asarray(Image.open(out / name / "mask.png")),
            json.loads((out / name / "summary.json").read_text()))


def test_a_folder_of_masks_is_matched_by_series_name_and_zeroes_the_outside(tiny_checkpoint, tmp_path):  # noqa: F811
    inputs = _series(tmp_path / "in", ["a", "b"])
    fovs = tmp_path / "fov"
    _save(_disc(radius=24), fovs / "a.png")
    _save(_disc(radius=16), fovs / "b.gif", mode="P")  # DRIVE's masks are GIFs
    _save(_disc(radius=8), fovs / "unused.png")  # a mask of no series is ignored
    argv = ["predict", str(tiny_checkpoint), str(inputs), "--threshold", "0.01"]
    assert cli.main([*argv, "--out", str(tmp_path / "plain")]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "fov_out"), "--fov", str(fovs)]) == 0
    for name, radius in (("a", 24), ("b", 16)):
        inside = _disc(radius=radius) > 0
        prob0, mask0, summary0 = _result(tmp_path / "plain", name)
        prob, mask, summary = _result(tmp_path / "fov_out", name)
        assert summary0["fov"] is None
        assert mask0[~inside].any()  # the threshold makes the outside vessel without the field of view
        assert not prob[~inside].any() and not mask[~inside].any()
        np.testing.assert_array_equal(prob[inside], prob0[inside])
        np.testing.assert_array_equal(mask[inside], mask0[inside])
        assert summary["fov"]["mask"] == str(fovs / ("a.png" if name == "a" else "b.gif"))
        assert summary["fov"]["inside_px"] == int(inside.sum())
        assert summary["fov"]["inside_fraction"] == round(inside.sum() / inside.size, 4)
        assert summary["vessel_area_px"] == int((mask > 0).sum())


def test_one_mask_file_serves_every_series_and_anonymize_keeps_only_its_name(tiny_checkpoint, tmp_path):  # noqa: F811
    inputs = _series(tmp_path / "in", ["x", "y"])
    fov = _save(_disc(), tmp_path / "private" / "aperture.png")
    assert cli.main(["predict", str(tiny_checkpoint), str(inputs), "--out", str(tmp_path / "out"), "--fov", str(fov),
                     "--anonymize", "--threshold", "0.01"]) == 0
    for name in ("x", "y"):
        prob, _, summary = _result(tmp_path / "out", name)
        assert not prob[_disc() == 0].any()
        assert summary["fov"]["mask"] == "aperture.png"


@pytest.mark.parametrize("case, message", [
    ("missing", "fov/b.png: no field-of-view mask for series"),
    ("colour", "a.png: colour field-of-view mask (PIL mode RGB)"),
    ("grey", "a.png: field-of-view mask is not binary (3 values: 0, 128, 255)"),
    ("empty", "a.png: field of view is empty"),
    ("duplicate", "two field-of-view masks of stem 'a'"),
    ("unreadable", "a.png: unreadable field-of-view mask"),
])
def test_bad_masks_are_one_line_naming_the_file_before_the_model_loads(tmp_path, capsys, case, message):
    inputs = _series(tmp_path / "in", ["a", "b"])
    fovs = tmp_path / "fov"
    disc = _disc()
    _save(disc, fovs / "b.png")
    if case == "missing":
        (fovs / "b.png").unlink()
        _save(disc, fovs / "a.png")
    elif case == "colour":
        _save(np.stack([disc, disc // 2, disc], axis=-1), fovs / "a.png")
    elif case == "grey":
        soft = disc.copy()
        soft[:, :4] = np.where(soft[:, :4] > 0, 128, 0)
        soft[0, 32] = 128
        _save(soft, fovs / "a.png")
    elif case == "empty":
        _save(np.zeros_like(disc), fovs / "a.png")
    elif case == "duplicate":
        _save(disc, fovs / "a.png")
        _save(disc, fovs / "a.tif")
    else:
        (fovs / "a.png").write_bytes(b"not an image")
    # a model that does not exist: the mask is refused before any model is looked for
    code = cli.main(["predict", str(tmp_path / "no_model.pt"), str(inputs), "--out", str(tmp_path / "out"),
                     "--fov", str(fovs)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_mask_of_another_size_fails_its_series_only(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    inputs = _series(tmp_path / "in", ["a", "b"])
    fovs = tmp_path / "fov"
    _save(_disc(), fovs / "a.png")
    _save(_disc((SIZE, SIZE + 8)), fovs / "b.png")
    assert cli.main(["predict", str(tiny_checkpoint), str(inputs), "--out", str(tmp_path / "out"),
                     "--fov", str(fovs)]) == 1
    err = capsys.readouterr().err
    assert f"{fovs / 'b.png'}: field of view 72x64 differs from the series 64x64 (width x height)" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a"]


def test_a_missing_fov_path_is_refused(tmp_path, capsys):
    inputs = _series(tmp_path / "in", ["a"])
    assert cli.main(["predict", "model.pt", str(inputs), "--out", str(tmp_path / "out"),
                     "--fov", str(tmp_path / "nope")]) == 2
    assert f"--fov {tmp_path / 'nope'}: no such file or folder" in capsys.readouterr().err


def test_binary_masks_in_every_common_form_read_alike(tmp_path):
    disc = _disc()
    inside = (disc > 0).astype(np.uint8)
    paths = [_save(disc, tmp_path / "l.png"), _save(disc // 255, tmp_path / "ones.png"),
             _save(disc, tmp_path / "bits.png", mode="1"), _save(disc, tmp_path / "p.gif", mode="P"),
             _save(np.stack([disc] * 3, axis=-1), tmp_path / "rgb.png"),
             _save((disc.astype(np.uint16) * 257), tmp_path / "sixteen.png")]
    for path in paths:
        np.testing.assert_array_equal(read_fov(path), inside, err_msg=path.name)
