"""No silent conversions in the release reader: coloured labels and frames with another extension."""
import numpy as np
import pytest
from PIL import Image

from dias_dist.data import dias


def _sequence(root, *, label_rgb=None):
    images = root / "test" / "images"
    images.mkdir(parents=True)
    for f in range(2):
        Image.fromarray(np.full((8, 8), 40 * f, np.uint8)).save(images / f"image_s0_i{f}.png")
    (root / "test" / "labels").mkdir()
    if label_rgb is not None:
        Image.fromarray(label_rgb).save(root / "test" / "labels" / "label_s0.png")


def test_red_on_black_label_keeps_its_vessels(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:5, 3, 0] = 255  # pure red: luminance 76, below the threshold of 100
    _sequence(tmp_path, label_rgb=rgb)
    with pytest.warns(UserWarning, match=r"label_s0.png: colour label .* brightest channel"):
        seq = dias.read_split(tmp_path, "test")[0]
    assert seq.label.sum() == 3 and seq.label[2:5, 3].all()


def test_grey_rgb_label_reads_silently_as_before(tmp_path):
    grey = np.zeros((8, 8, 3), np.uint8)
    grey[1, 1] = 120
    _sequence(tmp_path, label_rgb=grey)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seq = dias.read_split(tmp_path, "test")[0]
    assert seq.label.sum() == 1


@pytest.mark.parametrize("name", ["image_s0_i2.jpg", "image_s0_i2.PNG", "label_s0.tif"])
def test_frame_or_label_with_another_extension_is_an_error(tmp_path, name):
    _sequence(tmp_path, label_rgb=np.zeros((8, 8, 3), np.uint8))
    folder = "labels" if name.startswith("label") else "images"
    (tmp_path / "test" / folder / name).write_bytes(b"whatever")
    with pytest.raises(ValueError, match=rf"{name}: frames and labels must be .png"):
        dias.list_sequences(tmp_path, "test")
