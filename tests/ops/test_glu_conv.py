"""The FFN's SiLU → depthwise 3×3 → GLU op on CPU: the unfused path against the float64 reference, the int32-safe
chunking of the depthwise call, and the shape checks."""

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
