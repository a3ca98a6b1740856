"""Loss terms for learning from scribbles (docs/REFERENCE.md §6); pure functions, no state.

Shape legend: B batch, C channels (2 or 3; channel 0 background, 1 vessel, 2 the unused extra
channel of the reference's 3-channel heads), T frames, H/W height/width. Logits are float
(B, C, H, W); scribble targets are int64 (B, H, W) with values {0 background, 1 vessel,
255 not annotated}. Every loss returns a float32 scalar tensor.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dias_dist.losses import DICE_SMOOTH, soft_dice_term
from dias_dist.models import as_frames

from .base import IGNORE_INDEX

ENTROPY_EPS = 1e-6
INTENSITY_CHOICES = ("minip", "argmin")  # the intensity maps of IVM and RLoss


def intensity_image(x: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, H, W) float intensity map from model input in either layout: MinIP or argmin frame index."""
    frames_BTHW = as_frames(x)
    if kind == "minip":
        return frames_BTHW.amin(dim=1).float()
    return frames_BTHW.argmin(dim=1).float()


def partial_cross_entropy(logits_BCHW: torch.Tensor, target_BHW: torch.Tensor,
                          ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy averaged over the annotated pixels of the whole batch (softmax over all C).

    Pixels equal to ``ignore_index`` contribute nothing (zero gradient). A batch with no annotated
    pixel gives exactly 0 (still attached to the graph) instead of the 0/0 NaN of
    ``CrossEntropyLoss(ignore_index=255)``.
    """
    per_pixel_BHW = F.cross_entropy(logits_BCHW.float(), target_BHW, ignore_index=ignore_index, reduction="none")
    annotated = (target_BHW != ignore_index).sum().clamp_min(1)
    return per_pixel_BHW.sum() / annotated


def partial_soft_dice(logits_BCHW: torch.Tensor, target_BHW: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The reference's partial soft Dice term (nnU-Net ``DC_and_CE_loss`` with ignore_label=255).

    Softmax over all C channels; tp/fp/fn summed over batch and space on annotated pixels only;
    dc_c = (2tp + 1e-5) / (2tp + fp + fn + 1e-5 + 1e-8); returns −mean(dc_c for c >= 1), in [−1, 0].
    """
    annotated_BHW = target_BHW != ignore_index
    clean_target_BHW = torch.where(annotated_BHW, target_BHW, torch.zeros_like(target_BHW))
    return soft_dice_term(logits_BCHW, clean_target_BHW, mask_BHW=annotated_BHW)


def entropy(logits_BCHW: torch.Tensor, normaliser_classes: int = 2) -> torch.Tensor:
    """Mean over all B·H·W pixels of −Σ_c p_c log(p_c + 1e-6) / log(normaliser_classes).

    The reference normalises the 3-channel entropy by log 2 (so its maximum is log3/log2).
    """
    probs_BCHW = torch.softmax(logits_BCHW.float(), dim=1)
    ent_BHW = -(probs_BCHW * torch.log(probs_BCHW + ENTROPY_EPS)).sum(1)
    return ent_BHW.mean() / math.log(normaliser_classes)


# --------------------------------------------------------------------------------------------
# gated CRF loss (Obukhov et al. 2019) with Potts compatibility

KERNEL_KEYS = ("weight", "xy", "intensity")
SPATIAL_ONLY_KERNELS = ({"weight": 0.1, "xy": 6.0},)  # DIAS reference


def check_kernels(kernels, where: str = "method.params.kernels") -> list[dict]:
    """Validate a kernel list like ``[{"weight": 0.1, "xy": 6}]``; returns float-valued copies.

    Each kernel: ``weight`` (required) and at least one bandwidth: ``xy`` (σ in pixels) and/or
    ``intensity`` (σ in units of the intensity image).
    """
    if not isinstance(kernels, (list, tuple)) or not kernels:
        raise ValueError(f"{where} must be a non-empty list of kernels, got {kernels!r}")
    out = []
    for i, kernel in enumerate(kernels):
        if not isinstance(kernel, dict):
            raise ValueError(f"{where}[{i}] must be a mapping with keys {KERNEL_KEYS}, got {kernel!r}")
        unknown = sorted(set(kernel) - set(KERNEL_KEYS))
        if unknown:
            raise ValueError(f"{where}[{i}] has unknown key(s) {unknown}; valid keys: {KERNEL_KEYS}")
        if "weight" not in kernel or not ({"xy", "intensity"} & set(kernel)):
            raise ValueError(f"{where}[{i}] = {kernel!r} needs 'weight' and at least one of 'xy', 'intensity'")
        for key, value in kernel.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (key != "weight" and value <= 0):
                raise ValueError(f"{where}[{i}].{key} must be a positive number, got {value!r}")
        out.append({k: float(v) for k, v in kernel.items()})
    return out


def gated_crf_loss(logits_BCHW: torch.Tensor, kernels, radius: int = 5,
                   intensity_BHW: torch.Tensor | None = None, *, checked: bool = False) -> torch.Tensor:
    """Gated CRF loss with Potts compatibility over a (2r+1)² window, normalised by B·H·W.

    L = 1/(B·H·W) Σ_i Σ_{j ∈ W(i), j ≠ i, j in image} K_ij (1 − Σ_c p_ic p_jc), p = softmax(logits)
    over all C channels, K_ij = Σ_k w_k exp(−½ (|x_i − x_j|² / σ_xy,k² + (I_i − I_j)² / σ_I,k²)).
    Neighbours outside the image are left out (the reference's zero padding adds only a constant
    for them, so the gradient is the same). ``intensity_BHW`` (float) is required when a kernel has
    an ``intensity`` bandwidth. ``checked=True``: ``kernels`` already came from ``check_kernels``
    (``RLoss`` validates once at construction, not every step).

    A kernel without an intensity bandwidth is the same for every pixel pair of one offset: its
    affinity is a Python float, so the spatial-only default allocates no (B, H, W) affinity maps.
    """
    if not checked:
        kernels = check_kernels(kernels)
    spatial_kernels = [k for k in kernels if "intensity" not in k]
    intensity_kernels = [k for k in kernels if "intensity" in k]
    if intensity_kernels and intensity_BHW is None:
        raise ValueError("gated_crf_loss: a kernel has an 'intensity' bandwidth but no intensity image was given")
    probs_BCHW = torch.softmax(logits_BCHW.float(), dim=1)
    batch, _, height, width = probs_BCHW.shape
    total = probs_BCHW.new_zeros(())
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy == 0 and dx == 0) or abs(dy) >= height or abs(dx) >= width:
                continue
            # pixel i over rows/cols [i0, i1), its neighbour j = i + (dy, dx)
            ys, ye = max(0, -dy), min(height, height - dy)
            xs, xe = max(0, -dx), min(width, width - dx)
            p_i = probs_BCHW[:, :, ys:ye, xs:xe]
            p_j = probs_BCHW[:, :, ys + dy:ye + dy, xs + dx:xe + dx]
            squared_distance = dy * dy + dx * dx
            affinity = sum(k["weight"] * math.exp(-0.5 * squared_distance / k["xy"] ** 2) for k in spatial_kernels)
            for k in intensity_kernels:
                exponent = squared_distance / k["xy"] ** 2 if "xy" in k else 0.0
                diff = intensity_BHW[:, ys:ye, xs:xe] - intensity_BHW[:, ys + dy:ye + dy, xs + dx:xe + dx]
                affinity = affinity + k["weight"] * (-0.5 * exponent - 0.5 * (diff.float() / k["intensity"]) ** 2).exp()
            total = total + (affinity * (1 - (p_i * p_j).sum(1))).sum()
    return total / (batch * height * width)


# --------------------------------------------------------------------------------------------
# IVM and DMPLS terms


def inter_intra_class_term(logits_BCHW: torch.Tensor, intensity_BHW: torch.Tensor) -> torch.Tensor:
    """The reference IVM regulariser R = inter − intra (to be minimised), docs/REFERENCE.md §6.4.

    Q_c = I ⊙ p_c (p = softmax over all C); intra = mean_{b,c} std_{h,w}(Q_c);
    inter = mean_b std_c(mean_{h,w} Q_c); std is unbiased (n − 1), as torch.std.
    """
    probs_BCHW = torch.softmax(logits_BCHW.float(), dim=1)
    weighted_BCHW = intensity_BHW.float().unsqueeze(1) * probs_BCHW
    intra = weighted_BCHW.flatten(2).std(dim=2).mean()
    inter = weighted_BCHW.mean(dim=(2, 3)).std(dim=1).mean()
    return inter - intra


def pseudo_label_dice(probs_BCHW: torch.Tensor, pseudo_BHW: torch.Tensor) -> torch.Tensor:
    """DMPLS ``pDLoss`` against a dense pseudo label (no ignored pixels).

    Per class 1 − (2 Σ p_c y_c + 1e-5) / (Σ p_c² + Σ y_c² + 1e-5), sums over batch and space,
    averaged over all C classes (background included). ``probs_BCHW`` are probabilities.
    """
    onehot_BCHW = F.one_hot(pseudo_BHW.long(), probs_BCHW.shape[1]).permute(0, 3, 1, 2).float()
    probs_BCHW = probs_BCHW.float()
    dims = (0, 2, 3)
    intersect_C = (probs_BCHW * onehot_BCHW).sum(dims)
    denom_C = (probs_BCHW * probs_BCHW).sum(dims) + (onehot_BCHW * onehot_BCHW).sum(dims)
    return (1 - (2 * intersect_C + DICE_SMOOTH) / (denom_C + DICE_SMOOTH)).mean()


def limited_argmax(logits_BCHW: torch.Tensor) -> torch.Tensor:
    """Hard label (B, H, W) int64 from the background/vessel channels 0..1 only (limited softmax)."""
    return logits_BCHW[:, :2].argmax(dim=1)


def overwrite_with_scribbles(pseudo_BHW: torch.Tensor, scribble_BHW: torch.Tensor,
                             ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pseudo label with every annotated scribble pixel (0 or 1) copied over it."""
    return torch.where(scribble_BHW == ignore_index, pseudo_BHW, scribble_BHW)
