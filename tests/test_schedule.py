"""Schedule, parameter groups and the DIAS CE + soft Dice loss."""
import math

import pytest
import torch
from torch import nn

from dias_dist.config import load_config
from dias_dist.losses import ce_dice_loss
from dias_dist.methods import build_method
from dias_dist.schedule import build_optimizer, cosine_warmup_lr, param_groups


def test_warmup_is_linear_then_cosine_to_min():
    kw = dict(base_lr=5e-4, total_steps=1000, warmup_steps=100, warmup_lr=5e-7, min_lr=5e-6)
    assert cosine_warmup_lr(0, **kw) == pytest.approx(5e-7)
    assert cosine_warmup_lr(50, **kw) == pytest.approx(5e-7 + 0.5 * (5e-4 - 5e-7))
    # cosine span starts at step 0 (timm: no warm-up prefix), so at step 100 it is already below base
    expected = 5e-6 + 0.5 * (5e-4 - 5e-6) * (1 + math.cos(math.pi * 0.1))
    assert cosine_warmup_lr(100, **kw) == pytest.approx(expected)
    assert cosine_warmup_lr(500, **kw) == pytest.approx(5e-6 + 0.5 * (5e-4 - 5e-6))
    assert cosine_warmup_lr(1000, **kw) == pytest.approx(5e-6)
    assert cosine_warmup_lr(5000, **kw) == pytest.approx(5e-6)


def test_no_weight_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1, bias=False))
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 3  # conv bias, bn weight, bn bias


def test_optimizer_follows_the_schedule_per_step():
    cfg = load_config(None, ["train.epochs=4", "train.steps_per_epoch=5", "optim.warmup_epochs=1"])
    model = nn.Linear(3, 2)
    optimizer, schedule = build_optimizer(model, cfg.optim, epochs=4, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(5e-7)
    assert max(lrs) == lrs[5]  # first step after the 5-step warm-up
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))
    assert optimizer.param_groups[1]["lr"] == optimizer.param_groups[0]["lr"]
    state = schedule.state_dict()
    _, fresh = build_optimizer(nn.Linear(3, 2), cfg.optim, epochs=4, steps_per_epoch=5)
    fresh.load_state_dict(state)
    assert fresh.lr() == schedule.lr()


def test_ce_dice_matches_a_direct_computation():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 5, 5)
    target = torch.randint(0, 2, (3, 5, 5))
    out = ce_dice_loss(logits, target)
    p = torch.softmax(logits, 1)[:, 1]
    y = target.float()
    tp, fp, fn = (p * y).sum(), (p * (1 - y)).sum(), ((1 - p) * y).sum()
    dc = (2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5 + 1e-8)
    assert out["dice"].item() == pytest.approx(-dc.item(), rel=1e-6)
    assert out["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)
    assert out["total"].item() == pytest.approx(out["ce"].item() + out["dice"].item(), rel=1e-6)
    perfect = ce_dice_loss(torch.stack([1 - y, y], 1) * 50, target)
    assert perfect["dice"].item() == pytest.approx(-1.0, abs=1e-4)


def test_supervised_method_returns_named_losses_and_rejects_bad_shapes():
    method = build_method("supervised")
    model = nn.Conv2d(8, 2, 1)
    batch = {"image": torch.randn(2, 8, 6, 6), "target": torch.randint(0, 2, (2, 6, 6))}
    losses = method.losses(model, batch)
    assert set(losses) == {"ce", "dice", "total"} and losses["total"].requires_grad
    with pytest.raises(ValueError, match="ce_dice_loss"):
        method.losses(model, {"image": batch["image"], "target": batch["target"][:, :3]})
    with pytest.raises(ValueError, match="no parameter"):
        build_method("supervised", bogus=1)
