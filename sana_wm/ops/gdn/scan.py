"""The sequential core of the frame-wise GDN: a linear recurrence on D×D states, with its own exact backward.

    forward  (reverse=False):  S_t = g_t · S_{t−1} (I − A_t) + U_t,        S_{−1} = 0
    reverse  (reverse=True):   S_t = g_{t+1} · S_{t+1} (I − A_{t+1}) + U_t,  S_T = 0

A [..., T, D, D], U [..., T, Dv, D], g [..., T]; returns all states [..., T, Dv, D] in float32 (float64 inputs stay float64).

Why a custom op with its own backward: differentiating through a Python loop stores T intermediate graphs and launches
O(T) tiny kernels in both passes. The gradient of this recurrence is the same recurrence run the other way with Aᵀ
(G_t = dS_t + g_{t+1} G_{t+1}(I − A_{t+1})ᵀ for the forward scan), so forward and backward share one primitive,
`_scan`, which has a PyTorch loop implementation (CPU, fallback) and a fused Triton kernel (`triton_scan.py`, CUDA;
`SANA_WM_FUSED_GDN_SCAN=0` turns it off, `sana_wm.ops.switch`).
The parameter gradients then come from three batched products over all frames at once.
"""

from __future__ import annotations

import torch

from sana_wm.ops import switch


def _import_kernels():
    from .triton_scan import bidirectional_scan_pair, triton_state_scan

    return bidirectional_scan_pair, triton_state_scan


# Triton is optional: CPU machines and CI run the PyTorch loop.
_SWITCH = switch.get("SANA_WM_FUSED_GDN_SCAN")
bidirectional_scan_pair, triton_state_scan = switch.load_kernels(_import_kernels, _SWITCH) or (None, None)
_use_triton = _SWITCH.use  # the scans of A run in the Triton kernels: CUDA, float32, SANA_WM_FUSED_GDN_SCAN on


def _torch_scan(A, U, g, reverse: bool, transpose_a: bool) -> torch.Tensor:
    T = A.shape[-3]
    if transpose_a:
        A = A.transpose(-1, -2)
    out = torch.empty_like(U)
    state = torch.zeros_like(U[..., 0, :, :])
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        if reverse:
            if t < T - 1:
                state = g[..., t + 1, None, None] * (state - state @ A[..., t + 1, :, :]) + U[..., t, :, :]
            else:
                state = U[..., t, :, :].clone()
        else:
            state = g[..., t, None, None] * (state - state @ A[..., t, :, :]) + U[..., t, :, :]
        out[..., t, :, :] = state
    return out


def _scan(A, U, g, reverse: bool, transpose_a: bool = False) -> torch.Tensor:
    if _use_triton(A):
        return triton_state_scan(A, U, g, reverse=reverse, transpose_a=transpose_a)
    return _torch_scan(A, U, g, reverse, transpose_a)


def _shift(x: torch.Tensor, by: int) -> torch.Tensor:
    """x[..., t] ← x[..., t − by] along the frame axis (dim −3 of states), zero-filled."""
    out = torch.zeros_like(x)
    if by > 0:
        out[..., by:, :, :] = x[..., :-by, :, :]
    else:
        out[..., :by, :, :] = x[..., -by:, :, :]
    return out


@torch.library.custom_op("sana_wm::state_scan", mutates_args=())
def _state_scan_op(A: torch.Tensor, U: torch.Tensor, g: torch.Tensor, reverse: bool, transpose_a: bool) -> torch.Tensor:
    # A registered custom op (not a bare autograd.Function) so torch.compile keeps whole blocks in one graph and
    # treats the scan as an opaque node, also inside activation-checkpointed regions.
    return _scan(A, U, g, reverse, transpose_a)


@_state_scan_op.register_fake
def _(A, U, g, reverse, transpose_a):
    return torch.empty_like(U)


def _setup_context(ctx, inputs, output):
    A, _, g, reverse, transpose_a = inputs
    ctx.save_for_backward(A, g, output)
    ctx.reverse, ctx.transpose_a = reverse, transpose_a


def _state_scan_backward(ctx, dS):
    A, g, states = ctx.saved_tensors
    dS = dS.to(states.dtype).contiguous()
    A_used = A.transpose(-1, -2) if ctx.transpose_a else A
    if not ctx.reverse:
        # G_t = dS_t + g_{t+1} G_{t+1} (I − A_{t+1})ᵀ: the reverse scan with Aᵀ.
        G = _state_scan_op(A, dS, g, True, not ctx.transpose_a)
        prev = _shift(states, 1)  # S_{t−1}, zero at t = 0
        dA = -g[..., None, None] * (prev.transpose(-1, -2) @ G)
        dg = (G * (prev - prev @ A_used)).sum((-1, -2))
    else:
        # S_t feeds S_{t−1} through A_t, g_t: G_t = dS_t + g_t G_{t−1} (I − A_t)ᵀ, a forward scan with Aᵀ.
        G = _state_scan_op(A, dS, g, False, not ctx.transpose_a)
        g_prev = _shift(G, 1)  # G_{t−1} pairs with S_t, A_t, g_t; zero at t = 0 (A_0, g_0 unused)
        dA = -g[..., None, None] * (states.transpose(-1, -2) @ g_prev)
        dg = (g_prev * (states - states @ A_used)).sum((-1, -2))
    if ctx.transpose_a:
        dA = dA.transpose(-1, -2)
    return dA, G, dg, None, None


_state_scan_op.register_autograd(_state_scan_backward, setup_context=_setup_context)


class StateScan:
    """`StateScan.apply(A, U, g, reverse)`: the differentiable scan (kept for callers of the autograd-Function API)."""

    @staticmethod
    def apply(A, U, g, reverse: bool):
        dt = torch.promote_types(A.dtype, torch.float32)  # float32 at least; float64 stays (reference tests)
        A, U, g = (x.to(dt).contiguous() for x in (A, U, g))
        return _state_scan_op(A, U, g, reverse, False)


def state_scan(A: torch.Tensor, U: torch.Tensor, g: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """All states of the forward (or reverse) recurrence, float32, differentiable in A, U and g."""
    _check_problem("state_scan", A, U, g)
    return StateScan.apply(A, U, g, reverse)


# -- both directions at once ------------------------------------------------------------------------------------------
# The bidirectional GDN needs, per problem, the inclusive forward scan F of U and the exclusive reverse scan R
# (R_t = g_{t+1} R_{t+1}(I − A_{t+1}) + U_{t+1}). `bidirectional_scan` returns both as one [2, ...] tensor from one
# Triton launch on CUDA (two PyTorch loops elsewhere), and its backward runs both adjoint scans (with Aᵀ) in one
# launch too: each scan is T latency-bound steps, so side by side they cost about one.


def _pairs(problems, g, backward: bool) -> list[torch.Tensor]:
    """Forward: (F, R) of each problem's U [..., T, Dv, D]. Backward: U = (dF, dR) → their adjoint scans (G_F, G_R).
    One or two problems (A, U) sharing g: on CUDA all of them run in one launch."""
    if _use_triton(problems[0][0]):
        *batch, T, D, _ = problems[0][0].shape
        flat = [(A.reshape(-1, T, D, D), U.reshape(2, -1, T, *U.shape[-2:]) if backward else
                 U.reshape(-1, T, *U.shape[-2:])) for A, U in problems]
        outs = bidirectional_scan_pair(flat, g.reshape(-1, T), backward=backward)
        return [o.reshape(2, *batch, T, *U.shape[-2:]) for o, (_, U) in zip(outs, problems, strict=True)]
    if backward:
        return [torch.stack([_torch_scan(A, U[0], g, True, True), _torch_scan(A, U[1], g, False, True)])
                for A, U in problems]
    return [torch.stack([_torch_scan(A, U, g, False, False), _torch_scan(A, _shift(U, -1), g, True, False)])
            for A, U in problems]


def _pair(A, U, g, backward: bool) -> torch.Tensor:
    """`_pairs` of one problem."""
    return _pairs([(A, U)], g, backward)[0]


def _pair_grads(A, g, FR, G):
    """(dA, dU, dg) of one problem from its forward scans FR = (F, R) and their adjoint scans G = (G_F, G_R)."""
    F_prev = _shift(FR[0], 1)  # F_{t−1} meets A_t, g_t (zero at t = 0)
    R = FR[1]  # R_t meets A_t, g_t through G_R at t − 1 (R_{t−1} = g_t R_t (I − A_t) + U_t)
    GR_prev = _shift(G[1], 1)
    dU = G[0] + GR_prev  # U_t enters F_t directly and R_{t−1}
    X = torch.cat([F_prev, R], dim=-2)  # both terms of dA_t = −g_t (F_{t−1}ᵀ G_F,t + R_tᵀ G_R,t−1) in one product
    Y = torch.cat([G[0], GR_prev], dim=-2)
    dA = -g[..., None, None] * (X.transpose(-1, -2) @ Y)
    dg = (Y * (X - X @ A)).sum((-1, -2))
    return dA, dU, dg


@torch.library.custom_op("sana_wm::bidirectional_scan", mutates_args=())
def _bidir_op(A: torch.Tensor, U: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _pair(A, U, g, backward=False)


@_bidir_op.register_fake
def _(A, U, g):
    return U.new_empty((2, *U.shape))


@torch.library.custom_op("sana_wm::bidirectional_scan_adjoint", mutates_args=())
def _bidir_adjoint_op(A: torch.Tensor, dFR: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _pair(A, dFR, g, backward=True)


@_bidir_adjoint_op.register_fake
def _(A, dFR, g):
    return torch.empty_like(dFR)


def _bidir_setup(ctx, inputs, output):
    A, _, g = inputs
    ctx.save_for_backward(A, g, output)


def _bidir_backward(ctx, dFR):
    A, g, FR = ctx.saved_tensors
    return _pair_grads(A, g, FR, _bidir_adjoint_op(A, dFR.to(FR.dtype).contiguous(), g))


_bidir_op.register_autograd(_bidir_backward, setup_context=_bidir_setup)


# Two problems sharing the decay (the numerator and the normaliser of the main branch): one launch each way.
@torch.library.custom_op("sana_wm::bidirectional_scan_two", mutates_args=())
def _bidir2_op(A1: torch.Tensor, U1: torch.Tensor, A2: torch.Tensor, U2: torch.Tensor,
               g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    FR1, FR2 = _pairs([(A1, U1), (A2, U2)], g, backward=False)
    return FR1, FR2


@_bidir2_op.register_fake
def _(A1, U1, A2, U2, g):
    return U1.new_empty((2, *U1.shape)), U2.new_empty((2, *U2.shape))


@torch.library.custom_op("sana_wm::bidirectional_scan_two_adjoint", mutates_args=())
def _bidir2_adjoint_op(A1: torch.Tensor, dFR1: torch.Tensor, A2: torch.Tensor, dFR2: torch.Tensor,
                       g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    G1, G2 = _pairs([(A1, dFR1), (A2, dFR2)], g, backward=True)
    return G1, G2


@_bidir2_adjoint_op.register_fake
def _(A1, dFR1, A2, dFR2, g):
    return torch.empty_like(dFR1), torch.empty_like(dFR2)


def _bidir2_setup(ctx, inputs, output):
    A1, _, A2, _, g = inputs
    ctx.save_for_backward(A1, A2, g, *output)


def _bidir2_backward(ctx, dFR1, dFR2):
    A1, A2, g, FR1, FR2 = ctx.saved_tensors
    G1, G2 = _bidir2_adjoint_op(A1, dFR1.to(FR1.dtype).contiguous(), A2, dFR2.to(FR2.dtype).contiguous(), g)
    dA1, dU1, dg1 = _pair_grads(A1, g, FR1, G1)
    dA2, dU2, dg2 = _pair_grads(A2, g, FR2, G2)
    return dA1, dU1, dA2, dU2, dg1 + dg2


_bidir2_op.register_autograd(_bidir2_backward, setup_context=_bidir2_setup)


def _check_problem(name: str, A: torch.Tensor, U: torch.Tensor, g: torch.Tensor) -> None:
    if A.shape[-1] != A.shape[-2] or A.shape[:-2] != U.shape[:-2] or U.shape[-1] != A.shape[-1]:
        raise ValueError(f"{name}: A {list(A.shape)} must be [..., T, D, D], U {list(U.shape)} [..., T, Dv, D]")
    if g.shape != A.shape[:-2]:
        raise ValueError(f"{name}: g {list(g.shape)} must be [..., T] = {list(A.shape[:-2])}")


def bidirectional_scan(A: torch.Tensor, U: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """[2, ..., T, Dv, D]: the inclusive-forward and exclusive-reverse scans of U (float32 at least; differentiable in
    A, U and g). A [..., T, D, D], U [..., T, Dv, D], g [..., T]."""
    _check_problem("bidirectional_scan", A, U, g)
    dt = torch.promote_types(A.dtype, torch.float32)
    return _bidir_op(*(x.to(dt).contiguous() for x in (A, U, g)))


def bidirectional_scan_two(A1: torch.Tensor, U1: torch.Tensor, A2: torch.Tensor, U2: torch.Tensor,
                           g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`bidirectional_scan` of two problems that share g (their Dv may differ), in one launch each way on CUDA."""
    _check_problem("bidirectional_scan_two (first)", A1, U1, g)
    _check_problem("bidirectional_scan_two (second)", A2, U2, g)
    dt = torch.promote_types(A1.dtype, torch.float32)
    return _bidir2_op(*(x.to(dt).contiguous() for x in (A1, U1, A2, U2, g)))
