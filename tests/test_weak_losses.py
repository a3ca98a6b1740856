"""Scribble loss terms (dias_dist.methods.weak_losses) and SSCR's intensity augmentation."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dias_dist.methods import intensity_aug as aug
from dias_dist.methods import weak_losses as wl


def scribble_batch(seed=0, batch=2, classes=3, size=8, annotated_fraction=0.3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, size, size, generator=g, requires_grad=True)
    target = torch.randint(0, 2, (batch, size, size), generator=g)
    unannotated = torch.rand(batch, size, size, generator=g) > annotated_fraction
    target[unannotated] = 255
    return logits, target


# ---------------------------------------------------------------------- pCE / partial Dice


def test_pce_equals_ignore_index_cross_entropy():
    logits, target = scribble_batch()
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(wl.partial_cross_entropy(logits, target), expected, atol=1e-6)


@pytest.mark.parametrize("loss", [wl.partial_cross_entropy, wl.partial_soft_dice])
def test_partial_losses_give_exactly_zero_gradient_on_unannotated_pixels(loss):
    logits, target = scribble_batch(seed=1)
    loss(logits, target).backward()
    grad_BHW = logits.grad.abs().sum(1)
    assert (grad_BHW[target == 255] == 0).all()
    assert (grad_BHW[target != 255] > 0).all()


@pytest.mark.parametrize("loss", [wl.partial_cross_entropy, wl.partial_soft_dice])
def test_partial_losses_are_finite_on_a_batch_without_annotation(loss):
    logits, target = scribble_batch(seed=2)
    target[:] = 255
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert (logits.grad == 0).all()


def test_partial_dice_is_minus_one_for_a_perfect_two_channel_prediction_and_ignores_255():
    target = torch.tensor([[[0, 1, 255], [1, 0, 255]]])
    logits = 40.0 * F.one_hot(torch.tensor([[[0, 1, 1], [1, 0, 0]]]), 2).permute(0, 3, 1, 2).float()
    assert wl.partial_soft_dice(logits, target).item() == pytest.approx(-1.0, abs=1e-5)
    wrong = 40.0 * F.one_hot(torch.tensor([[[1, 0, 1], [0, 1, 0]]]), 2).permute(0, 3, 1, 2).float()
    assert wl.partial_soft_dice(wrong, target).item() == pytest.approx(0.0, abs=1e-5)


def test_entropy_is_normalised_by_log2():
    uniform2 = torch.zeros(1, 2, 4, 4)
    uniform3 = torch.zeros(1, 3, 4, 4)
    confident = torch.tensor([30.0, -30.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    assert wl.entropy(uniform2).item() == pytest.approx(1.0, abs=1e-5)
    assert wl.entropy(uniform3).item() == pytest.approx(math.log(3) / math.log(2), abs=1e-5)
    assert wl.entropy(confident).item() == pytest.approx(0.0, abs=1e-5)


# ---------------------------------------------------------------------- gated CRF


def brute_force_gated_crf(logits, kernels, radius, intensity=None):
    p = torch.softmax(logits.double(), 1).numpy()
    batch, _, height, width = p.shape
    total = 0.0
    for b in range(batch):
        for yi in range(height):
            for xi in range(width):
                for yj in range(height):
                    for xj in range(width):
                        if (yi, xi) == (yj, xj) or abs(yi - yj) > radius or abs(xi - xj) > radius:
                            continue
                        k_ij = 0.0
                        for k in kernels:
                            e = 0.0
                            if "xy" in k:
                                e += ((yi - yj) ** 2 + (xi - xj) ** 2) / k["xy"] ** 2
                            if "intensity" in k:
                                e += ((intensity[b, yi, xi] - intensity[b, yj, xj]) / k["intensity"]) ** 2
                            k_ij += k["weight"] * math.exp(-0.5 * e)
                        total += k_ij * (1.0 - float((p[b, :, yi, xi] * p[b, :, yj, xj]).sum()))
    return total / (batch * height * width)


@pytest.mark.parametrize(
    "kernels, radius",
    [
        ([{"weight": 0.1, "xy": 6}], 5),  # DIAS reference, window larger than the image
        ([{"weight": 1.0, "xy": 2.0, "intensity": 0.5}], 2),  # WSL4MIS-style intensity kernel
        ([{"weight": 0.3, "xy": 3}, {"weight": 0.7, "intensity": 1.0}], 3),
    ],
)
def test_gated_crf_matches_brute_force_double_loop(kernels, radius):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 7, 6, generator=g)
    intensity = torch.randn(2, 7, 6, generator=g)
    got = wl.gated_crf_loss(logits, kernels, radius, intensity).item()
    expected = brute_force_gated_crf(logits, kernels, radius, intensity.numpy())
    assert got == pytest.approx(expected, rel=1e-5)


def test_gated_crf_rejects_bad_kernels():
    with pytest.raises(ValueError, match="unknown key"):
        wl.check_kernels([{"weight": 1, "rgb": 0.1}])
    with pytest.raises(ValueError, match="at least one of"):
        wl.check_kernels([{"weight": 1}])
    with pytest.raises(ValueError, match="no intensity image"):
        wl.gated_crf_loss(torch.zeros(1, 2, 4, 4), [{"weight": 1, "intensity": 0.1}], 2)


# ---------------------------------------------------------------------- IVM / pDLoss


def test_inter_intra_term_matches_numpy():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 3, 5, 4, generator=g)
    intensity = torch.randn(3, 5, 4, generator=g)
    q = intensity.numpy()[:, None] * torch.softmax(logits, 1).numpy()
    intra = np.mean([[q[b, c].std(ddof=1) for c in range(3)] for b in range(3)])
    inter = np.mean([q[b].mean(axis=(1, 2)).std(ddof=1) for b in range(3)])
    got = wl.inter_intra_class_term(logits, intensity).item()
    assert got == pytest.approx(inter - intra, rel=1e-5)


def test_pseudo_label_dice_formula_and_perfect_prediction():
    pseudo = torch.tensor([[[0, 1], [1, 1]]])
    perfect = F.one_hot(pseudo, 2).permute(0, 3, 1, 2).float()
    assert wl.pseudo_label_dice(perfect, pseudo).item() == pytest.approx(0.0, abs=1e-6)
    probs = torch.tensor([[[[0.8, 0.4], [0.3, 0.1]], [[0.2, 0.6], [0.7, 0.9]]]])
    p, y = probs.numpy()[0], perfect.numpy()[0]
    per_class = [1 - (2 * (p[c] * y[c]).sum() + 1e-5) / ((p[c] ** 2).sum() + (y[c] ** 2).sum() + 1e-5) for c in range(2)]
    assert wl.pseudo_label_dice(probs, pseudo).item() == pytest.approx(np.mean(per_class), rel=1e-6)


def test_limited_argmax_ignores_the_extra_channel_and_scribbles_overwrite():
    logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]], [[9.0, 9.0]]]])  # (1, 3, 1, 2)
    assert wl.limited_argmax(logits).tolist() == [[[0, 1]]]
    scribble = torch.tensor([[[1, 255]]])
    assert wl.overwrite_with_scribbles(wl.limited_argmax(logits), scribble).tolist() == [[[1, 1]]]


# ---------------------------------------------------------------------- intensity augmentation


def test_blur_matches_skimage_gaussian_over_the_volume():
    from skimage.filters import gaussian

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 12, 10, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.7, 1.6], dtype=torch.float64)
    blurred = aug.blur_volume(x, aug.gaussian_kernels(sigma, torch.tensor([True, True])))
    for b in range(2):
        expected = gaussian(x[b].numpy(), sigma=float(sigma[b]), mode="nearest", truncate=4.0, preserve_range=True)
        assert np.allclose(blurred[b].numpy(), expected, atol=1e-10)
    identity = aug.blur_volume(x, aug.gaussian_kernels(sigma, torch.tensor([False, False])))
    assert torch.equal(identity, x)


def test_augmentation_is_seeded_per_sample_and_leaves_the_input_alone():
    x = torch.randn(1, 8, 16, 16).repeat(16, 1, 1, 1)  # 16 copies of one patch
    original = x.clone()
    out1 = aug.augment_intensity(x, torch.Generator().manual_seed(7))
    out2 = aug.augment_intensity(x, torch.Generator().manual_seed(7))
    out3 = aug.augment_intensity(x, torch.Generator().manual_seed(8))
    assert torch.equal(x, original)
    assert torch.equal(out1, out2) and not torch.equal(out1, out3)
    distinct = {round(out1[b].sum().item(), 4) for b in range(16)}
    assert len(distinct) > 4  # samples draw their own parameters


def test_contrast_scales_each_frame_and_clips(monkeypatch):
    monkeypatch.setattr(aug, "BLUR_PROB", 0.0)
    monkeypatch.setattr(aug, "NOISE_PROB", 0.0)
    monkeypatch.setattr(aug, "CONTRAST_PROB", 1.0)
    x = torch.linspace(-3, 3, 8 * 4 * 4).view(1, 8, 4, 4)
    out = aug.augment_intensity(x, torch.Generator().manual_seed(0))
    assert out.min() >= -1 and out.max() <= 1
    inside = (out.abs() < 1) & (x.abs() > 1e-3)
    ratios = [torch.unique((out[0, t] / x[0, t])[inside[0, t]].round(decimals=4)) for t in range(8)]
    alphas = [r.item() for r in ratios if r.numel() == 1]
    assert len(alphas) >= 4 and all(0.5 <= a <= 1.5 for a in alphas) and len(set(alphas)) > 1
