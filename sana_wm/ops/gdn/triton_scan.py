"""Fused Triton kernel for the GDN state recurrence (`scan.py`): all T frames in one launch.

One program owns one (batch·head) and a block of BLOCK_V state rows; it keeps those rows of the D×D state in
registers and walks the frames sequentially, reading each frame's A_t (D×D, padded to BLOCK_D) and U_t rows once:

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
):
    bh = tl.program_id(0).to(tl.int64)
    pv = tl.program_id(1)
    rv = pv * BLOCK_V + tl.arange(0, BLOCK_V)
    rd = tl.arange(0, BLOCK_D)
    mv = rv < DV
    md = rd < D
    a_base = A_ptr + bh * T * D * D
    u_base = U_ptr + bh * T * DV * D
    o_base = O_ptr + bh * T * DV * D
    g_base = G_ptr + bh * T
    u_offs = rv[:, None] * D + rd[None, :]
    u_mask = mv[:, None] & md[None, :]
    if TRANSPOSE_A:
        a_offs = rd[None, :] * D + rd[:, None]
    else:
        a_offs = rd[:, None] * D + rd[None, :]
    a_mask = md[:, None] & md[None, :]
    state = tl.zeros((BLOCK_V, BLOCK_D), dtype=tl.float32)
    for i in range(0, T):
        if REVERSE:
            t = T - 1 - i
            s = t + 1
        else:
            t = i
            s = i
        s_c = tl.minimum(s, T - 1)
        a = tl.load(a_base + s_c * D * D + a_offs, mask=a_mask, other=0.0)
        gval = tl.load(g_base + s_c)
        gval = tl.where(s < T, gval, 0.0)
        u = tl.load(u_base + t * DV * D + u_offs, mask=u_mask, other=0.0)
        state = gval * (state - tl.dot(state, a, input_precision="ieee")) + u
        tl.store(o_base + t * DV * D + u_offs, state, mask=u_mask)


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
        REVERSE=reverse, TRANSPOSE_A=transpose_a, BLOCK_V=BLOCK_V, BLOCK_D=BLOCK_D, num_warps=4,
    )
    return out.reshape(U.shape)
