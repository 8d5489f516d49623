"""GPU-only: the fused Triton state-scan kernel against the PyTorch loop, outputs and gradients (marked `gpu`)."""

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("T, Dv, D", [(1, 112, 112), (5, 1, 112), (21, 112, 112), (9, 7, 13), (121, 33, 64)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("transpose_a", [False, True])
def test_triton_scan_matches_torch_loop(T, Dv, D, reverse, transpose_a):
    from sana_wm.ops.gdn.scan import _torch_scan
    from sana_wm.ops.gdn.triton_scan import triton_state_scan

    g = torch.Generator(device="cuda").manual_seed(T * 31 + D)
    k = torch.rand(3, T, 50, D, device="cuda", generator=g) / (D * 50) ** 0.5
    A = k.transpose(-1, -2) @ k + 0.01 * torch.randn(3, T, D, D, device="cuda", generator=g)  # not symmetric
    U = torch.randn(3, T, Dv, D, device="cuda", generator=g)
    d = 0.5 + 0.5 * torch.rand(3, T, device="cuda", generator=g)
    ref = _torch_scan(A.double(), U.double(), d.double(), reverse, transpose_a)
    out = triton_state_scan(A, U, d, reverse=reverse, transpose_a=transpose_a)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("shape", [(1, 1, 37, 2, 112), (2, 21, 880, 2, 112), (1, 9, 53, 3, 40)])
def test_gpu_gdn_matches_naive_with_grads(shape):
    from sana_wm.ops.gdn import bidirectional_delta, bidirectional_gdn, naive_bidirectional_gdn

    B, T, S, H, D = shape
    g = torch.Generator(device="cuda").manual_seed(S)
    mk = lambda *s, scale=1.0: (torch.rand(*s, device="cuda", generator=g) * scale).requires_grad_()
    q, k = mk(B, T, S, H, D), mk(B, T, S, H, D, scale=(D * S) ** -0.5)
    q_rot, k_rot = mk(B, T, S, H, D), mk(B, T, S, H, D, scale=(D * S) ** -0.5)
    v, beta = mk(B, T, S, H, D), mk(B, T, S, H)
    decay = (0.5 + 0.5 * torch.rand(B, T, H, device="cuda", generator=g)).requires_grad_()
    inputs = [q, k, q_rot, k_rot, v, beta, decay]
    out = bidirectional_gdn(*inputs)
    if T * S <= 1000:  # the float64 loop reference is slow; use it on the small shapes
        ref = naive_bidirectional_gdn(*[x.detach().double().cpu() for x in inputs])
        assert ((out.double().cpu() - ref).norm() / ref.norm()).item() < 1e-4
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), inputs)
    # Same op in float64 on the GPU through the PyTorch loop (the Triton kernel is float32-only).
    ref_in = [x.detach().double().requires_grad_() for x in inputs]
    ref_out = bidirectional_gdn(*ref_in)
    ref_grads = torch.autograd.grad((ref_out * w.double()).sum(), ref_in)
    for name, a, b in zip("q k q_rot k_rot v beta g".split(), grads, ref_grads, strict=True):
        if name == "g" and T == 1:  # one frame: the decay multiplies an empty state, its gradient is exactly 0
            assert a.abs().max().item() == 0.0 and b.abs().max().item() == 0.0
            continue
        assert ((a.double() - b).norm() / b.norm()).item() < 1e-3, name
    cam = bidirectional_delta(q, k_rot, v, beta, decay)
    cam_ref = bidirectional_delta(*[x.detach().double() for x in (q, k_rot, v, beta, decay)])
    assert ((cam.double() - cam_ref).norm() / cam_ref.norm()).item() < 1e-5
