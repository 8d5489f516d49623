"""The camera prologue op (RMSNorm → ReLU → scale, UCPE, RMS clamp on or off, key norm ratio): float64 gradcheck of
the op on CPU through both outputs (its written-out adjoint), the transform's meaning, the clamp switched off, bad
shapes; on the GPU (marked `gpu`) the Triton forward and backward, clamp on and off, against float64 on awkward sizes,
and a compiled training graph."""

import pytest
import torch

from sana_wm.ops.ucpe import naive_ucpe_clamp, ucpe, ucpe_clamp


def _inputs(B, N, Hd, D, dtype, device="cpu", seed=0, with_norm=True, mat_scale=0.9):
    g = torch.Generator(device=device).manual_seed(seed)
    C = Hd * D
    fused = torch.randn(B, N, 3 * C, device=device, generator=g, dtype=torch.float64) + 0.2
    x = fused.to(dtype)[..., C : 2 * C]  # strided like a slice of a fused projection
    mat = (mat_scale * torch.randn(B, N, 4, 4, device=device, generator=g, dtype=torch.float64)).to(dtype)
    ang = 6 * torch.rand(N, D // 4, device=device, generator=g, dtype=torch.float64)
    w = (1 + 0.3 * torch.randn(C, device=device, generator=g, dtype=torch.float64)).to(dtype) if with_norm else None
    return x, mat, ang.cos().float(), ang.sin().float(), w


@pytest.mark.parametrize("with_norm, relu, scale, downscale", [
    (True, True, 0.4, True), (True, False, 1.0, True), (False, False, 1.0, True), (True, True, 0.4, False),
    (False, False, 1.0, False)])
def test_op_gradients_pass_float64_gradcheck_through_both_outputs(with_norm, relu, scale, downscale):
    x, mat, cos, sin, w = _inputs(2, 3, 2, 16, torch.float64, with_norm=with_norm, mat_scale=0.45)
    x = x.clone().requires_grad_()
    xu, ratio = ucpe_clamp(x, mat, cos, sin, 2, w, relu, scale, downscale=downscale)
    if downscale:  # both branches of the clamp among the heads: clamped back (ratio 1) and left as is (< 1)
        assert (ratio < 1 - 1e-3).any() and ((ratio - 1).abs() < 1e-4).any()
    else:  # no clamp: heads the transform inflated keep their inflation
        assert (ratio > 1 + 1e-3).any() and (ratio < 1 - 1e-3).any()
    args = (x, w.clone().requires_grad_()) if with_norm else (x,)

    # The registered op: off CUDA its backward is the adjoint written out in naive.py, the Triton backward's recipe
    # (the public function runs the composition there, which autograd differentiates by itself).
    from sana_wm.ops.ucpe import _ucpe_clamp_op

    def f(x, w=None):
        return _ucpe_clamp_op(x, mat, cos, sin, w, relu, scale, 1e-5, 2, downscale)

    assert torch.autograd.gradcheck(f, args)


def test_ucpe_is_a_rotation_and_a_4x4_transform_and_the_clamp_never_inflates():
    x, mat, cos, sin, _ = _inputs(1, 6, 3, 24, torch.float64, with_norm=False)
    heads = x.unflatten(-1, (3, 24))
    u = ucpe(heads, mat, cos, sin)
    # Geometry half: the per-token matrix on each group of 4.
    torch.testing.assert_close(u[..., :12].unflatten(-1, (3, 4)),
                               torch.einsum("bnij,bnhgj->bnhgi", mat, heads[..., :12].unflatten(-1, (3, 4))))
    # RoPE half: a rotation (norms kept); the inverse rotation undoes it.
    torch.testing.assert_close(u[..., 12:].norm(dim=-1), heads[..., 12:].norm(dim=-1))
    back = ucpe(u[..., 12:].contiguous().unsqueeze(-2).expand(-1, -1, -1, 2, -1).flatten(-2), torch.eye(4).expand(
        1, 6, 4, 4).double(), cos, sin, inverse_rope=True)[..., 12:]
    torch.testing.assert_close(back, heads[..., 12:])
    xu, ratio = ucpe_clamp(x, mat, cos, sin, 3)
    rms = lambda t: t.square().mean(-1)
    assert (rms(xu.unflatten(-1, (3, 24))) <= rms(heads) + 1e-6).all()  # up to the clamp's ε
    torch.testing.assert_close(ratio, xu.unflatten(-1, (3, 24)).square().sum(-1) / heads.square().sum(-1))


def test_without_the_clamp_the_op_is_the_plain_transform_of_the_prologue():
    x, mat, cos, sin, w = _inputs(2, 5, 3, 16, torch.float64, mat_scale=0.45)
    heads = lambda t: t.unflatten(-1, (3, 16))
    a = torch.relu(x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5) * w) * 0.3
    u = ucpe(heads(a), mat, cos, sin)
    xu, ratio = ucpe_clamp(x, mat, cos, sin, 3, w, True, 0.3, downscale=False)
    torch.testing.assert_close(heads(xu), u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ratio, u.square().sum(-1) / heads(a).square().sum(-1), rtol=1e-12, atol=0)
    clamped, clamped_ratio = ucpe_clamp(x, mat, cos, sin, 3, w, True, 0.3)
    inflated = ratio > 1  # only the heads the transform inflated differ, and the clamp brings their ratio to 1
    assert inflated.any() and (~inflated).any()
    torch.testing.assert_close(heads(clamped)[~inflated], u[~inflated], rtol=1e-12, atol=1e-12)
    assert (heads(clamped)[inflated] - u[inflated]).abs().amax() > 0.1 * u[inflated].abs().amax()
    torch.testing.assert_close(clamped_ratio[inflated], torch.ones_like(clamped_ratio[inflated]), rtol=1e-5, atol=0)


def test_bad_shapes_are_named():
    x, mat, cos, sin, w = _inputs(1, 4, 2, 16, torch.float32)
    with pytest.raises(ValueError, match=r"mat \[1, 3, 4, 4\]"):
        ucpe_clamp(x, mat[:, :3], cos, sin, 2, w)
    with pytest.raises(ValueError, match=r"num_heads 3"):
        ucpe_clamp(x, mat, cos, sin, 3, w)
    with pytest.raises(ValueError, match=r"weight \[31\]"):
        ucpe_clamp(x, mat, cos, sin, 2, w[:31])


@pytest.mark.gpu
@pytest.mark.parametrize("shape, with_norm, relu, scale", [
    ((1, 5, 2, 16), True, True, 0.3), ((2, 37, 3, 40), False, False, 1.0), ((1, 881, 20, 112), True, True, 0.01),
    ((2, 53, 20, 112), True, False, 1.0), ((1, 7, 5, 8), True, True, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("downscale", [True, False])
def test_triton_forward_and_backward_match_float64(shape, with_norm, relu, scale, dtype, downscale):
    from sana_wm.ops.ucpe import _use_triton

    B, N, Hd, D = shape
    x, mat, cos, sin, w = _inputs(B, N, Hd, D, dtype, device="cuda", seed=N + D, with_norm=with_norm, mat_scale=0.5)
    assert _use_triton(x)
    x.requires_grad_()
    if w is not None:
        w.requires_grad_()
    xu, ratio = ucpe_clamp(x, mat, cos, sin, Hd, w, relu, scale, downscale=downscale)
    xd = x.detach().double().requires_grad_()
    wd = None if w is None else w.detach().double().requires_grad_()
    rxu, rratio = naive_ucpe_clamp(xd, mat.double(), cos, sin, wd, relu, scale, 1e-5, Hd, downscale)
    # The same composition in the working dtype has the same roundings; the kernel must be no less accurate.
    cxu, cratio = naive_ucpe_clamp(x.detach(), mat, cos, sin, None if w is None else w.detach(), relu, scale, 1e-5, Hd,
                                   downscale)
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()
    slack = 1e-6 if dtype == torch.float32 else 1e-3
    assert rel(xu, rxu) <= 1.05 * rel(cxu, rxu) + slack
    assert rel(ratio, rratio) <= 1.05 * rel(cratio, rratio) + slack
    g_xu, g_ratio = torch.randn_like(xu), torch.randn_like(ratio)
    ins = (x,) if w is None else (x, w)
    got = torch.autograd.grad((xu, ratio), ins, (g_xu, g_ratio))
    ref = torch.autograd.grad((rxu, rratio), (xd,) if w is None else (xd, wd), (g_xu.double(), g_ratio.double()))
    # Gradients of the composition in the working dtype (autograd through its roundings): in bf16 the rounded values
    # move ReLU masks and the clamp's branch, so the kernel is held to that error, not to a fixed tolerance.
    xc = x.detach().clone().requires_grad_()
    wc = None if w is None else w.detach().clone().requires_grad_()
    comp = torch.autograd.grad(naive_ucpe_clamp(xc, mat, cos, sin, wc, relu, scale, 1e-5, Hd, downscale),
                               (xc,) if w is None else (xc, wc), (g_xu, g_ratio))
    for a, b, c in zip(got, ref, comp, strict=True):
        assert rel(a, b) <= (1e-5 if dtype == torch.float32 else 1.1 * rel(c, b) + 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("downscale", [True, False])
def test_compiled_training_graph_uses_the_op(downscale):
    x, mat, cos, sin, w = _inputs(1, 64, 4, 112, torch.bfloat16, device="cuda")
    x.requires_grad_()
    w.requires_grad_()

    def f(x, w):
        xu, ratio = ucpe_clamp(x, mat, cos, sin, 4, w, True, 0.1, downscale=downscale)
        return (xu.float() * x.float()).sum() + ratio.sum()

    eager = torch.autograd.grad(f(x, w), (x, w))
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(x, w), (x, w))
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b)
