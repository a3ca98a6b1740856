"""eval.softmax: the limited softmax (reference) renormalises a 3-channel head's third channel away;
"full" keeps it. Both equal for 2-channel heads; a bad value is refused by the config."""
import pytest
import torch

from dias_dist.config import load_config
from dias_dist.models import vessel_probability


def test_limited_renormalises_the_third_channel_full_keeps_it():
    # channels: background, vessel, unannotated; equal logits -> limited 1/2, full 1/3
    logits = torch.zeros(1, 3, 2, 2)
    assert torch.allclose(vessel_probability(logits), torch.full((1, 2, 2), 0.5))
    assert torch.allclose(vessel_probability(logits, "full"), torch.full((1, 2, 2), 1 / 3))
    # a vessel pixel whose mass sits on the third channel: over 0.5 only under the limited softmax
    logits = torch.tensor([0.0, 1.0, 3.0]).view(1, 3, 1, 1)
    assert vessel_probability(logits).item() > 0.5 > vessel_probability(logits, "full").item()


def test_two_channel_heads_are_unchanged():
    logits = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(vessel_probability(logits, "full"), vessel_probability(logits))


def test_a_bad_softmax_is_refused(tmp_path):
    with pytest.raises(ValueError, match="softmax"):
        vessel_probability(torch.zeros(1, 3, 1, 1), "half")
    path = tmp_path / "c.yaml"
    path.write_text("eval: {softmax: half}\n")
    with pytest.raises(ValueError, match="eval.softmax.*limited or full"):
        load_config(str(path))
