"""Fast PyTorch GDN scans vs the float64 naive reference: outputs and every input gradient, awkward sizes."""

import pytest
import torch

from sana_wm.ops.gdn import (
    bidirectional_delta,
    bidirectional_gdn,
    naive_bidirectional_delta,
    naive_bidirectional_gdn,
)

SHAPES = [  # (B, T, S, H, D): odd frame counts, T = 1, S not a multiple of anything
    (1, 1, 7, 1, 5),
    (2, 3, 13, 2, 8),
    (1, 5, 11, 3, 6),
    (2, 9, 17, 1, 12),
]


def _inputs(B, T, S, H, D, dtype=torch.float64):
    g = torch.Generator().manual_seed(B * 1000 + T * 100 + S)
    # Non-negative q/k as after ReLU, scaled like the model (1/√(D·S)) so the transitions stay contractive.
    q = torch.rand(B, T, S, H, D, generator=g, dtype=dtype)
    k = torch.rand(B, T, S, H, D, generator=g, dtype=dtype) / (D * S) ** 0.5
    q_rot = torch.randn(B, T, S, H, D, generator=g, dtype=dtype)
    k_rot = torch.randn(B, T, S, H, D, generator=g, dtype=dtype) / (D * S) ** 0.5
    v = torch.randn(B, T, S, H, D, generator=g, dtype=dtype)
    beta = torch.rand(B, T, S, H, generator=g, dtype=dtype)
    decay = 0.5 + 0.5 * torch.rand(B, T, H, generator=g, dtype=dtype)
    return q, k, q_rot, k_rot, v, beta, decay


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("shape", SHAPES)
def test_gdn_main_matches_naive(shape):
    inputs = [x.requires_grad_() for x in _inputs(*shape)]
    ref = naive_bidirectional_gdn(*inputs)
    fast_in = [x.detach().float().requires_grad_() for x in inputs]
    out = bidirectional_gdn(*fast_in)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _rel(out, ref) < 1e-5
    w = torch.randn_like(ref)
    grads_ref = torch.autograd.grad((ref * w).sum(), inputs)
    grads = torch.autograd.grad((out * w.float()).sum(), fast_in)
    for name, a, b in zip(["q", "k", "q_rot", "k_rot", "v", "beta", "g"], grads, grads_ref, strict=True):
        assert _rel(a, b) < 1e-4, name


@pytest.mark.parametrize("shape", SHAPES)
def test_gdn_camera_matches_naive(shape):
    q, k, _, _, v, beta, decay = _inputs(*shape)
    q = q - 0.5  # camera queries/keys are signed after the UCPE transform
    inputs = [x.requires_grad_() for x in (q, k, v, beta, decay)]
    ref = naive_bidirectional_delta(*inputs)
    fast_in = [x.detach().float().requires_grad_() for x in inputs]
    out = bidirectional_delta(*fast_in)
    assert _rel(out, ref) < 1e-5
    w = torch.randn_like(ref)
    grads_ref = torch.autograd.grad((ref * w).sum(), inputs)
    grads = torch.autograd.grad((out * w.float()).sum(), fast_in)
    for name, a, b in zip(["q", "k", "v", "beta", "g"], grads, grads_ref, strict=True):
        assert _rel(a, b) < 1e-4, name


def test_single_frame_is_relu_linear_attention():
    """T = 1, β ≡ 1 (docs/design/architecture.md §5.2) gives num = V K̃ᵀ Q̃ and den = 1ᵀ Kᵀ Q (the backward pass is empty)."""
    q, k, q_rot, k_rot, v, _, decay = _inputs(1, 1, 9, 2, 4)
    beta = torch.ones(1, 1, 9, 2, dtype=torch.float64)
    out = bidirectional_gdn(q, k, q_rot, k_rot, v, beta, decay)
    for h in range(2):
        num = q_rot[0, 0, :, h] @ (k_rot[0, 0, :, h].T @ v[0, 0, :, h])  # [S, D]
        den = q[0, 0, :, h] @ k[0, 0, :, h].sum(0)  # [S]
        torch.testing.assert_close(out[0, 0, :, h].double(), num / (den[:, None] + 1e-8), rtol=1e-5, atol=1e-6)


def test_bad_shapes_are_named():
    q, k, q_rot, k_rot, v, beta, decay = _inputs(1, 3, 5, 2, 4)
    with pytest.raises(ValueError, match=r"beta: expected shape \[1, 3, 5, 2\], got \[1, 3, 5\]"):
        bidirectional_gdn(q, k, q_rot, k_rot, v, beta[..., 0], decay)
    with pytest.raises(ValueError, match="g: expected shape"):
        bidirectional_delta(q, k, v, beta, decay[:, :2])


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T", [1, 2, 5])
def test_state_scan_gradcheck(reverse, T):
    """The hand-written backward of the state recurrence against finite differences, float64."""
    from sana_wm.ops.gdn.scan import StateScan

    g = torch.Generator().manual_seed(T)
    A = (torch.randn(2, T, 4, 4, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    U = torch.randn(2, T, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    d = (0.5 + 0.5 * torch.rand(2, T, generator=g, dtype=torch.float64)).requires_grad_()

    torch.autograd.gradcheck(lambda A, U, d: StateScan.apply(A, U, d, reverse), (A, U, d), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("T", [1, 2, 5])
def test_bidirectional_scan_gradcheck(T):
    """(F, R) = inclusive-forward and exclusive-reverse scans in one op; its backward runs both adjoint scans at once
    and assembles dA, dU, dg from them (float64 gradcheck, every output slot weighted)."""
    from sana_wm.ops.gdn.scan import StateScan, bidirectional_scan

    g = torch.Generator().manual_seed(T + 11)
    A = (torch.randn(2, T, 4, 4, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    U = torch.randn(2, T, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    d = (0.5 + 0.5 * torch.rand(2, T, generator=g, dtype=torch.float64)).requires_grad_()
    torch.autograd.gradcheck(bidirectional_scan, (A, U, d), eps=1e-6, atol=1e-6)
    FR = bidirectional_scan(A, U, d)
    F_ref = StateScan.apply(A, U, d, False)
    R_ref = StateScan.apply(A, torch.cat([U[:, 1:], torch.zeros_like(U[:, :1])], dim=1), d, True)
    torch.testing.assert_close(FR[0], F_ref)
    torch.testing.assert_close(FR[1], R_ref)


@pytest.mark.parametrize("T", [1, 4])
def test_bidirectional_scan_two_is_two_single_scans_and_gradchecks(T):
    """Two problems sharing the decay (different Dv) in one op: each output equals its own `bidirectional_scan`, and the
    joint backward (one adjoint launch on CUDA) passes a float64 gradcheck, the shared decay's gradient summed."""
    from sana_wm.ops.gdn.scan import bidirectional_scan, bidirectional_scan_two

    g = torch.Generator().manual_seed(T + 3)
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).requires_grad_()  # noqa: E731
    A1, U1, A2, U2 = mk(2, T, 4, 4, scale=0.3), mk(2, T, 3, 4), mk(2, T, 4, 4, scale=0.3), mk(2, T, 1, 4)
    d = (0.5 + 0.5 * torch.rand(2, T, generator=g, dtype=torch.float64)).requires_grad_()
    torch.autograd.gradcheck(bidirectional_scan_two, (A1, U1, A2, U2, d), eps=1e-6, atol=1e-6)
    FR1, FR2 = bidirectional_scan_two(A1, U1, A2, U2, d)
    torch.testing.assert_close(FR1, bidirectional_scan(A1, U1, d))
    torch.testing.assert_close(FR2, bidirectional_scan(A2, U2, d))
    with pytest.raises(ValueError, match=rf"bidirectional_scan_two \(second\): g \[2, {T}\] must be .* = \[2, 5\]"):
        bidirectional_scan_two(A1, U1, A2[:, :1].expand(2, 5, 4, 4), U2[:, :1].expand(2, 5, 1, 4), d)
