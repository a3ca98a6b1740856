"""Fused ConvGRU Triton kernels against the exact PyTorch math.

On CPU the kernels run under the Triton interpreter (conftest sets TRITON_INTERPRET=1 before triton
is imported); tensors stay tiny and BLOCK large so that each launch is a handful of programs.
GPU tests (compiled kernels) run with ``TRITON_INTERPRET=0 pytest -m gpu tests/test_kernels.py``.
"""
import pytest
import torch

pytest.importorskip("triton")

from dias_dist.kernels import convgru_triton as triton_kernels  # noqa: E402
from dias_dist.models import build_model, convgru  # noqa: E402


def reference_gates(x_zr, h_zr, h):
    """The formulas of ARCHITECTURE.md, written out independently of both implementations."""
    channels = h.shape[1]
    pre = x_zr + h_zr
    z = torch.sigmoid(pre[:, :channels])
    r = torch.sigmoid(pre[:, channels:])
    return z, r * h


def reference_update(x_n, h_n, z, h):
    return (1 - z) * torch.tanh(x_n + h_n) + z * h


def torch_impl():
    """The PyTorch path of dias_dist.models.convgru: (gates, update)."""
    return convgru.IMPLS["torch"]


def gates_inputs(shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    make = lambda *s: (2 * torch.randn(*s, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_()  # noqa: E731
    return [make(b, 2 * c, h, w), make(b, 2 * c, h, w), make(b, c, h, w)]


def update_inputs(shape, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x_n, h_n, h = [(2 * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype) for _ in range(3)]
    z = torch.rand(*shape, generator=gen, dtype=torch.float64).to(dtype)
    return [t.requires_grad_() for t in (x_n, h_n, z, h)]


def outputs_and_grads(fn, inputs, seed=2):
    """Run fn, contract every output with a fixed random cotangent, return (outputs, input grads)."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype)).sum()
               for o in outs)
    return [o.detach() for o in outs], torch.autograd.grad(loss, inputs)


# Odd sizes leave masked tails; (2, 5, 61, 59) has C*H*W > BLOCK, so each image spans two programs.
SHAPES = [(1, 1, 1, 1), (1, 3, 5, 7), (3, 2, 9, 4), (2, 5, 61, 59)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gates_forward_and_grads_match_torch(shape):
    torch_gates, _ = torch_impl()
    inputs = gates_inputs(shape)
    outs, grads = outputs_and_grads(triton_kernels.gru_gates, inputs)
    ref_outs, ref_grads = outputs_and_grads(torch_gates, inputs)
    for got, want in zip(outs + list(grads), ref_outs + list(ref_grads)):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_update_forward_and_grads_match_torch(shape):
    _, torch_update = torch_impl()
    inputs = update_inputs(shape)
    outs, grads = outputs_and_grads(triton_kernels.gru_update, inputs)
    ref_outs, ref_grads = outputs_and_grads(torch_update, inputs)
    for got, want in zip(outs + list(grads), ref_outs + list(ref_grads)):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_reference_formulas_agree_with_torch_path():
    """Guards the comparison itself: the PyTorch path computes the documented formulas."""
    torch_gates, torch_update = torch_impl()
    g_in, u_in = gates_inputs((2, 3, 4, 5)), update_inputs((2, 3, 4, 5))
    for got, want in zip(torch_gates(*g_in), reference_gates(*g_in)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch_update(*u_in), reference_update(*u_in))


def test_batch_slices_and_channels_last_inputs():
    """Frame slices of the batched input convolution (free batch stride) and channels-last tensors
    (copied to contiguous) give the same result as contiguous inputs."""
    b, c, h, w, frames = 2, 3, 5, 6, 4
    gen = torch.Generator().manual_seed(3)
    x_all = torch.randn(b, frames, 3 * c, h, w, generator=gen)  # all frames' x_z, x_r, x_n
    h_zr = torch.randn(b, 2 * c, h, w, generator=gen).to(memory_format=torch.channels_last)
    seq = torch.randn(b, frames, c, h, w, generator=gen)
    x_zr, x_n, state = x_all[:, 2, : 2 * c], x_all[:, 2, 2 * c:], seq[:, 0]
    assert not x_zr.is_contiguous() and not state.is_contiguous()
    z, rh = triton_kernels.gru_gates(x_zr, h_zr, state)
    z_ref, rh_ref = reference_gates(x_zr, h_zr, state)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(rh, rh_ref)
    h_n = torch.randn(b, c, h, w, generator=gen)
    torch.testing.assert_close(triton_kernels.gru_update(x_n, h_n, z, state),
                               reference_update(x_n, h_n, z_ref, state))


def test_gradcheck_torch_path_float64():
    torch_gates, torch_update = torch_impl()
    assert torch.autograd.gradcheck(torch_gates, gates_inputs((1, 2, 3, 2), torch.float64))
    assert torch.autograd.gradcheck(torch_update, update_inputs((1, 2, 3, 2), torch.float64))


def test_gradcheck_triton_kernels_float64():
    """The kernels compute in float64 for float64 inputs, so their hand-written backward is checked
    against finite differences too (not only against autograd of the PyTorch path)."""
    assert torch.autograd.gradcheck(triton_kernels.gru_gates, gates_inputs((1, 2, 2, 2), torch.float64))
    assert torch.autograd.gradcheck(triton_kernels.gru_update, update_inputs((1, 2, 2, 2), torch.float64))


def test_low_precision_and_mixed_dtypes():
    """bf16 in -> bf16 out within one bf16 ulp; bf16 conv outputs with an fp32 state promote to fp32
    (as eager PyTorch does) and every gradient comes back in its input's dtype."""
    torch_gates, torch_update = torch_impl()
    inputs = gates_inputs((2, 3, 4, 5), torch.bfloat16)
    for got, want in zip(triton_kernels.gru_gates(*inputs), torch_gates(*inputs)):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), rtol=1.6e-2, atol=1e-2)
    x_n, h_n, z, h = update_inputs((2, 3, 4, 5))
    mixed = [x_n.detach().bfloat16().requires_grad_(), h_n.detach().bfloat16().requires_grad_(), z, h]
    outs, grads = outputs_and_grads(triton_kernels.gru_update, mixed)
    ref_outs, ref_grads = outputs_and_grads(torch_update, mixed)
    assert outs[0].dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    for got, want in zip(outs + list(grads), ref_outs + list(ref_grads)):
        torch.testing.assert_close(got.float(), want.float(), rtol=1.6e-2, atol=1e-2)


def test_shape_mismatch_is_a_value_error():
    x_zr, h_zr, h = gates_inputs((1, 2, 3, 3))
    with pytest.raises(ValueError, match="gru_gates: x_zr"):
        triton_kernels.gru_gates(x_zr[:, :3], h_zr, h)
    x_n, h_n, z, h = update_inputs((1, 2, 3, 3))
    with pytest.raises(ValueError, match="gru_update: z"):
        triton_kernels.gru_update(x_n, h_n, z[:, :1], h)


# ---------------------------------------------------------------------------------------------
# compiled kernels on a GPU (run with TRITON_INTERPRET=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_kernels_on_cuda_match_torch(dtype):
    if triton_kernels.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1: run GPU tests with TRITON_INTERPRET=0")
    torch_gates, torch_update = torch_impl()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
    for make, fused, ref in ((gates_inputs, triton_kernels.gru_gates, torch_gates),
                             (update_inputs, triton_kernels.gru_update, torch_update)):
        inputs = [t.detach().cuda().requires_grad_() for t in make((64, 32, 33, 31), dtype)]
        outs, grads = outputs_and_grads(fused, inputs)
        ref_outs, ref_grads = outputs_and_grads(ref, inputs)
        for got, want in zip(outs + list(grads), ref_outs + list(ref_grads)):
            torch.testing.assert_close(got.float(), want.float(), **tol)


# ---------------------------------------------------------------------------------------------
# whole modules: impl "triton" (interpreted on CPU) equals impl "torch"


def assert_modules_agree(make_module, inputs, tol):
    """Same weights, impl 'torch' vs 'triton': outputs, input grads and parameter grads agree."""
    results = {}
    for impl in ("torch", "triton"):
        torch.manual_seed(0)
        module = make_module(impl).eval()  # eval: no dropout, so both runs see the same graph
        outs = module(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        gen = torch.Generator().manual_seed(5)
        loss = sum((o * torch.randn(o.shape, generator=gen).to(o.device)).sum() for o in outs)
        wrt = [t for t in list(inputs) + list(module.parameters()) if t.requires_grad]
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)  # VSS-Net keeps unused convs
        results[impl] = [o.detach() for o in outs] + [g for g in grads if g is not None]
    assert len(results["triton"]) == len(results["torch"]) > 1
    for got, want in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(got, want, **tol)


def test_convgru_triton_equals_torch():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 4, 6, 5, generator=gen, requires_grad=True)  # (B, T, C, H, W)
    h0 = torch.randn(2, 4, 6, 5, generator=gen, requires_grad=True)
    for reverse in (False, True):
        assert_modules_agree(lambda impl: _ReverseWrapper(convgru.ConvGRU(4, impl=impl), reverse), (x, h0),
                             dict(rtol=1e-5, atol=1e-5))


def test_biconvgru_triton_equals_torch():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 2, 8, 6, generator=gen, requires_grad=True)
    raw = torch.randn(2, 3, 1, 16, 12, generator=gen)
    assert_modules_agree(lambda impl: convgru.BiConvGRU(2, 4, downsample=True, impl=impl), (x, raw),
                         dict(rtol=1e-5, atol=1e-5))


class _ReverseWrapper(torch.nn.Module):
    def __init__(self, gru, reverse):
        super().__init__()
        self.gru, self.reverse = gru, reverse

    def forward(self, x, h0):
        return self.gru(x, h0, reverse=self.reverse)


def test_vss_net_triton_equals_torch():
    """The whole model (tiny width, 4 frames, one 16x16 patch) with the interpreted kernels."""
    x = torch.randn(1, 1, 4, 16, 16, generator=torch.Generator().manual_seed(8), requires_grad=True)
    # ~30 layers amplify the last-bit differences of the kernels' tanh (2*sigmoid(2x)-1) to ~1e-5.
    assert_modules_agree(lambda impl: build_model("vss_net", num_frames=4, width=4, gru_impl=impl), (x,),
                         dict(rtol=1e-3, atol=1e-4))


def test_benchmark_writes_json_with_device_and_checked_outputs(tmp_path, monkeypatch):
    """benchmarks/convgru.py end to end on tiny sizes: eager vs interpreted fused layer outputs agree,
    and without --allow-interpreted the fused variant is recorded as not applicable on CPU."""
    import importlib.util as util
    import json
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # as when run as a script: its folder is on sys.path
    spec = util.spec_from_file_location("bench_convgru", benchmarks / "convgru.py")
    bench = util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = ["--device", "cpu", "--layer-batch", "1", "--layer-channels", "2", "--layer-size", "4", "--frames", "3",
            "--warmup", "0", "--iters", "1", "--workloads", "convgru_layer"]
    out = tmp_path / "bench.json"
    assert bench.main(tiny + ["--variants", "eager", "fused", "--allow-interpreted", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"].startswith("CPU") and report["torch"] == torch.__version__
    layer = report["workloads"]["convgru_layer"]
    assert layer["eager"]["status"] == layer["fused"]["status"] == "ok"
    assert layer["fused"]["max_abs_diff_vs_first"] < 1e-5 and layer["fused"]["median_ms"] > 0
    assert bench.main(tiny + ["--variants", "eager", "fused", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["workloads"]["convgru_layer"]["fused"]["status"].startswith("not applicable")


@pytest.mark.gpu
def test_vss_net_on_cuda_fused_equals_torch_and_auto_picks_triton():
    if triton_kernels.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1: run GPU tests with TRITON_INTERPRET=0")
    assert convgru.resolve_impl("auto", torch.device("cuda")) == "triton"
    x = torch.randn(4, 1, 8, 64, 64, device="cuda", requires_grad=True)
    assert_modules_agree(lambda impl: build_model("vss_net", width=8, gru_impl=impl).cuda(), (x,),
                         dict(rtol=1e-3, atol=1e-4))
