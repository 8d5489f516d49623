"""Fused Triton kernel for the GDN state recurrence (`scan.py`): all T frames in one launch.

One program owns one (batch·head) and a block of BLOCK_V state rows and walks the frames sequentially, reading each
frame's A_t (D×D, padded to BLOCK_D) in column slices and the input rows once:

    forward:            S_t = g_t (S_{t−1} − S_{t−1} A_t) + U_t
    reverse:            S_t = g_{t+1} (S_{t+1} − S_{t+1} A_{t+1}) + U_t          (S_T = 0)
    exclusive reverse:  S_t = g_{t+1} (S_{t+1} − S_{t+1} A_{t+1}) + U_{t+1}      (S_{T−1} = 0)

The one kernel serves three callers through compile-time flags:
  * `triton_state_scan`: one scan, forward or reverse, with A or Aᵀ (the single-direction `state_scan` op);
  * `bidirectional_scan_pair`: the inclusive-forward F and exclusive-reverse R of one or two problems side by side,
    or (its backward) both adjoint scans with Aᵀ from per-slot inputs (dF, dR);
  * `bidirectional_states` (inference): F and R of up to two problems (numerator and normaliser) in one launch,
    then F + R summed, and split to bf16 hi/mid/lo for the read-out, by `_sum_split_kernel`.
Each scan is T dependent steps with little parallelism, so side by side they cost about one. The product uses full
fp32 ("ieee") so the kernel agrees with the PyTorch loop to rounding; A and U come from `triton_fused.transitions`
(or cuBLAS on the composite path). The PyTorch loops in `scan.py` are the reference these launches are tested
against (tests/ops/test_gdn_gpu.py).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .triton_fused import _split3


@triton.jit(do_not_specialize=["DV1", "DV2"])
def _scan_kernel(
    A1, U1, O1, A2, U2, O2, G_ptr, T, D, DV1, DV2, NV1,
    REV0: tl.constexpr, REV1: tl.constexpr, EXCLUSIVE1: tl.constexpr, INPUT_PER_SLOT: tl.constexpr,
    TRANSPOSE_A: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Program axis 0: batch·head; axis 1: the problem (block index < NV1: problem 1) and its block of state rows;
    # axis 2: the output slot. Slot k scans in direction REVk (0 forward, 1 reverse); slot 1 is exclusive when
    # EXCLUSIVE1; the input is U[slot] when INPUT_PER_SLOT, else U for both slots. Each slot writes its states into
    # O[slot], where its running state lives between steps (L1/L2-resident): each step reads the previous state once
    # and produces the new one BLOCK_N columns at a time, so only a [BLOCK_D, BLOCK_N] slice of A_t is held in
    # registers (a whole 128×128 float32 tile would spill).
    bh = tl.program_id(0).to(tl.int64)
    BH = tl.num_programs(0)
    pv = tl.program_id(1)
    slot = tl.program_id(2)
    rev = REV0 + (REV1 - REV0) * slot
    shift = EXCLUSIVE1 * slot  # exclusive: U_{t+1} enters S_t
    u_slot = slot if INPUT_PER_SLOT else 0
    if pv < NV1:
        a_ptr, u_ptr, o_ptr, DV, vb = A1, U1, O1, DV1, pv
    else:
        a_ptr, u_ptr, o_ptr, DV, vb = A2, U2, O2, DV2, pv - NV1
    rv = vb * BLOCK_V + tl.arange(0, BLOCK_V)
    rd = tl.arange(0, BLOCK_D)
    rn = tl.arange(0, BLOCK_N)
    mv = rv < DV
    md = rd < D
    a_base = a_ptr + bh * T * D * D
    u_base = u_ptr + (u_slot * BH + bh) * T * DV * D
    o_base = o_ptr + (slot * BH + bh) * T * DV * D
    g_base = G_ptr + bh * T
    full_offs = rv[:, None] * D + rd[None, :]
    full_mask = mv[:, None] & md[None, :]
    for i in range(0, T):
        t = i + rev * (T - 1 - 2 * i)
        s = t + rev  # frame whose transition (A_s, g_s) carries the previous state into state t
        ut = t + shift  # frame whose input U enters state t
        prev = t - 1 + 2 * rev
        first = i == 0
        prev_c = tl.maximum(tl.minimum(prev, T - 1), 0)
        s_c = tl.minimum(s, T - 1)
        ut_c = tl.minimum(ut, T - 1)
        gval = tl.where(s < T, tl.load(g_base + s_c), 0.0)
        state = tl.load(o_base + prev_c * DV * D + full_offs, mask=full_mask & (not first), other=0.0)
        for n0 in range(0, BLOCK_D, BLOCK_N):
            cols = n0 + rn
            mc = cols < D
            if TRANSPOSE_A:
                a_offs = cols[None, :] * D + rd[:, None]
            else:
                a_offs = rd[:, None] * D + cols[None, :]
            a = tl.load(a_base + s_c * D * D + a_offs, mask=md[:, None] & mc[None, :], other=0.0)
            prod = tl.dot(state, a, input_precision=PRECISION)  # [BLOCK_V, BLOCK_N]
            offs = rv[:, None] * D + cols[None, :]
            m = mv[:, None] & mc[None, :]
            old = tl.load(o_base + prev_c * DV * D + offs, mask=m & (not first), other=0.0)
            u = tl.load(u_base + ut_c * DV * D + offs, mask=m & (ut < T), other=0.0)
            tl.store(o_base + t * DV * D + offs, gval * (old - prod) + u, mask=m)
        tl.debug_barrier()  # the next step reads this step's state written by other threads of the program


@triton.jit
def _sum_split_kernel(O, HI, MID, LO, N, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    # states = F + R (the two slots of `_scan_kernel`), and for bf16 read-outs its exact 3-way bf16 split
    # (hi + mid + lo carries 24 significant bits, like `triton_fused.split_bf16x3`).
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    x = tl.load(O + offs, mask=m) + tl.load(O + N + offs, mask=m)
    if SPLIT:
        hi, mid, lo = _split3(x)
        tl.store(HI + offs, hi, mask=m)
        tl.store(MID + offs, mid, mask=m)
        tl.store(LO + offs, lo, mask=m)
    else:
        tl.store(HI + offs, x, mask=m)


PRECISION = "ieee"  # full fp32 products: the scan must agree with the fp32 reference over 121 frames
BLOCK_N = 64  # columns of A_t per dot; 64 beat 32 by 18-29 % at the model's shapes (H200 sweep, bench/RESULTS.md)
BLOCK_V = 16


def _launch(problems, g: torch.Tensor, slots: int, **flags) -> list[torch.Tensor]:
    """Run `_scan_kernel` over one or two (A [BH, T, D, D], U) problems sharing g [BH, T]; returns each problem's
    output [slots, BH, T, Dv, D] (float32). U is [BH, T, Dv, D], or [slots, BH, T, Dv, D] with INPUT_PER_SLOT."""
    if not 1 <= len(problems) <= 2:
        raise ValueError(f"a scan launch takes one or two problems, got {len(problems)}")
    BH, T, D, _ = problems[0][0].shape
    BLOCK_D = max(16, triton.next_power_of_2(D))
    args, nv, outs = [], [], []
    for A, U in problems:
        U = U.contiguous()
        out = torch.empty((slots, BH, T, U.shape[-2], D), device=U.device, dtype=torch.float32)
        args += [A.contiguous(), U, out]
        nv.append(triton.cdiv(U.shape[-2], BLOCK_V))
        outs.append(out)
    if len(problems) == 1:  # the second problem slot is never visited (no programs)
        args += args[:3]
        nv.append(0)
    _scan_kernel[(BH, nv[0] + nv[1], slots)](
        *args, g.reshape(BH, T).contiguous().float(), T, D, args[1].shape[-2], args[4].shape[-2], nv[0],
        **flags, BLOCK_V=BLOCK_V, BLOCK_D=BLOCK_D, BLOCK_N=min(BLOCK_N, BLOCK_D), PRECISION=PRECISION, num_warps=4,
    )
    return outs


_PAIR = dict(REV0=0, REV1=1, EXCLUSIVE1=1, INPUT_PER_SLOT=False, TRANSPOSE_A=False)  # F and R of U
_PAIR_ADJOINT = dict(REV0=1, REV1=0, EXCLUSIVE1=0, INPUT_PER_SLOT=True, TRANSPOSE_A=True)  # their adjoints, Aᵀ


def triton_state_scan(
    A: torch.Tensor, U: torch.Tensor, g: torch.Tensor, reverse: bool = False, transpose_a: bool = False
) -> torch.Tensor:
    """A [..., T, D, D], U [..., T, Dv, D], g [..., T] (float32, CUDA) → states [..., T, Dv, D]."""
    *batch, T, D, _ = A.shape
    BH = math.prod(batch) if batch else 1
    (out,) = _launch([(A.reshape(BH, T, D, D), U.reshape(BH, T, *U.shape[-2:]))], g, 1, REV0=int(reverse), REV1=0,
                     EXCLUSIVE1=0, INPUT_PER_SLOT=False, TRANSPOSE_A=transpose_a)
    return out.reshape(U.shape)


def bidirectional_scan_pair(problems: list[tuple[torch.Tensor, torch.Tensor]], g: torch.Tensor,
                            backward: bool = False) -> list[torch.Tensor]:
    """One launch, both directions of one or two problems (A [BH, T, D, D], U) sharing g [BH, T] (float32, CUDA).

    Forward (U [BH, T, Dv, D]): returns, per problem, [2, BH, T, Dv, D] = (inclusive-forward F, exclusive-reverse R).
    Backward (U [2, BH, T, Dv, D] = (dF, dR)): returns their adjoint scans with Aᵀ,
    G_F,t = dF_t + g_{t+1} G_F,t+1 (I − A_{t+1})ᵀ and G_R,t = dR_t + g_t G_R,t−1 (I − A_t)ᵀ.
    """
    return _launch(problems, g, 2, **(_PAIR_ADJOINT if backward else _PAIR))


def bidirectional_states(problems: list[tuple[torch.Tensor, torch.Tensor, bool]], g: torch.Tensor):
    """Inclusive-forward + exclusive-backward states of one or two problems in one scan launch (forward only).

    problems: [(A [BH, T, D, D], U [BH, T, Dv, D], split)] (float32, CUDA), at most two, sharing g [BH, T] and D.
    Returns, per problem, the states [BH, T, Dv, D] as float32, or as the (hi, mid, lo) bf16 split when `split`.
    """
    FRs = _launch([(A, U) for A, U, _ in problems], g, 2, **_PAIR)
    out = []
    for (_, U, split), FR in zip(problems, FRs, strict=True):
        n = U.numel()
        parts = [torch.empty_like(U, dtype=torch.bfloat16) for _ in range(3)] if split else [torch.empty_like(U)] * 3
        BLOCK = 1024
        _sum_split_kernel[(triton.cdiv(n, BLOCK),)](FR, *parts, n, SPLIT=split, BLOCK=BLOCK)
        out.append(tuple(parts) if split else parts[0])
    return out
