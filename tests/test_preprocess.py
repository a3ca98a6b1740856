"""Preprocessing: time resampling equals skimage resize; z-score statistics from the pre-resample sequence."""
import numpy as np
import pytest
from skimage.transform import resize

from dias_dist.data.preprocess import preprocess_sequence, resample_time


@pytest.mark.parametrize("num_in", [1, 2, 4, 7, 8, 9, 14])
def test_resample_matches_skimage(num_in):
    frames = np.random.default_rng(num_in).random((num_in, 13, 11)) * 3 - 1
    expected = resize(frames, (8, 13, 11), order=3, mode="edge", anti_aliasing=False)
    got = resample_time(frames)
    assert got.shape == (8, 13, 11)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_resample_to_other_lengths():
    frames = np.random.default_rng(0).random((5, 4, 4))
    expected = resize(frames, (12, 4, 4), order=3, mode="edge", anti_aliasing=False)
    np.testing.assert_allclose(resample_time(frames, 12), expected, atol=1e-12)


def test_preprocess_sequence_uses_pre_resample_statistics():
    frames = np.random.default_rng(1).integers(0, 256, (5, 9, 10), dtype=np.uint8)
    out, meta = preprocess_sequence(frames)
    scaled = frames / 255.0
    assert out.dtype == np.float16 and out.shape == (8, 9, 10)
    assert meta["original_num_frames"] == 5
    assert meta["mean"] == pytest.approx(scaled.mean()) and meta["std"] == pytest.approx(scaled.std())
    expected = (resize(scaled, (8, 9, 10), order=3, mode="edge", anti_aliasing=False) - scaled.mean()) / (
        scaled.std() + 1e-8)
    np.testing.assert_allclose(out.astype(np.float64), expected, atol=2e-3 * np.abs(expected).max())


def test_preprocess_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_sequence(np.zeros((4, 8, 8), dtype=np.float32))
