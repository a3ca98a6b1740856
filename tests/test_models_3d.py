"""3D (DR head) and 3D->2D baselines of Table II and the weak methods' 2D backbones.

Full-size parameter counts are taken on the ``meta`` device (nothing allocated) and compared with
the measured reference counts of docs/REFERENCE.md §4, exactly.
CS2-Net-3D and FR-UNet-3D contain layers the reference defines but never calls; they are kept
frozen so the total matches Table II, and the trainable count is checked separately (total minus
exactly those layers). Res-UNet-3D and PSC implement the intended network where the reference has
bugs (residual discarded, head on the wrong tensor); neither bug changes the count.
Forward tests use model_cases' tiny configs and inputs to stay fast on CPU; the registry-wide
forward-shape and layout/length checks are in test_models.py.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from dias_dist.config import load_config
from dias_dist.models import MODELS, build_model, count_parameters, input_layout, to_layout
from dias_dist.models.dr_head import DRHead
from dias_dist.models.res_unet_3d import ResConv3d
from model_cases import SMALL_PARAMS, build_small, make_input, small_size_px

REPO = Path(__file__).resolve().parents[1]


def fr_unet_3d_unused() -> int:
    """Reference-only layers of FR-UNet-3D: a feature_fuse (1x1x1 + 2x 3x3x3 convs, BN) in the
    four blocks whose input width equals their own (C = 32, 64, 128, 256) and Conv3d(5 -> 2, 1)."""
    return sum(55 * c * c + 2 * c for c in (32, 64, 128, 256)) + (5 * 2 + 2)


CS2_NET_3D_UNUSED = 1024 * 512 + 512  # attention_fuse Conv3d(2*512 -> 512, 1)

# name: (reference count, trainable count, input layout); tiny configs and input sizes come from
# model_cases (SMALL_PARAMS, small_size_px), shared with test_models.py.
CASES = {
    "unet_3d": (90_265_811, 90_265_811, "sequence"),
    "res_unet_3d": (26_379_539, 26_379_539, "sequence"),
    "unet_nested_3d": (26_169_644, 26_169_644, "sequence"),
    "att_unet_3d": (23_595_958, 23_595_958, "sequence"),
    "cs2_net_3d": (23_830_709, 23_830_709 - CS2_NET_3D_UNUSED, "sequence"),
    "fr_unet_3d": (20_572_907, 20_572_907 - fr_unet_3d_unused(), "sequence"),
    "ipn": (6_360_336, 6_360_336, "sequence"),
    "psc": (6_425_250, 6_425_250, "sequence"),
    "svs_net": (8_480_522, 8_480_522, "sequence"),
    "st_unet": (104_365_506, 104_365_506, "sequence"),
    "unet_cct": (2_447_492, 2_447_492, "frames"),
    "unet_dp": (31_040_578, 31_040_578, "frames"),
}
CONFIGS = [n for n in CASES if n not in ("unet_cct", "unet_dp")]


def tiny_input(model: nn.Module, name: str, batch: int = 1) -> torch.Tensor:
    return make_input(model, batch=batch, size_px=small_size_px(name))


@pytest.mark.parametrize("name", sorted(CASES))
def test_full_size_parameter_count(name):
    reference, trainable, _ = CASES[name]
    with torch.device("meta"):
        model = build_model(name)
    assert count_parameters(model) == reference
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable


def test_reference_code_defaults_counts():
    """The reference's code defaults differ from the Table II settings (docs/REFERENCE.md §4)."""
    with torch.device("meta"):
        assert count_parameters(build_model("res_unet_3d", feature_scale=2)) == 6_597_267
        assert count_parameters(build_model("fr_unet_3d", feature_scale=4)) == 5_146_283
        assert count_parameters(build_model("unet_dp", num_classes=3)) == 31_040_643


@pytest.mark.parametrize("name", sorted(CASES))
def test_declared_input_layout(name):
    """(Output shapes, raw logits and layout/length errors: test_models.py, for every model.)"""
    assert name in SMALL_PARAMS  # the tiny config the tests here build
    assert input_layout(build_small(name)) == CASES[name][2]


@pytest.mark.parametrize("name", sorted(set(CASES) - {"ipn"}))
def test_no_final_activation(name):
    """Negating the output convolution(s) negates the output exactly: nothing follows them.
    (IPN is left out: as the reference, its last layer ends in LeakyReLU(0.1), see ipn.py.)"""
    model = build_small(name, num_classes=3)  # 3 output channels: no other conv has that width
    x = tiny_input(model, name)
    heads = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)) and m.out_channels == 3]
    assert heads
    with torch.no_grad():
        out = model(x)
        for head in heads:
            head.weight.neg_()
            head.bias.neg_()
        torch.testing.assert_close(model(x), -out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_trainable_parameter_gets_a_gradient(name):
    """No trainable parameter is left out of the graph (DDP runs without find_unused_parameters)."""
    model = build_small(name).train()
    out = model(tiny_input(model, name, batch=2))
    loss = sum(o.float().square().mean() for o in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert bool(frozen) == (name in ("cs2_net_3d", "fr_unet_3d"))


@pytest.mark.parametrize("name", sorted(set(CASES) - {"ipn"}))  # IPN takes any H, W
def test_odd_size_is_a_value_error(name):
    model = build_small(name)
    size_px = small_size_px(name)
    odd_size = to_layout(torch.randn(1, 8, size_px + 4, size_px), input_layout(model))
    with pytest.raises(ValueError, match=rf"{name}.*{re.escape(str(tuple(odd_size.shape)))}"):
        model(odd_size)


def test_other_sequence_length_when_configured():
    model = build_model("fr_unet_3d", feature_scale=16, num_frames=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 4, 8, 8)).shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match="num_frames"):
        build_model("psc", num_frames=16)
    with pytest.raises(ValueError, match="unet_3d.*num_frames=6"):
        build_model("unet_3d", num_frames=6)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_the_full_size_model(name):
    cfg = load_config(REPO / "configs" / "full" / f"{name}.yaml")
    assert cfg.model.name == name and MODELS[name].__module__.endswith(name)
    with torch.device("meta"):
        assert count_parameters(build_model(cfg.model.name, **cfg.model.params)) == CASES[name][0]


def test_dr_head_is_channel_then_frame_mixing():
    torch.manual_seed(0)
    head = DRHead(in_channels=3, num_frames=4, num_classes=2)
    x = torch.randn(2, 3, 4, 5, 5)
    channel_w = head.channel_mix.weight.view(3)
    mixed = torch.einsum("bcthw,c->bthw", x, channel_w) + head.channel_mix.bias
    frame_w = head.frame_mix.weight.view(2, 4)
    expected = torch.einsum("bthw,kt->bkhw", mixed, frame_w) + head.frame_mix.bias.view(1, 2, 1, 1)
    torch.testing.assert_close(head(x), expected)


def test_residual_block_keeps_the_residual():
    """The reference's Res-UNet/PSC block discards x + res; ours returns LReLU(conv(x) + x)."""
    block = ResConv3d(4, 4)
    for m in block.conv:
        if isinstance(m, nn.Conv3d):
            nn.init.zeros_(m.weight)
    block.eval()
    x = torch.randn(1, 4, 2, 3, 3)
    torch.testing.assert_close(block(x), nn.functional.leaky_relu(x, 0.1))


def test_unet_cct_returns_both_decoders_in_training_and_main_in_eval():
    model = build_small("unet_cct")
    x = torch.randn(2, 8, 16, 16)
    model.train()
    main, aux = model(x)
    assert main.shape == aux.shape == (2, 2, 16, 16)
    assert not torch.allclose(main, aux)
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 16, 16)
        torch.testing.assert_close(model(x), out)  # eval is deterministic (no feature dropout)


def test_fr_unet_3d_frozen_layers_never_run():
    model = build_small("fr_unet_3d").train()
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)  # would receive a gradient if the forward used it
    model(torch.randn(2, 1, 8, 16, 16)).square().mean().backward()
    assert all(p.grad is None for p in frozen)
