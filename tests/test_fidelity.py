"""The four corrections that bring training back to the paper / reference (docs/DECISIONS.md,
"Fidelity"): Table III backbone, ConvGRU initialisation, SyncBatchNorm, RPST elastic labels."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dias_dist.config import load_config
from dias_dist.data import strong_augment as sa
from dias_dist.engine import sync_batchnorm
from dias_dist.methods import build_method
from dias_dist.models.blocks import init_kaiming
from dias_dist.models.convgru import ConvGRU, ConvGRUReference
from dias_dist.models.vss_net import VSSNet

ROOT = Path(__file__).resolve().parents[1]
WEAK = sorted((ROOT / "configs" / "weak").glob("*.yaml"))


@pytest.mark.parametrize("path", WEAK, ids=[p.stem for p in WEAK])
def test_table3_configs_train_a_unet_and_fr_unet_is_one_override_away(path):
    cfg = load_config(path)
    # each method on the reference script's UNet: DMPLS its UNet-CCT, SSCR UNet_DP (dropout 0.2), the rest UNet
    assert cfg.model.name == {"dmpls": "unet_cct", "sscr": "unet_dp"}.get(path.stem, "unet")
    if path.stem == "sscr":
        assert cfg.model.params == {"dropout": 0.2}
    if path.stem != "dmpls":
        other = load_config(path, ["model.name=fr_unet", "model.params={width: 4}"])
        method = build_method(other.method.name, **other.method.params)
        model = method.build_model(other.model.name, dict(other.model.params))
        assert type(model).__name__ != "UNet"
        assert model(torch.zeros(1, 8, 32, 32)).shape[1] == other.method.params["num_classes"]


def kaiming_std(fan_in: int) -> float:
    return math.sqrt(2.0 / (1 + 0.02 ** 2)) / math.sqrt(fan_in)


def test_vss_net_grus_start_with_the_unsplit_conv_std():
    torch.manual_seed(0)
    width = 16
    unsplit, split = VSSNet(width=width), VSSNet(width=width, gru_init="split")
    grus = [m for m in unsplit.modules() if isinstance(m, ConvGRU)]
    assert len(grus) == 8
    for gru, old in zip(grus, [m for m in split.modules() if isinstance(m, ConvGRU)]):
        C = gru.channels
        for conv in (gru.input_conv, gru.hidden_zr):
            assert conv.weight.std().item() == pytest.approx(kaiming_std(18 * C), rel=0.12)
        # the per-piece init sees fan-in 9C: std sqrt(2) larger
        assert old.input_conv.weight.std().item() == pytest.approx(kaiming_std(9 * C), rel=0.12)
        assert gru.input_conv.bias.abs().max().item() == 0.0


def test_convgru_default_init_matches_an_unsplit_reference_cell():
    torch.manual_seed(1)
    channels = 32
    std = ConvGRU(channels).input_conv.weight.std().item()
    ref = ConvGRUReference(channels).update_gate.weight.std().item()
    split = ConvGRU(channels, init="split").input_conv.weight.std().item()
    assert std == pytest.approx(ref, rel=0.05)
    assert split == pytest.approx(ref * math.sqrt(2), rel=0.05)
    gru = ConvGRU(channels, init="unsplit")
    gru.reset_parameters(init_kaiming)
    assert gru.hidden_n.weight.std().item() == pytest.approx(kaiming_std(18 * channels), rel=0.1)
    with pytest.raises(ValueError, match="init"):
        ConvGRU(4, init="fan")


def bn_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_sync_batchnorm_on_only_with_several_gpu_ranks():
    converted, tag = sync_batchnorm(bn_model(), True, world_size=2, device=torch.device("cuda", 0))
    assert tag == "on" and any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())
    assert set(converted.state_dict()) == set(bn_model().state_dict())  # checkpoints stay interchangeable
    for kwargs, reason in (({"world_size": 1, "device": torch.device("cuda", 0)}, "world size 1"),
                           ({"world_size": 2, "device": torch.device("cpu")}, "needs a GPU")):
        model = bn_model()
        same, tag = sync_batchnorm(model, True, **kwargs)
        assert same is model and reason in tag and tag.startswith("off")
    model = bn_model()
    same, tag = sync_batchnorm(model, False, world_size=4, device=torch.device("cuda", 0))
    assert same is model and "sync_batchnorm=false" in tag
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.InstanceNorm2d(2))
    assert sync_batchnorm(plain, True, world_size=2, device=torch.device("cuda", 0)) == (plain, "off (no BatchNorm)")


def test_ddp_engine_reports_its_batchnorm_choice_as_a_tag():
    from dias_dist.trainer import make_engine

    cfg = load_config(None, ["train.device=cpu"])
    engine = make_engine(cfg, bn_model(), torch.device("cpu"))
    assert engine.tags == {"sync_batchnorm": "off (world size 1)"}
    assert cfg.dist.sync_batchnorm is True


def test_elastic_labels_keep_any_positive_value_as_the_reference():
    label = np.zeros((48, 48), np.uint8)
    label[:, 23] = 1  # a 1-px vessel: bilinear sampling off the grid gives values below 0.5
    rng = np.random.default_rng(0)
    dy, dx = sa.elastic_displacement((48, 48), rng, alpha=60.0, sigma=6.0)
    image = np.zeros((2, 48, 48), np.float32)
    _, ref = sa.warp_with_field(image, {"label": label}, dy, dx)  # default = reference
    _, half = sa.warp_with_field(image, {"label": label}, dy, dx, label_interp="linear")
    assert np.all(ref["label"] >= half["label"])  # "any" contains ">= 0.5"
    assert ref["label"].sum() > half["label"].sum()
    rows_with_vessel = (ref["label"].sum(1) > 0).mean()
    assert rows_with_vessel == 1.0  # the thin vessel is not broken by the warp
