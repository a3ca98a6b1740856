"""Reusable helpers for model tests (imported by test_models.py and test_models_3d.py).

- ``REFERENCE_PARAMS``: the measured full-size parameter counts of docs/REFERENCE.md §4 (num_classes=2)
  of the 2D models and VSS-Net (test_models_3d.py's CASES hold the 3D and 3D->2D ones).
- ``SMALL_PARAMS``, ``small_size_px``, ``build_small``: a tiny, seeded eval-mode variant per model
  and its input side length, so forward passes stay fast.
- ``full_size_parameter_count(name)``: count of the default (full-size) config, built on the meta device.
- ``make_input``, ``check_logits``, ``check_no_final_activation``, ``wrong_inputs``: the registry-wide
  shape/activation/ValueError checks.
"""
from __future__ import annotations

import torch

from dias_dist.models import MODELS, count_parameters, input_layout

# docs/REFERENCE.md §4, "measured" column (num_classes=2, 8 frames), of the 2D models and VSS-Net
# (the 3D and 3D->2D counts live in test_models_3d.py's CASES). Checked exactly.
REFERENCE_PARAMS = {
    "unet": 31_040_578,
    "res_unet": 9_373_442,
    "unet_nested": 9_047_816,
    "att_unet": 8_727_550,
    "cs2_net": 8_927_236,
    "maa_net": 5_799_593,
    "fr_unet": 7_378_774,
    "vss_net": 18_515_318,
}

# Tiny variants for forward-pass tests; models not listed are built with their defaults.
SMALL_PARAMS = {
    "vss_net": {"width": 4},
    "fr_unet": {"width": 4},
    "unet": {"width": 4},
    "res_unet": {"width": 4},
    "unet_nested": {"width": 4},
    "att_unet": {"width": 4},
    "cs2_net": {"width": 4},
    "maa_net": {"width": 8},  # position attention needs width/8 >= 1
    # 3D and 3D->2D models and the weak methods' 2D backbones (also used by test_models_3d.py)
    "unet_3d": {"width": 4},
    "res_unet_3d": {"feature_scale": 16},
    "unet_nested_3d": {"feature_scale": 16},
    "att_unet_3d": {"feature_scale": 16},
    "cs2_net_3d": {"width": 4},
    "fr_unet_3d": {"feature_scale": 16},
    "ipn": {"feature_scale": 16},
    "psc": {"feature_scale": 16},
    "svs_net": {"width": 2},
    "st_unet": {"width": 4, "gru_impl": "torch"},
    "unet_cct": {"width": 4},
    "unet_dp": {"width": 4},
}
SMALL_SIZE_PX = 32  # divisible by 16 (the deepest 2D downsampling)
SMALL_SIZE_OVERRIDES = {"svs_net": 64}  # SVS-Net needs 64x64 input


def small_size_px(name: str) -> int:
    """Side length of the small test input for registered model ``name``."""
    return SMALL_SIZE_OVERRIDES.get(name, SMALL_SIZE_PX)


def full_size_parameter_count(name: str) -> int:
    """Parameter count of ``MODELS[name]()`` (default = full-size config) without allocating memory."""
    with torch.device("meta"):
        model = MODELS[name]()
    return count_parameters(model)


def build_small(name: str, **overrides) -> torch.nn.Module:
    """A tiny, seeded instance of registered model ``name`` in eval mode."""
    torch.manual_seed(0)
    return MODELS[name](**{**SMALL_PARAMS.get(name, {}), **overrides}).eval()


def make_input(model: torch.nn.Module, batch: int = 2, num_frames: int = 8, size_px: int = SMALL_SIZE_PX):
    """Random input in the model's declared layout: (B, T, H, W) or (B, 1, T, H, W), float32."""
    x_BTHW = torch.randn(batch, num_frames, size_px, size_px)
    return x_BTHW if input_layout(model) == "frames" else x_BTHW.unsqueeze(1)


def check_logits(out: torch.Tensor, batch: int, num_classes: int = 2, size_px: int = SMALL_SIZE_PX) -> None:
    """Output is finite logits (B, num_classes, H, W) with no final activation.

    A softmax/sigmoid output would lie in [0, 1] (and a softmax would sum to 1 over channels);
    kaiming/default-initialised raw logits on random input do not.
    """
    assert out.shape == (batch, num_classes, size_px, size_px), out.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-3), "output sums to 1 (softmax?)"


@torch.no_grad()
def check_no_final_activation(model: torch.nn.Module, x: torch.Tensor) -> None:
    """A sigmoid/softmax output stays inside [0, 1] whatever the input; raw logits leave it for
    some input scale (tiny, default-initialised models can have small logits at unit scale)."""
    for scale in (1.0, 10.0, 100.0):
        out = model(x * scale)
        if out.min() < 0 or out.max() > 1:
            return
    raise AssertionError("output stays in [0, 1] for inputs scaled x1, x10, x100: final activation?")


def wrong_inputs(model: torch.nn.Module, num_frames: int = 8, size_px: int = SMALL_SIZE_PX) -> list[torch.Tensor]:
    """Inputs every model must reject with a ValueError: the other layout and a wrong sequence length."""
    frames = torch.randn(1, num_frames, size_px, size_px)
    sequence = frames.unsqueeze(1)
    short = torch.randn(1, num_frames - 1, size_px, size_px)
    if input_layout(model) == "frames":
        return [sequence, short]
    return [frames, short.unsqueeze(1)]
