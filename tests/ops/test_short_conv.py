"""The GDN's bidirectional short conv op: the custom op's backward (float64 gradcheck on CPU), the module against the
reference, bad shapes; on the GPU (marked `gpu`) the Triton forward and the op's gradients against float64."""

import pytest
import torch

from sana_wm.models.attention import BidirectionalShortConv
from sana_wm.ops.short_conv import bidirectional_short_conv, naive_bidirectional_short_conv


@pytest.mark.parametrize("T, K", [(1, 4), (2, 4), (6, 4), (5, 2)])
def test_op_gradients_pass_float64_gradcheck(T, K):
    g = torch.Generator().manual_seed(T * 10 + K)
    x = torch.randn(2, T, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, K, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bidirectional_short_conv, (x, w))


def test_module_is_the_symmetric_filter_on_strided_keys():
    """One impulse at frame 3 spreads to frames 0–6 with the taps mirrored around the centre tap."""
    conv = BidirectionalShortConv(4, kernel_size=4)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.1, 0.2, 0.3, 1.0]).expand(4, 1, 4))
    qkv = torch.zeros(1, 8, 2, 12)
    qkv[0, 3, :, 4:8] = 1.0  # the key is the middle third of a fused projection: a strided view
    out = conv(qkv[..., 4:8])
    assert out.is_contiguous() and out.shape == (1, 8, 2, 4)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.1, 0.2, 0.3, 1.0, 0.3, 0.2, 0.1, 0.0]))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"weight \[7, 4\]"):
        bidirectional_short_conv(torch.randn(1, 2, 3, 8), torch.randn(7, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (2, 3, 37, 100), (1, 13, 880, 300), (2, 21, 53, 2240)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_forward_and_gradients_match_float64(shape, dtype):
    from sana_wm.ops.short_conv import _use_triton

    B, T, S, C = shape
    g = torch.Generator(device="cuda").manual_seed(S + C)
    fused = torch.randn(B, T, S, 3 * C, device="cuda", generator=g, dtype=dtype)
    x = fused[..., C : 2 * C].requires_grad_()  # strided like the key slice of the qkv projection
    x.retain_grad()
    w = (0.5 * torch.randn(C, 4, device="cuda", generator=g)).to(dtype).requires_grad_()
    assert _use_triton(x)
    out = bidirectional_short_conv(x, w)
    ref_x, ref_w = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = naive_bidirectional_short_conv(ref_x, ref_w)
    tol = 1e-6 if dtype == torch.float32 else 8e-3  # bf16: one rounding of the float32 sum
    assert ((out.double() - ref).norm() / ref.norm()).item() < tol
    dy = torch.randn(out.shape, device="cuda", generator=g, dtype=dtype)
    dx, dw = torch.autograd.grad((out * dy).sum(), (x, w))
    rdx, rdw = torch.autograd.grad((ref * dy.double()).sum(), (ref_x, ref_w))
    assert ((dx.double() - rdx).norm() / rdx.norm()).item() < tol
    assert ((dw.double() - rdw).norm() / rdw.norm()).item() < max(tol, 1e-5)


@pytest.mark.gpu
def test_compiled_fullgraph_training_uses_the_op():
    x = torch.randn(1, 5, 40, 64, device="cuda", requires_grad=True)
    w = torch.randn(64, 4, device="cuda", requires_grad=True)
    f = lambda x, w: torch.relu(bidirectional_short_conv(x, w)).square().sum()
    eager = torch.autograd.grad(f(x, w), (x, w))
    compiled = torch.autograd.grad(torch.compile(f, fullgraph=True)(x, w), (x, w))
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
