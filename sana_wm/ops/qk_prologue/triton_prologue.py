"""Triton forward and backward of the GDN query/key prologue (`naive.py` is the reference).

One program owns whole token rows of C channels: the RMS statistic, the weight, ReLU, scale and RoPE of a row are
one pass that reads x once and writes y and y_rot once (Inductor's fused kernel wrote float32 rotations plus bf16
copies). Rows are loaded flat and split into (even, odd) pairs in registers, so loads and stores stay coalesced.
The backward recomputes the row's statistic, applies the adjoint rotation, the ReLU mask and the RMS-norm Jacobian,
and keeps a float32 weight-gradient partial per program (summed by the caller: deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _pairs(ptr, BLOCK: tl.constexpr, C):
    """Load one row of C channels as (even, odd) float32 pair halves of BLOCK // 2 each."""
    r = tl.arange(0, BLOCK)
    x = tl.load(ptr + r, mask=r < C, other=0.0).to(tl.float32)
    return tl.split(tl.reshape(x, [BLOCK // 2, 2]))


@triton.jit
def _store_pairs(ptr, a, b, BLOCK: tl.constexpr, C):
    r = tl.arange(0, BLOCK)
    tl.store(ptr + r, tl.reshape(tl.join(a, b), [BLOCK]).to(ptr.dtype.element_ty), mask=r < C)


@triton.jit
def _rms_relu_rope_fwd(X, Wt, COS, SIN, Y, YR, N, C, sxb, sxn, scale, eps, P: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    b = row // N
    n = row % N
    xr, xi = _pairs(X + b.to(tl.int64) * sxb + n.to(tl.int64) * sxn, BLOCK, C)
    r = tl.rsqrt((tl.sum(xr * xr, 0) + tl.sum(xi * xi, 0)) / C + eps)
    wr, wi = _pairs(Wt, BLOCK, C)
    dt = Y.dtype.element_ty
    # The roundings of the composition: norm → dtype, × weight → dtype, ReLU, × scale → dtype.
    yr = tl.maximum(((xr * r).to(dt).to(tl.float32) * wr).to(dt).to(tl.float32), 0.0)
    yi = tl.maximum(((xi * r).to(dt).to(tl.float32) * wi).to(dt).to(tl.float32), 0.0)
    yr = (yr * scale).to(dt).to(tl.float32)
    yi = (yi * scale).to(dt).to(tl.float32)
    j = tl.arange(0, BLOCK // 2) % P  # pair index inside its head
    pm = tl.arange(0, BLOCK // 2) < C // 2
    c = tl.load(COS + n.to(tl.int64) * P + j, mask=pm, other=0.0)
    s = tl.load(SIN + n.to(tl.int64) * P + j, mask=pm, other=0.0)
    out = row.to(tl.int64) * C
    _store_pairs(Y + out, yr, yi, BLOCK, C)
    _store_pairs(YR + out, yr * c - yi * s, yr * s + yi * c, BLOCK, C)


@triton.jit
def _rms_relu_rope_bwd(X, Wt, COS, SIN, GY, GYR, GX, DW, N, C, sxb, sxn, rows, scale, eps, P: tl.constexpr,
                       BLOCK: tl.constexpr, ROWS: tl.constexpr):
    pid = tl.program_id(0)
    wr, wi = _pairs(Wt, BLOCK, C)
    j = tl.arange(0, BLOCK // 2) % P
    pm = tl.arange(0, BLOCK // 2) < C // 2
    dt = GX.dtype.element_ty
    dwr = tl.zeros([BLOCK // 2], tl.float32)
    dwi = tl.zeros([BLOCK // 2], tl.float32)
    for k in range(ROWS):
        row = pid * ROWS + k
        if row < rows:
            b = row // N
            n = row % N
            xr, xi = _pairs(X + b.to(tl.int64) * sxb + n.to(tl.int64) * sxn, BLOCK, C)
            r = tl.rsqrt((tl.sum(xr * xr, 0) + tl.sum(xi * xi, 0)) / C + eps)
            hr, hi = xr * r, xi * r  # x̂, float32
            nr, ni = hr.to(dt).to(tl.float32), hi.to(dt).to(tl.float32)
            live_r = (nr * wr).to(dt).to(tl.float32) > 0.0
            live_i = (ni * wi).to(dt).to(tl.float32) > 0.0
            # Gradient at y: the plain stream plus the rotated stream turned back (Rᵀ), then the scale and ReLU.
            c = tl.load(COS + n.to(tl.int64) * P + j, mask=pm, other=0.0)
            s = tl.load(SIN + n.to(tl.int64) * P + j, mask=pm, other=0.0)
            g = row.to(tl.int64) * C
            gr, gi = _pairs(GY + g, BLOCK, C)
            rr, ri = _pairs(GYR + g, BLOCK, C)
            gr = tl.where(live_r, (gr + c * rr + s * ri) * scale, 0.0)
            gi = tl.where(live_i, (gi - s * rr + c * ri) * scale, 0.0)
            dwr += gr * nr
            dwi += gi * ni
            gr, gi = gr * wr, gi * wi  # gradient at the normalised row
            mean = (tl.sum(gr * hr, 0) + tl.sum(gi * hi, 0)) / C
            _store_pairs(GX + g, r * (gr - hr * mean), r * (gi - hi * mean), BLOCK, C)
    _store_pairs(DW + pid.to(tl.int64) * C, dwr, dwi, BLOCK, C)


def _block(C: int) -> tuple[int, int]:
    block = triton.next_power_of_2(C)
    return block, 8 if block >= 2048 else 4


def rms_relu_rope_forward(x, weight, cos, sin, scale: float, eps: float, num_warps: int | None = None):
    """x [B, N, C] (channel stride 1) → contiguous (y, y_rot) [B, N, C] in x's dtype."""
    B, N, C = x.shape
    P = cos.shape[-1]
    y, y_rot = torch.empty((B, N, C), dtype=x.dtype, device=x.device), torch.empty((B, N, C), dtype=x.dtype,
                                                                                   device=x.device)
    block, warps = _block(C)
    _rms_relu_rope_fwd[(B * N,)](x, weight.contiguous(), cos.contiguous(), sin.contiguous(), y, y_rot, N, C,
                                 x.stride(0), x.stride(1), float(scale), float(eps), P=P, BLOCK=block,
                                 num_warps=num_warps or warps)
    return y, y_rot


def rms_relu_rope_backward(x, weight, cos, sin, gy, gy_rot, scale: float, eps: float, rows_per_program: int = 8,
                           num_warps: int | None = None):
    """(dx [B, N, C] contiguous in x's dtype, dweight [C] float32) for upstream gradients gy, gy_rot [B, N, C]."""
    B, N, C = x.shape
    P = cos.shape[-1]
    rows = B * N
    programs = triton.cdiv(rows, rows_per_program)
    gx = torch.empty((B, N, C), dtype=x.dtype, device=x.device)
    dw = torch.empty((programs, C), dtype=torch.float32, device=x.device)
    block, warps = _block(C)
    _rms_relu_rope_bwd[(programs,)](x, weight.contiguous(), cos.contiguous(), sin.contiguous(), gy.contiguous(),
                                    gy_rot.contiguous(), gx, dw, N, C, x.stride(0), x.stride(1), rows, float(scale),
                                    float(eps), P=P, BLOCK=block, ROWS=rows_per_program, num_warps=num_warps or warps)
    return gx, dw.sum(0)
