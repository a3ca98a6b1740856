"""SSCR's per-branch intensity augmentation (DIAS ``separate_DA``, docs/REFERENCE.md §8), in torch.

Applied on the device to a batch of z-scored frames x (B, T, H, W) float, independently per
sample, in this order:
  1. contrast, p = 0.5 per sample: x <- α_t · x with one α_t ~ U(0.5, 1.5) per frame, then clip to
     [−1, 1] (clipping only when the contrast is applied, as the reference's RandomContrast);
  2. Gaussian blur, p = 0.5 per sample: σ ~ U(0.1, 2) over the whole (T, H, W) volume, truncated
     at round(4σ) like ``skimage.filters.gaussian``, border mode "nearest";
  3. additive noise, p = 0.1 per sample: N(0, std²) per voxel with std ~ U(0, 0.1).
All random numbers come from one ``torch.Generator`` on the tensor's device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CONTRAST_PROB, CONTRAST_RANGE = 0.5, (0.5, 1.5)
BLUR_PROB, BLUR_SIGMA_RANGE, BLUR_TRUNCATE = 0.5, (0.1, 2.0), 4.0
NOISE_PROB, NOISE_STD_RANGE = 0.1, (0.0, 0.1)


def _uniform(shape, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def gaussian_kernels(sigma_B: torch.Tensor, apply_B: torch.Tensor) -> torch.Tensor:
    """1-D Gaussian kernels (B, 2R+1), R = round(4·max σ); a delta where ``apply_B`` is False.

    Each kernel is zero beyond its own radius round(4σ_b) and sums to 1.
    """
    radius_B = torch.floor(BLUR_TRUNCATE * sigma_B + 0.5)
    max_radius = int(BLUR_TRUNCATE * BLUR_SIGMA_RANGE[1] + 0.5)
    offsets_K = torch.arange(-max_radius, max_radius + 1, device=sigma_B.device, dtype=sigma_B.dtype)
    weights_BK = torch.exp(-0.5 * (offsets_K[None] / sigma_B[:, None]) ** 2)
    weights_BK = weights_BK * (offsets_K[None].abs() <= radius_B[:, None])
    weights_BK = weights_BK / weights_BK.sum(1, keepdim=True)
    delta_K = (offsets_K == 0).to(weights_BK.dtype)
    return torch.where(apply_B[:, None], weights_BK, delta_K[None])


def blur_volume(x_BTHW: torch.Tensor, kernels_BK: torch.Tensor) -> torch.Tensor:
    """Separable blur of each sample's (T, H, W) volume with its own 1-D kernel, "nearest" border."""
    batch = x_BTHW.shape[0]
    radius = kernels_BK.shape[1] // 2
    volume = x_BTHW.unsqueeze(0)  # (1, B, T, H, W): samples as channels of a grouped conv
    for axis in range(3):
        shape = [batch, 1, 1, 1, 1]
        shape[2 + axis] = kernels_BK.shape[1]
        weight = kernels_BK.reshape(shape).to(volume.dtype)
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius  # F.pad lists the last axis first
        volume = F.conv3d(F.pad(volume, pad, mode="replicate"), weight, groups=batch)
    return volume.squeeze(0)


def augment_intensity(x_BTHW: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return an intensity-augmented copy of x (B, T, H, W) float; x itself is not changed."""
    if x_BTHW.dim() != 4:
        raise ValueError(f"augment_intensity expects frames (B, T, H, W), got {tuple(x_BTHW.shape)}")
    batch, frames = x_BTHW.shape[:2]
    device = x_BTHW.device
    x = x_BTHW.float()

    contrast_B = torch.rand(batch, generator=generator, device=device) < CONTRAST_PROB
    alpha_BT = _uniform((batch, frames), *CONTRAST_RANGE, generator, device)
    contrasted = (alpha_BT[:, :, None, None] * x).clamp(-1.0, 1.0)
    x = torch.where(contrast_B[:, None, None, None], contrasted, x)

    blur_B = torch.rand(batch, generator=generator, device=device) < BLUR_PROB
    sigma_B = _uniform(batch, *BLUR_SIGMA_RANGE, generator, device)
    if bool(blur_B.any()):
        x = blur_volume(x, gaussian_kernels(sigma_B, blur_B))

    noise_B = torch.rand(batch, generator=generator, device=device) < NOISE_PROB
    std_B = _uniform(batch, *NOISE_STD_RANGE, generator, device) * noise_B
    noise = torch.randn(x.shape, generator=generator, device=device)
    x = x + std_B[:, None, None, None] * noise
    return x.to(x_BTHW.dtype)
