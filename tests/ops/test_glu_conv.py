"""The FFN's SiLU → depthwise 3×3 → GLU op: on CPU the unfused path against the float64 reference, the int32-safe
chunking of the depthwise call, the shape checks and a float64 gradcheck of the registered op; on the GPU (marked
`gpu`) the Triton forward and backward against float64 on awkward sizes, and a compiled training graph."""

import pytest
import torch

from sana_wm.ops import glu_conv
from sana_wm.ops.glu_conv import naive_silu_depthwise_glu, silu_depthwise_glu


@pytest.mark.parametrize("B, T, H, W, C", [(1, 1, 1, 1, 1), (2, 3, 5, 7, 13), (1, 2, 22, 40, 8)])
def test_unfused_path_matches_the_float64_reference_with_gradients(B, T, H, W, C):
    g = torch.Generator().manual_seed(B * 100 + C)
    h = torch.randn(B, T, H * W, 2 * C, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(2 * C, 1, 3, 3, generator=g)).requires_grad_()
    b = torch.randn(2 * C, generator=g, requires_grad=True)
    out = silu_depthwise_glu(h, w, b, (H, W))
    ref_in = [t.detach().double().requires_grad_() for t in (h, w, b)]
    ref = naive_silu_depthwise_glu(*ref_in, (H, W))
    assert out.shape == (B, T, H * W, C)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-6
    dy = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * dy.float()).sum(), (h, w, b))
    ref_grads = torch.autograd.grad((ref * dy).sum(), ref_in)
    for a, r in zip(grads, ref_grads, strict=True):
        assert ((a.double() - r).norm() / r.norm()).item() < 1e-5


def test_depthwise_call_is_chunked_below_the_int32_limit(monkeypatch):
    """Minute-long clips exceed 2³¹ elements in one depthwise call; chunks of frames give the same result."""
    g = torch.Generator().manual_seed(0)
    h, w, b = torch.randn(2, 5, 12, 8, generator=g), torch.randn(8, 1, 3, 3, generator=g), torch.randn(8, generator=g)
    whole = silu_depthwise_glu(h, w, b, (3, 4))
    calls = []
    conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(glu_conv.F, "conv2d", lambda x, *a, **k: calls.append(x.shape[0]) or conv2d(x, *a, **k))
    monkeypatch.setattr(glu_conv, "MAX_CONV_ELEMENTS", 3 * 12 * 8)  # three frames per call
    torch.testing.assert_close(silu_depthwise_glu(h, w, b, (3, 4)), whole, rtol=0, atol=0)
    assert calls == [3, 3, 3, 1]


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"S = H·W = 3·5"):
        silu_depthwise_glu(torch.randn(1, 1, 12, 8), torch.randn(8, 1, 3, 3), None, (3, 5))
    with pytest.raises(ValueError, match=r"must be \[8, 1, 3, 3\]"):
        silu_depthwise_glu(torch.randn(1, 1, 12, 8), torch.randn(8, 1, 5, 5), None, (3, 4))


@pytest.mark.parametrize("with_bias", [True, False])
def test_registered_op_gradients_pass_float64_gradcheck(with_bias):
    """The op the CUDA path calls (`sana_wm::dwconv_glu`, given a = SiLU(h)); off CUDA its backward op is the
    reference's vector-Jacobian product, and this checks the wiring (bias or none, dtypes) against finite differences."""
    from sana_wm.ops.glu_conv import _dwconv_glu_op

    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 2, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)  # H, W = 2, 3; C = 3
    w = (0.4 * torch.randn(6, 1, 3, 3, generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    args = (a, w, b) if with_bias else (a, w)
    assert torch.autograd.gradcheck(lambda a, w, b=None: _dwconv_glu_op(a, w, b, 2, 3), args)
    out = _dwconv_glu_op(a, w, b, 2, 3)
    ref = glu_conv.naive_dwconv_glu(a, w, b, (2, 3))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def _gpu_inputs(B, T, H, W, C, dtype, with_bias, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s, sd=1.0: (sd * torch.randn(*s, device="cuda", generator=g, dtype=torch.float64)).to(dtype)
    h = r(B, T, H * W, 2 * C).requires_grad_()
    w = r(2 * C, 1, 3, 3, sd=0.3).requires_grad_()
    b = r(2 * C).requires_grad_() if with_bias else None
    return h, w, b


@pytest.mark.gpu
@pytest.mark.parametrize("B, T, H, W, C, with_bias", [(1, 1, 1, 1, 1, True), (2, 3, 5, 7, 13, False),
                                                       (1, 2, 22, 40, 200, True), (2, 2, 9, 31, 3360, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_forward_and_backward_match_float64(B, T, H, W, C, with_bias, dtype):
    """The Triton conv + GLU and its backward (through the public function, SiLU included) against float64, on awkward
    sizes (one-pixel frames, odd widths, partial tiles) and the model's channel count; bf16 is held to the error of
    the composite path in bf16 (cuDNN + autograd, the same rounding points)."""
    h, w, b = _gpu_inputs(B, T, H, W, C, dtype, with_bias, seed=H * W + C)
    assert glu_conv._use_triton(h)
    params = [t for t in (h, w, b) if t is not None]
    ref_in = [t.detach().double().requires_grad_() for t in params]
    ref = naive_silu_depthwise_glu(ref_in[0], ref_in[1], ref_in[2] if with_bias else None, (H, W))
    out = silu_depthwise_glu(h, w, b, (H, W))
    prev = glu_conv.set_fused_glu_conv(False)
    try:
        comp = silu_depthwise_glu(h, w, b, (H, W))  # the composite path, same dtype
        dy = torch.randn(out.shape, device="cuda", dtype=torch.float64)
        comp_grads = torch.autograd.grad(comp, params, dy.to(dtype))
    finally:
        glu_conv.set_fused_glu_conv(prev)
    grads = torch.autograd.grad(out, params, dy.to(dtype))
    ref_grads = torch.autograd.grad(ref, ref_in, dy)
    rel = lambda a, r: ((a.double() - r).norm() / r.norm()).item()
    slack = 1e-6 if dtype == torch.float32 else 1e-3
    assert rel(out, ref) <= 1.05 * rel(comp, ref) + slack
    for name, a, c, r in zip(("dh", "dweight", "dbias")[: len(params)], grads, comp_grads, ref_grads, strict=True):
        assert a.dtype == c.dtype and a.shape == c.shape, name
        assert rel(a, r) <= 1.05 * rel(c, r) + slack, (name, rel(a, r), rel(c, r))


@pytest.mark.gpu
def test_triton_path_trains_under_torch_compile_fullgraph():
    """The op in a compiled full graph (fake-tensor shapes, the backward op) gives eager's output and gradients."""
    h, w, b = _gpu_inputs(1, 3, 6, 10, 40, torch.bfloat16, True, seed=7)

    def step(h, w, b):
        return (silu_depthwise_glu(h, w, b, (6, 10)).float() ** 2).sum()

    eager = torch.autograd.grad(step(h, w, b), (h, w, b))
    compiled = torch.compile(step, fullgraph=True)
    got = torch.autograd.grad(compiled(h, w, b), (h, w, b))
    for a, e in zip(got, eager, strict=True):  # bf16: Inductor's SiLU rounds once where eager rounds per op
        assert ((a.double() - e.double()).norm() / e.double().norm()).item() < 1e-2
