"""Fused Triton kernel for the GDN state recurrence (`scan.py`): all T frames in one launch.

One program owns one (batch·head) and a block of BLOCK_V state rows and walks the frames sequentially, reading each
frame's A_t (D×D, padded to BLOCK_D) in column slices and its U_t rows once:

    forward:  S_t = g_t (S_{t−1} − S_{t−1} A_t) + U_t
    reverse:  S_t = g_{t+1} (S_{t+1} − S_{t+1} A_{t+1}) + U_t      (S_T = 0)

`TRANSPOSE_A` reads Aᵀ instead (the backward pass). The product uses full fp32 ("ieee") so the kernel agrees with the
PyTorch loop to rounding; the GEMMs that build A and U, and read the outputs, stay in cuBLAS. The PyTorch loop in
`scan._torch_scan` is the reference this kernel is tested against (tests/ops/test_gdn_gpu.py).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _state_scan_kernel(
    A_ptr, U_ptr, G_ptr, O_ptr, T, DV, D,
    REVERSE: tl.constexpr, TRANSPOSE_A: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    # The state rows live in the output buffer (L1/L2-resident between steps); each step reads the previous state
    # once and produces the new one BLOCK_N columns at a time, so only a [BLOCK_D, BLOCK_N] slice of A_t is held in
    # registers (a whole 128×128 fp32 tile would spill).
    bh = tl.program_id(0).to(tl.int64)
    pv = tl.program_id(1)
    rv = pv * BLOCK_V + tl.arange(0, BLOCK_V)
    rd = tl.arange(0, BLOCK_D)
    rn = tl.arange(0, BLOCK_N)
    mv = rv < DV
    md = rd < D
    a_base = A_ptr + bh * T * D * D
    u_base = U_ptr + bh * T * DV * D
    o_base = O_ptr + bh * T * DV * D
    g_base = G_ptr + bh * T
    full_offs = rv[:, None] * D + rd[None, :]
    full_mask = mv[:, None] & md[None, :]
    for i in range(0, T):
        if REVERSE:
            t = T - 1 - i
            s = t + 1
            prev = t + 1
        else:
            t = i
            s = i
            prev = i - 1
        first = i == 0
        prev_c = tl.maximum(tl.minimum(prev, T - 1), 0)
        s_c = tl.minimum(s, T - 1)
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
            u = tl.load(u_base + t * DV * D + offs, mask=m, other=0.0)
            tl.store(o_base + t * DV * D + offs, gval * (old - prod) + u, mask=m)
        tl.debug_barrier()  # the next step reads this step's state written by other threads of the program


PRECISION = "ieee"  # full fp32 products: the scan must agree with the fp32 reference over 121 frames


def triton_state_scan(
    A: torch.Tensor, U: torch.Tensor, g: torch.Tensor, reverse: bool = False, transpose_a: bool = False
) -> torch.Tensor:
    """A [..., T, D, D], U [..., T, Dv, D], g [..., T] (float32, CUDA) → states [..., T, Dv, D]."""
    *batch, T, D, _ = A.shape
    DV = U.shape[-2]
    BH = math.prod(batch) if batch else 1
    A_ = A.reshape(BH, T, D, D).contiguous()
    U_ = U.reshape(BH, T, DV, D).contiguous()
    g_ = g.reshape(BH, T).contiguous()
    out = torch.empty_like(U_)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_V = 16
    grid = (BH, triton.cdiv(DV, BLOCK_V))
    _state_scan_kernel[grid](
        A_, U_, g_, out, T, DV, D,
        REVERSE=reverse, TRANSPOSE_A=transpose_a, BLOCK_V=BLOCK_V, BLOCK_D=BLOCK_D, BLOCK_N=32,
        PRECISION=PRECISION, num_warps=4,
    )
    return out.reshape(U.shape)
