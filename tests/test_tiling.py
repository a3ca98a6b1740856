"""Sliding-window tiling (64/32, zero pad, overlap average) against direct computations."""
import numpy as np
import pytest
import torch
from torch import nn

from dias_dist.evaluation.tiling import model_predict_fn, padded_size, sliding_window_probability


def _naive_overlap_average(tile_fn, image_THW, patch, stride):
    """Reference loop: pad like DIAS, visit every tile, sum + count, divide, crop."""
    num_frames, height, width = image_THW.shape
    padded_h, padded_w = padded_size(height, patch, stride), padded_size(width, patch, stride)
    padded = np.zeros((num_frames, padded_h, padded_w), np.float64)
    padded[:, :height, :width] = image_THW
    summed = np.zeros((padded_h, padded_w))
    count = np.zeros((padded_h, padded_w))
    for top in range(0, padded_h - patch + 1, stride):
        for left in range(0, padded_w - patch + 1, stride):
            summed[top:top + patch, left:left + patch] += tile_fn(padded[:, top:top + patch, left:left + patch])
            count[top:top + patch, left:left + patch] += 1
    return (summed / count)[:height, :width]


def _position_dependent(tile_TPP):
    """A non-local toy 'model': tile mean plus a ramp over tile rows/cols (placement errors show)."""
    patch = tile_TPP.shape[-1]
    ramp = np.add.outer(np.arange(patch), 2 * np.arange(patch)) / (3 * patch)
    return 1 / (1 + np.exp(-tile_TPP.mean(axis=0).mean())) * 0.5 + 0.5 * ramp


def _torch_position_dependent(tiles_NTPP):
    out = [_position_dependent(t.double().numpy()) for t in tiles_NTPP]
    return torch.tensor(np.stack(out))


def test_padding_matches_reference():
    assert padded_size(800, 64, 32) == 832  # a full extra stride even though 800 is aligned
    assert padded_size(100, 64, 32) == 128
    assert padded_size(70, 16, 8) == 72


@pytest.mark.parametrize("shape,patch,stride,batch", [((3, 40, 52), 16, 8, 7), ((2, 64, 64), 64, 32, 64),
                                                      ((2, 37, 45), 16, 16, 5)])
def test_tiling_equals_naive_loop(shape, patch, stride, batch):
    rng = np.random.default_rng(0)
    image = rng.standard_normal(shape).astype(np.float32)
    got = sliding_window_probability(_torch_position_dependent, torch.from_numpy(image), patch=patch,
                                     stride=stride, batch_size=batch)
    expected = _naive_overlap_average(_position_dependent, image, patch, stride)
    assert got.shape == shape[1:] and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_800px_tile_count_and_batches():
    calls = []

    def predict(tiles):
        calls.append(tuple(tiles.shape))
        return torch.full((tiles.shape[0], 64, 64), 0.25)

    prob = sliding_window_probability(predict, np.zeros((8, 800, 800), np.float32), batch_size=64)
    assert sum(c[0] for c in calls) == 625  # 25 x 25 tiles over 832 x 832
    assert calls[0] == (64, 8, 64, 64) and len(calls) == 10
    assert prob.shape == (800, 800) and torch.allclose(prob, torch.tensor(0.25))


class _FramesPixelModel(nn.Module):
    input_layout = "frames"

    def __init__(self, num_frames=4):
        super().__init__()
        self.head = nn.Conv2d(num_frames, 2, 1)

    def forward(self, x_BTHW):
        return self.head(x_BTHW)


class _SequencePixelModel(nn.Module):
    input_layout = "sequence"

    def __init__(self, num_frames=4):
        super().__init__()
        self.head = nn.Conv3d(1, 3, (num_frames, 1, 1))

    def forward(self, x_B1THW):
        return self.head(x_B1THW)[:, :, 0]


@pytest.mark.parametrize("model_cls", [_FramesPixelModel, _SequencePixelModel])
def test_model_predict_fn_equals_whole_image_forward(model_cls):
    """A pixel-local model: overlap-averaged tiles must equal one forward over the whole image."""
    torch.manual_seed(0)
    model = model_cls().eval()
    image = torch.randn(4, 48, 40)
    predict = model_predict_fn(model, "cpu", model.input_layout, amp=False)
    got = sliding_window_probability(predict, image, patch=16, stride=8, batch_size=9)
    with torch.no_grad():
        from dias_dist.models import to_layout, vessel_probability
        direct = vessel_probability(model(to_layout(image[None], model.input_layout)))[0]
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-6)


def test_small_images_are_padded_and_patch_zero_is_one_whole_image_tile():
    from dias_dist.models import build_model, input_layout

    model = build_model("unet", num_frames=2, width=4).eval()
    predict = model_predict_fn(model, "cpu", input_layout(model), amp=False)
    image = torch.randn(2, 10, 70)
    seen = []

    def recording(tiles):
        seen.append(tuple(tiles.shape))
        return predict(tiles)

    small = sliding_window_probability(recording, image, patch=16, stride=8)
    assert small.shape == (10, 70) and seen[0][2:] == (16, 16)
    seen.clear()
    whole = sliding_window_probability(recording, image, patch=0, stride=1)
    assert seen == [(1, 2, 128, 128)]  # 70 rounded up to a multiple of 64, one tile
    padded = torch.nn.functional.pad(image, (0, 128 - 70, 0, 128 - 10))
    with torch.no_grad():
        from dias_dist.models import to_layout, vessel_probability
        direct = vessel_probability(model(to_layout(padded[None], input_layout(model))))[0, :10, :70]
    torch.testing.assert_close(whole, direct, rtol=1e-5, atol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="0 < stride <= patch"):
        sliding_window_probability(_torch_position_dependent, np.zeros((2, 10, 70), np.float32), patch=-1, stride=8)
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        sliding_window_probability(_torch_position_dependent, np.zeros((70, 70), np.float32), patch=16, stride=8)
    with pytest.raises(ValueError, match="predict_fn returned"):
        sliding_window_probability(lambda t: torch.zeros(t.shape[0], 8, 8), np.zeros((1, 32, 32), np.float32),
                                   patch=16, stride=8)
