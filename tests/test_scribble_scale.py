"""Scribble thresholds and the image size: the reference's pixel counts describe an 800x800 image; under
``scale="area"`` areas follow H W / 800^2 and lengths its square root, the identity at 800x800;
``scale="absolute"`` keeps the counts at every size, and the phantom's scribbles (phantom v2) keep it."""
import numpy as np
import pytest

from dias_dist import cli
from dias_dist.data import dias
from dias_dist.data.phantom import sequence_rng
from dias_dist.data.phantom_cli import write_phantom_dataset
from dias_dist.data.scribbles import rdfa_scribble, rdfa_thresholds, sale_scribble, size_factors

REFERENCE = {"erosion_min_area": 900, "shift_min_area": 1000, "min_component_px": 15, "max_shift_px": 6}


def _vessels(size: int) -> np.ndarray:
    """uint8 (size, size): a thick and a thin straight vessel and a diagonal branch, drawn to scale."""
    label = np.zeros((size, size), np.uint8)
    f = size / 800
    label[int(200 * f):int(224 * f), int(40 * f):int(760 * f)] = 1
    label[int(500 * f):int(500 * f) + max(1, int(6 * f)), int(80 * f):int(720 * f)] = 1
    for i in range(int(300 * f)):
        label[int(224 * f) + i, int(400 * f) + i:int(400 * f) + i + max(2, int(8 * f))] = 1
    return label


def test_area_scaling_is_the_identity_at_800_px():
    assert size_factors((800, 800)) == (1.0, 1.0)
    assert rdfa_thresholds((800, 800)) == REFERENCE
    assert rdfa_thresholds((400, 1600)) == REFERENCE  # the same area, the same thresholds
    label = _vessels(800)
    area = rdfa_scribble(label, np.random.default_rng(1))  # with the reference's shift and rotation on
    np.testing.assert_array_equal(area, rdfa_scribble(label, np.random.default_rng(1), scale="absolute"))
    assert (area == 1).any() and (area == 0).any()
    np.testing.assert_array_equal(sale_scribble(label, np.random.default_rng(0), scale="area"),
                                  sale_scribble(label, np.random.default_rng(0), scale="absolute"))


def test_areas_follow_the_area_and_lengths_the_side():
    assert rdfa_thresholds((400, 400)) == {"erosion_min_area": 225.0, "shift_min_area": 250.0,
                                           "min_component_px": 7.5, "max_shift_px": 3}  # a quarter, a half
    assert rdfa_thresholds((200, 200)) == {"erosion_min_area": 56.25, "shift_min_area": 62.5,
                                           "min_component_px": 3.75, "max_shift_px": 2}  # 1.5 rounds half up
    drive = rdfa_thresholds((584, 565))
    assert drive["erosion_min_area"] == pytest.approx(900 * 584 * 565 / 640000)
    assert drive["min_component_px"] == pytest.approx(15 * np.sqrt(584 * 565) / 800)
    assert drive["max_shift_px"] == 4 and rdfa_thresholds((128, 128))["max_shift_px"] == 1
    assert rdfa_thresholds((100, 100), reference_size_px=100) == REFERENCE
    assert rdfa_thresholds((128, 128), scale="absolute") == REFERENCE  # the switch restores the counts
    assert size_factors((128, 128), "absolute") == (1.0, 1.0)


def test_absolute_is_the_reference_counts_at_any_size():
    """At 128 px, "absolute" is "area" with the image itself as reference (factor 1): the counts as given."""
    label = _vessels(128)
    for seed in (0, 1, 2):
        np.testing.assert_array_equal(
            rdfa_scribble(label, np.random.default_rng(seed), scale="absolute"),
            rdfa_scribble(label, np.random.default_rng(seed), reference_size_px=128))
    # and the rules differ there: these 128 px vessels (under 900 px) are eroded and shifted only when scaled
    assert 26 < label.sum() < 900
    differ = [not np.array_equal(rdfa_scribble(label, np.random.default_rng(s)),
                                 rdfa_scribble(label, np.random.default_rng(s), scale="absolute")) for s in range(3)]
    assert any(differ)


def test_a_bad_scale_is_named():
    with pytest.raises(ValueError, match="scribble scale 'pixels': choose one of area, absolute"):
        rdfa_scribble(np.zeros((8, 8), np.uint8), np.random.default_rng(0), scale="pixels")
    with pytest.raises(ValueError, match="reference_size_px 0"):
        size_factors((8, 8), reference_size_px=0)


def test_phantom_scribbles_keep_absolute_and_dias_scribbles_scales_by_default(tmp_path):
    root = tmp_path / "ph"
    write_phantom_dataset(root, size=64, train=1, val=0, test=0, unlabeled=0, seed=5, preview=False)
    files = dias.list_sequences(root, "training")[0]
    label = dias.read_label(files.label)
    written = dias.read_png_gray(files.scribbles["rdfa"])
    np.testing.assert_array_equal(written, rdfa_scribble(label, sequence_rng(5, 0, 1), scale="absolute"))
    for flags, scale in (([], "area"), (["--scale", "absolute"], "absolute")):
        assert cli.main(["scribbles", str(root), "--seed", "7", "--overwrite", *flags]) == 0
        np.testing.assert_array_equal(dias.read_png_gray(files.scribbles["rdfa"]),
                                      rdfa_scribble(label, sequence_rng(7, files.seq_id), scale=scale))
