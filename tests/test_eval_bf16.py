"""eval.cpu_bf16: bf16 autocast for evaluation and prediction on CPU, off by default."""
import numpy as np
import pytest
import torch
from torch import nn

from dias_dist.config import Config, EvalConfig, apply_overrides, from_dict, to_dict
from dias_dist.evaluation.evaluate import model_probability_fn


class AutocastProbe(nn.Module):
    """A 'frames' model (N, T, P, P) -> logits (N, 2, P, P) that records the autocast state it ran under."""

    input_layout = "frames"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 3, padding=1)
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return self.conv(x)


@pytest.mark.parametrize("cpu_bf16, amp, expected", [(False, False, False), (True, False, True), (False, True, True)])
def test_cpu_bf16_turns_on_autocast_for_the_sliding_window(cpu_bf16, amp, expected):
    torch.manual_seed(0)
    model = AutocastProbe()
    eval_cfg = EvalConfig(patch_size_px=16, stride_px=8, batch_size=4, cpu_bf16=cpu_bf16)
    image = np.random.default_rng(0).standard_normal((4, 24, 24)).astype(np.float32)
    with model_probability_fn(model, eval_cfg, "cpu", amp=amp) as probability:
        prob = probability(image)
    assert prob.shape == (24, 24) and prob.dtype == np.float32 and np.isfinite(prob).all()
    assert model.seen and set(model.seen) == {expected}


def test_cpu_bf16_is_off_by_default_and_set_from_the_config():
    assert EvalConfig().cpu_bf16 is False
    cfg = from_dict(Config, apply_overrides(to_dict(Config()), ["eval.cpu_bf16=true"]), "test")
    assert cfg.eval.cpu_bf16 is True
