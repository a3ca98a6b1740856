"""eval.compile: the evaluation/prediction forward through torch.compile, off by default; equal to
eager to float tolerance, and a failed compilation falls back to eager with a warning."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dias_dist.config import Config, EvalConfig, apply_overrides, from_dict, to_dict
from dias_dist.evaluation import tiling
from dias_dist.evaluation.evaluate import model_probability_fn
from dias_dist.models import build_model


class TinyFramesNet(nn.Module):
    """A 'frames' model (N, T, P, P) -> logits (N, 2, P, P): small enough for inductor to compile in
    seconds on the CI's 2 cores (a real network's compilation is measured in benchmarks/cpu_trials.py)."""

    input_layout = "frames"

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.1),
                                  nn.Conv2d(8, 2, 1))

    def forward(self, x):
        return self.body(x)


def _probability(model, compile_forward: bool) -> np.ndarray:
    eval_cfg = EvalConfig(patch_size_px=32, stride_px=16, batch_size=4, compile=compile_forward)
    image = np.random.default_rng(0).standard_normal((4, 48, 48)).astype(np.float32)
    with model_probability_fn(model, eval_cfg, "cpu") as probability:
        return probability(image)


@pytest.mark.slow
def test_compiled_forward_equals_eager():
    torch.manual_seed(0)
    model = TinyFramesNet()
    eager = _probability(model, False)
    with _no_compile_warning():
        compiled = _probability(model, True)
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-5)


class _no_compile_warning:
    """Fails the test if the compiled path fell back to eager (its warning), so that 'equal' above
    really compares inductor's output with eager's."""

    def __enter__(self):
        import warnings
        self._catch = warnings.catch_warnings(record=True)
        self._seen = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        fallbacks = [w for w in self._seen if "torch.compile failed" in str(w.message)]
        assert not fallbacks, fallbacks[0].message


def test_a_failed_compilation_warns_and_falls_back_to_eager(monkeypatch):
    attempts = []

    def broken_compile(model, **kwargs):
        def run(x):
            attempts.append(1)
            raise RuntimeError("no C++ compiler here")
        return run

    monkeypatch.setattr(tiling.torch, "compile", broken_compile)
    torch.manual_seed(0)
    model = build_model("unet", width=4, num_frames=4)
    eager = _probability(model, False)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler here\)"):
        fallback = _probability(model, True)
    np.testing.assert_array_equal(fallback, eager)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next evaluation (validation, series) neither retries nor warns
        np.testing.assert_array_equal(_probability(model, True), eager)
    assert len(attempts) == 1


def test_compile_is_off_by_default_and_set_from_the_config():
    assert EvalConfig().compile is False
    cfg = from_dict(Config, apply_overrides(to_dict(Config()), ["eval.compile=true"]), "test")
    assert cfg.eval.compile is True
