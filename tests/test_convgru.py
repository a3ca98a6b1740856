"""ConvGRU: batched input path == the reference's per-step cell, dispatch of the pointwise functions."""
import pytest
import torch

from dias_dist.models import convgru
from dias_dist.models.convgru import BiConvGRU, ConvGRU, ConvGRUReference, gru_gates, gru_update


def _pair(channels=3, seed=0):
    torch.manual_seed(seed)
    reference = ConvGRUReference(channels).double()
    batched = ConvGRU(channels, impl="torch").double()
    batched.load_reference_weights(reference)
    return reference, batched


def test_parameter_count_equals_reference_cell():
    reference, batched = _pair(channels=32)
    count = sum(p.numel() for p in batched.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) == 3 * (2 * 32 * 32 * 9 + 32) == 55_392


@pytest.mark.parametrize("reverse", [False, True])
def test_batched_matches_per_step_reference(reverse):
    reference, batched = _pair()
    x = torch.randn(2, 5, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    h0 = x[:, -1 if reverse else 0]
    out_ref = reference(x, h0, reverse=reverse)
    out = batched(x, h0, reverse=reverse)
    assert out.shape == (2, 5, 3, 8, 8)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    grad_ref, = torch.autograd.grad(out_ref.square().sum(), x)
    grad, = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


def test_direction_matters_and_state_starts_from_h0():
    _, batched = _pair()
    x = torch.randn(1, 4, 3, 6, 6, dtype=torch.float64)
    forward = batched(x, x[:, 0])
    backward = batched(x, x[:, -1], reverse=True)
    assert not torch.allclose(forward, backward)
    # first forward step = one cell step from h0 = x_0 on input x_0
    one_step = batched(x[:, :1], x[:, 0])
    torch.testing.assert_close(forward[:, 0], one_step[:, 0])
    # last backward output (time index T-1) is the first backward step
    torch.testing.assert_close(backward[:, -1], batched(x[:, -1:], x[:, -1])[:, 0])


def test_input_conv_is_one_call_hidden_path_stepped():
    _, batched = _pair()
    calls = {"input": 0, "hidden": 0}
    batched.input_conv.register_forward_hook(lambda *a: calls.__setitem__("input", calls["input"] + 1))
    batched.hidden_zr.register_forward_hook(lambda *a: calls.__setitem__("hidden", calls["hidden"] + 1))
    x = torch.randn(2, 6, 3, 8, 8, dtype=torch.float64)
    batched(x, x[:, 0])
    assert calls == {"input": 1, "hidden": 6}


def test_pointwise_functions():
    x_zr, h_zr = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    h, x_n, h_n = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)
    z, rh = gru_gates(x_zr, h_zr, h)
    torch.testing.assert_close(z, torch.sigmoid(x_zr[:, :2] + h_zr[:, :2]))
    torch.testing.assert_close(rh, torch.sigmoid(x_zr[:, 2:] + h_zr[:, 2:]) * h)
    torch.testing.assert_close(gru_update(x_n, h_n, z, h), (1 - z) * torch.tanh(x_n + h_n) + z * h)


def test_dispatch_uses_the_registered_functions(monkeypatch):
    calls = []

    def spy_gates(*args):
        calls.append("gates")
        return gru_gates(*args)

    def spy_update(*args):
        calls.append("update")
        return gru_update(*args)

    monkeypatch.setitem(convgru.IMPLS, "triton", (spy_gates, spy_update))
    reference, batched = _pair()
    x = torch.randn(1, 3, 3, 4, 4, dtype=torch.float64)
    expected = batched(x, x[:, 0])
    assert calls == []
    batched.impl = "triton"
    torch.testing.assert_close(batched(x, x[:, 0]), expected)
    assert calls == ["gates", "update"] * 3
    # "auto" on CPU tensors resolves to the PyTorch functions; set_impl changes the default
    assert convgru.resolve_impl("auto", torch.device("cpu")) == "torch"
    monkeypatch.setattr(convgru, "_default_impl", "auto")
    convgru.set_impl("triton")
    assert convgru.get_impl() == "triton"
    batched.impl = "auto"
    calls.clear()
    batched(x, x[:, 0])
    assert calls == ["gates", "update"] * 3


def test_bad_impl_names_are_value_errors():
    with pytest.raises(ValueError, match="unknown ConvGRU implementation 'cuda'"):
        convgru.set_impl("cuda")
    with pytest.raises(ValueError, match="unknown ConvGRU implementation"):
        ConvGRU(4, impl="fast")


def test_biconvgru_shapes_fusion_and_max_pool():
    torch.manual_seed(0)
    stage = BiConvGRU(4, 8, downsample=True, dropout=0.0, impl="torch").eval()
    x = torch.randn(2, 5, 4, 16, 16)
    raw = torch.randn(2, 5, 1, 16, 16)
    y, pooled = stage(x, raw)
    assert y.shape == (2, 5, 8, 8, 8) and pooled.shape == (2, 8, 8, 8)
    torch.testing.assert_close(pooled, y.max(dim=1).values)
    assert y.abs().max() <= 1  # tanh fusion
    # 2x2 stride-2 conv over [raw copies | features] (no bias) + 2 cells + fusion conv
    assert sum(p.numel() for p in stage.parameters()) == 8 * 8 * 4 + 2 * 3 * (16 * 8 * 9 + 8) + 16 * 8 * 9 + 8
    with pytest.raises(ValueError, match="raw frames"):
        stage(x)


@pytest.mark.parametrize("grad_enabled", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_every_arrangement_matches_the_reference_cell_in_both_modes(grad_enabled, reverse):
    """"auto", "batched", "stepped" and "split" compute the same cell (training and no-grad inference)."""
    reference, cell = _pair(channels=4, seed=1)
    x = torch.randn(2, 5, 4, 8, 8, dtype=torch.float64, requires_grad=grad_enabled)
    h0 = x[:, -1 if reverse else 0]
    with torch.set_grad_enabled(grad_enabled):
        expected = reference(x, h0, reverse=reverse)
        outputs = {}
        for name in convgru.ARRANGEMENT_CHOICES:
            cell.arrangement = name
            outputs[name] = cell(x, h0, reverse=reverse)
    for name, out in outputs.items():
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
    if grad_enabled:  # the parameter gradients agree as well (stepped builds its weights by concatenation)
        grads = {}
        for name, out in outputs.items():
            grads[name] = torch.autograd.grad(out.square().sum(), [x, *cell.parameters()])
        for name in grads:
            for got, want in zip(grads[name], grads["batched"]):
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_arrangements_agree_in_float32_within_float_tolerance():
    torch.manual_seed(3)
    cell = ConvGRU(16, impl="torch")
    x = torch.randn(3, 6, 16, 12, 12)
    with torch.no_grad():
        cell.arrangement = "batched"
        batched = cell(x, x[:, 0])
        cell.arrangement = "stepped"
        stepped = cell(x, x[:, 0])
        cell.arrangement = "split"
        split = cell(x, x[:, 0])
    torch.testing.assert_close(stepped, batched, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split, batched, rtol=1e-5, atol=1e-5)


def test_auto_arrangement_follows_the_table_per_device_and_mode(monkeypatch):
    _, cell = _pair()
    calls = []
    cell.input_conv.register_forward_hook(lambda *a: calls.append("input_conv"))
    x = torch.randn(1, 3, 3, 4, 4, dtype=torch.float64)
    monkeypatch.setattr(convgru, "PREFERRED_ARRANGEMENT", {("cpu", True): "batched", ("cpu", False): "stepped"})
    cell(x, x[:, 0])
    assert calls == ["input_conv"]  # batched: one input convolution over all frames
    with torch.no_grad():
        cell(x, x[:, 0])
    assert calls == ["input_conv"]  # stepped: the weights are used directly, per step
    monkeypatch.setattr(convgru, "PREFERRED_ARRANGEMENT", {("cpu", False): "batched"})
    with torch.no_grad():
        cell(x, x[:, 0])
    assert calls == ["input_conv"] * 2
    assert convgru.resolve_arrangement("auto", torch.device("cuda"), False) == "batched"  # not listed
    assert convgru.resolve_arrangement("stepped", torch.device("cpu"), True) == "stepped"  # fixed wins


def test_bad_arrangement_is_a_value_error():
    _, cell = _pair()
    cell.arrangement = "diagonal"
    x = torch.randn(1, 2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown ConvGRU arrangement 'diagonal'"):
        cell(x, x[:, 0])
