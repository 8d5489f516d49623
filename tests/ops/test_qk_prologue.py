"""The GDN query/key prologue op (RMSNorm → ×weight → ReLU → ×scale → RoPE): float64 gradcheck of the registered op on
CPU (its written-out backward), the rotation's meaning, bad shapes; on the GPU (marked `gpu`) the Triton forward and backward
against float64 on awkward sizes, and a compiled training graph."""

import pytest
import torch

from sana_wm.models.rope import apply_rope, rope_table
from sana_wm.ops.qk_prologue import naive_rms_relu_rope, rms_relu_rope


def _inputs(B, N, C, P, dtype, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    fused = torch.randn(B, N, 3 * C, device=device, generator=g, dtype=torch.float64).to(dtype)
    x = fused[..., C : 2 * C]  # strided like the query/key slice of the qkv projection
    w = (1 + 0.3 * torch.randn(C, device=device, generator=g, dtype=torch.float64)).to(dtype)
    ang = 6 * torch.rand(N, P, device=device, generator=g, dtype=torch.float64)
    return x, w, ang.cos().float(), ang.sin().float()


@pytest.mark.parametrize("B, N, C, P, scale", [(1, 3, 8, 2, 1.0), (2, 5, 12, 3, 0.3)])
def test_op_gradients_pass_float64_gradcheck(B, N, C, P, scale):
    x, w, cos, sin = _inputs(B, N, C, P, torch.float64)
    x = (x + 0.2).requires_grad_()  # shift away from the ReLU kink so finite differences are stable
    w = w.requires_grad_()
    # The registered op: off CUDA its backward is the adjoint written out in naive.py, the Triton backward's recipe
    # (the public function runs the composition there, which autograd differentiates by itself).
    from sana_wm.ops.qk_prologue import _prologue_op

    assert torch.autograd.gradcheck(lambda x, w: _prologue_op(x, w, cos, sin, scale, 1e-5), (x, w))


def test_rotation_is_the_models_rope_table():
    """y_rot is RoPE(y) with the model's 3-D table; y is ReLU(RMSNorm(x)·w)·scale."""
    T, H, W, D = 2, 3, 4, 112
    table = rope_table((T, H, W), D)
    x, w, _, _ = _inputs(2, T * H * W, 2 * D, D // 2, torch.float32)
    y, y_rot = rms_relu_rope(x, w, table.cos, table.sin, scale=0.5)
    ref = torch.relu(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w) * 0.5
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(y_rot, apply_rope(y.unflatten(-1, (2, D)), table).flatten(-2))


def test_bad_shapes_are_named():
    x, w, cos, sin = _inputs(1, 4, 12, 3, torch.float32)
    with pytest.raises(ValueError, match=r"weight \[11\]"):
        rms_relu_rope(x, w[:11], cos, sin)
    with pytest.raises(ValueError, match=r"cos \[4, 5\]"):
        rms_relu_rope(x, w, torch.ones(4, 5), torch.ones(4, 5))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1, 12, 3), (2, 37, 40, 10), (1, 881, 224, 56), (2, 53, 2240, 56)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_forward_and_backward_match_float64(shape, dtype):
    from sana_wm.ops.qk_prologue import _use_triton

    B, N, C, P = shape
    x, w, cos, sin = _inputs(B, N, C, P, dtype, device="cuda", seed=N + C)
    x.requires_grad_()
    w = w.requires_grad_()
    assert _use_triton(x)
    scale = 0.05
    y, y_rot = rms_relu_rope(x, w, cos, sin, scale)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ry, ry_rot = naive_rms_relu_rope(xd, wd, cos, sin, scale)
    # The same composition in the working dtype has the same roundings; the kernel must be no less accurate.
    cy, cy_rot = naive_rms_relu_rope(x.detach(), w.detach(), cos, sin, scale)
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()
    slack = 1e-6 if dtype == torch.float32 else 1e-3
    assert rel(y, ry) <= 1.05 * rel(cy, ry) + slack
    assert rel(y_rot, ry_rot) <= 1.05 * rel(cy_rot, ry_rot) + slack
    gy, gr = torch.randn_like(y), torch.randn_like(y_rot)
    dx, dw = torch.autograd.grad((y, y_rot), (x, w), (gy, gr))
    rdx, rdw = torch.autograd.grad((ry, ry_rot), (xd, wd), (gy.double(), gr.double()))
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # bf16: the rounded norm feeds the ReLU mask and dw
    assert rel(dx, rdx) < tol and rel(dw, rdw) < tol


@pytest.mark.gpu
def test_compiled_training_graph_uses_the_op():
    x, w, cos, sin = _inputs(1, 64, 224, 56, torch.bfloat16, device="cuda")
    x.requires_grad_()
    w = w.requires_grad_()

    def f(x, w):
        y, y_rot = rms_relu_rope(x, w, cos, sin, 0.1)
        return (y.float() * y_rot.float()).sum()

    eager = torch.autograd.grad(f(x, w), (x, w))
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(x, w), (x, w))
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b)
