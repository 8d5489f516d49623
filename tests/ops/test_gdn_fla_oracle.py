"""flash-linear-attention as an independent oracle of our frame-wise GDN scans (CPU).

With one token per frame, a frame's write S_t = g_t S_{t−1}(I − β k kᵀ) + β v kᵀ is one step of the token-level gated
delta rule, which fla's pure-PyTorch reference `naive_recurrent_gated_delta_rule` computes (its state is our Sᵀ, its
gate the log of our decay). Its forward run is our inclusive forward scan; run on the time-reversed sequence, with
each query read against the state one step later, it is our exclusive backward scan. fla's reference is written
independently of ours (and of `naive.py`'s flip-and-shift), so agreement checks our reading of the recurrence.

fla's package `__init__` chain imports Triton, which CPU machines lack; its reference file needs only torch and
einops, so it is loaded from its path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sana_wm.ops.gdn import (
    bidirectional_delta,
    bidirectional_gdn,
    naive_bidirectional_delta,
    naive_bidirectional_gdn,
)
from sana_wm.ops.gdn.scan import bidirectional_scan

# fla's reference runs in float32 whatever its inputs; ours here in float64. Measured worst relative error over the
# cases below (CPU, torch 2.13): 9.2e-8 per direction, 1.0e-7 for the whole ops; a wrong time index is O(1).
TOL = 5e-7
SIZES = [(1, 1, 1, 8, 8), (2, 7, 3, 13, 5), (1, 29, 2, 16, 1), (3, 12, 1, 5, 9)]  # B, T, H, Dk, Dv


def _fla_naive():
    spec = importlib.util.find_spec("fla")
    assert spec is not None, "flash-linear-attention (import name fla) is a pinned dependency and must be installed"
    for root in spec.submodule_search_locations:
        path = Path(root) / "ops" / "gated_delta_rule" / "naive.py"
        if path.is_file():
            module_spec = importlib.util.spec_from_file_location("_fla_gated_delta_rule_naive", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module.naive_recurrent_gated_delta_rule
    raise AssertionError(f"fla's ops/gated_delta_rule/naive.py not found under {spec.submodule_search_locations}")


fla_gated_delta_rule = _fla_naive()


def _tokens(B, T, H, Dk, Dv, seed):
    """One token per frame, float64: q, k [B, T, H, Dk] non-negative (the GDN's are ReLU features, which keeps the
    normaliser positive), keys of unit norm; v [B, T, H, Dv]; β [B, T, H] in (0, 1); decay g [B, T, H] in [0.5, 1)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.rand(B, T, H, Dk, generator=gen, dtype=torch.float64)
    k = torch.nn.functional.normalize(torch.rand(B, T, H, Dk, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, Dv, generator=gen, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    g = 0.5 + 0.5 * torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    return q, k, v, beta, g


def _fla(q, k, v, beta, g):
    """fla's token-level rule: o_t = S_t q_t, S_t = g_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ (float64 out)."""
    o, _ = fla_gated_delta_rule(q.float(), k.float(), v.float(), beta.float(), g.log().float(), scale=1.0)
    return o.double()


def _fla_forward(q, k, v, beta, g):
    return _fla(q, k, v, beta, g)


def _fla_backward(q, k, v, beta, g):
    """The exclusive backward direction: S^b_t = g_{t+1} S^b_{t+1}(I − A_{t+1}) + U_{t+1}, o_t = S^b_t q_t. Reversed in
    time it is fla's rule, whose state at t + 1 each query q_t must read: queries shifted by one step, then back."""
    q_next = torch.zeros_like(q)
    q_next[:, :-1] = q.flip(1)[:, 1:]  # reversed step s (state of frame T − 1 − s) reads q of frame T − 2 − s
    o = _fla(q_next, k.flip(1), v.flip(1), beta.flip(1), g.flip(1)).flip(1)
    out = torch.zeros_like(o)
    out[:, :-1] = o[:, 1:]  # original frame t ← reversed step T − 2 − t; the last frame has an empty state
    return out


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("B, T, H, Dk, Dv", SIZES)
def test_each_direction_of_the_frame_scan_is_fla_gated_delta_rule(B, T, H, Dk, Dv):
    """`bidirectional_scan` (the frame-wise scan primitive) returns the two directions apart: each against fla."""
    q, k, v, beta, g = _tokens(B, T, H, Dk, Dv, seed=T * 7 + Dk)
    # one frame of one token: A_t = β k kᵀ, U_t = β v kᵀ per (batch, head), in the scan's [B, H, T, ·, ·] layout
    kh, vh, bh = k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3), beta.permute(0, 2, 1)[..., None, None]
    A = bh * kh[..., :, None] * kh[..., None, :]
    U = bh * vh[..., :, None] * kh[..., None, :]
    F, R = bidirectional_scan(A, U, g.permute(0, 2, 1))  # [B, H, T, Dv, Dk] each
    read = lambda states: (states @ q.permute(0, 2, 1, 3)[..., None]).squeeze(-1).permute(0, 2, 1, 3)  # noqa: E731
    assert _rel(read(F), _fla_forward(q, k, v, beta, g)) < TOL
    if T == 1:  # no later frame: the exclusive backward state is exactly zero
        assert read(R).abs().max().item() == 0.0
    else:
        assert _rel(read(R), _fla_backward(q, k, v, beta, g)) < TOL


@pytest.mark.parametrize("B, T, H, Dk, Dv", SIZES)
def test_bidirectional_ops_and_naive_reference_match_fla_with_one_token_per_frame(B, T, H, Dk, Dv):
    """The public ops (camera branch: numerator only; main branch: numerator over the normaliser, value 1) and the
    float64 reference `naive.py`, each against the sum of fla's two directions."""
    q, k, v, beta, g = _tokens(B, T, H, Dk, Dv, seed=T * 11 + Dv)
    q_rot, k_rot = _tokens(B, T, H, Dk, Dv, seed=T * 13 + Dv)[:2]
    frames = lambda x: x.unsqueeze(2)  # noqa: E731 - [B, T, H, ·] → [B, T, S = 1, H, ·]
    both = lambda *a: _fla_forward(*a) + _fla_backward(*a)  # noqa: E731
    cam = both(q, k, v, beta, g)
    main = both(q_rot, k_rot, v, beta, g) / (both(q, k, torch.ones_like(v[..., :1]), beta, g) + 1e-8)
    cam_in = (frames(q), frames(k), frames(v), frames(beta), g)
    main_in = (frames(q), frames(k), frames(q_rot), frames(k_rot), frames(v), frames(beta), g)
    for name, ours, want in (("bidirectional_delta", bidirectional_delta(*cam_in), cam),
                             ("naive_bidirectional_delta", naive_bidirectional_delta(*cam_in), cam),
                             ("bidirectional_gdn", bidirectional_gdn(*main_in), main),
                             ("naive_bidirectional_gdn", naive_bidirectional_gdn(*main_in), main)):
        assert ours.dtype == torch.float64 and ours.shape == (B, T, 1, H, Dv), name
        assert _rel(ours.squeeze(2), want) < TOL, (name, _rel(ours.squeeze(2), want))
