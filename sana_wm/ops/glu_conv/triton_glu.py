"""Triton backward of the FFN's GLU with the depthwise conv's bias folded in (`naive.py`: `naive_glu_backward`).

z is the conv's output before its bias, in the token layout [rows, 2h]; value = z[:, :h] + b[:h], gate = z[:, h:] +
b[h:], out = value · SiLU(gate). One program owns ROWS rows × BLOCK_C channel pairs: it reads value, gate and dout once,
writes both halves of dz, and keeps the column sums of dz (the bias gradient) in registers, written once as a float32
partial row per program (summed by the caller: deterministic, no atomics). Inductor's kernel for the same adjoint is a
`cat` of the two halves whose every element loads through masks, and the bias gradient a second pass over dz.

The tile (128 rows × 16 per step × 64 channel pairs, 4 warps) keeps 8 elements per thread: wider tiles need so many
registers that too few warps fit per SM. The sweep that chose it: bench/RESULTS.md, "Kernel design log", GLU backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# The launch tile: rows per program (a multiple of rb; 128 → 145 partial rows at 161 frames, 7.8 MB of float32), rows
# per step of a program's loop, channel pairs per program, warps. Read at call time, so a benchmark can set it.
TILE = dict(rows=128, rb=16, block_c=64, num_warps=4)


@triton.jit
def _glu_bwd_kernel(Z, BIAS, DO, DZ, DBP, R, HH, szr, sdor, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr,
                    RB: tl.constexpr, BLOCK_C: tl.constexpr):
    pr, pc = tl.program_id(0), tl.program_id(1)
    cols = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = cols < HH
    DT: tl.constexpr = DZ.dtype.element_ty
    if HAS_BIAS:
        bv = tl.load(BIAS + cols, mask=mc, other=0.0).to(tl.float32)
        bg = tl.load(BIAS + HH + cols, mask=mc, other=0.0).to(tl.float32)
    # Column sums accumulate as [RB, BLOCK_C] tiles and are reduced across rows once, after the loop (a reduction
    # across warps per step would go through shared memory every time).
    acc_v = tl.zeros([RB, BLOCK_C], tl.float32)
    acc_g = tl.zeros([RB, BLOCK_C], tl.float32)
    for r0 in range(pr * ROWS, pr * ROWS + ROWS, RB):
        rows = (r0 + tl.arange(0, RB)).to(tl.int64)
        m = (rows < R)[:, None] & mc[None, :]
        zrow = Z + rows[:, None] * szr + cols[None, :]
        v = tl.load(zrow, mask=m, other=0.0).to(tl.float32)
        g = tl.load(zrow + HH, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            v += bv[None, :]
            g += bg[None, :]
        do = tl.load(DO + rows[:, None] * sdor + cols[None, :], mask=m, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        dv = (do * g * sig).to(DT)
        dg = (do * v * sig * (1.0 + g * (1.0 - sig))).to(DT)
        dzrow = DZ + rows[:, None] * (2 * HH) + cols[None, :]
        tl.store(dzrow, dv, mask=m)
        tl.store(dzrow + HH, dg, mask=m)
        # the bias gradient sums the rounded dz the conv sees; masked rows loaded zeros, so they add nothing
        acc_v += dv.to(tl.float32)
        acc_g += dg.to(tl.float32)
    prow = DBP + pr.to(tl.int64) * (2 * HH)
    tl.store(prow + cols, tl.sum(acc_v, 0), mask=mc)
    tl.store(prow + HH + cols, tl.sum(acc_g, 0), mask=mc)


def glu_backward(z: torch.Tensor, bias: torch.Tensor | None, dout: torch.Tensor, **tile):
    """z [R, 2h], dout [R, h] (channel stride 1), bias [2h] or None → (dz [R, 2h] contiguous in z's dtype, dbias [2h]
    float32; its value without a bias is the column sum of dz). Keywords override `TILE` (rows, rb, block_c,
    num_warps): for tuning only, the result does not depend on them (`bench/ffn_ops.py` sweeps them)."""
    unknown = set(tile) - set(TILE)
    if unknown:
        raise TypeError(f"glu_backward: unknown tile keyword(s) {sorted(unknown)}; expected some of {sorted(TILE)}")
    t = {**TILE, **tile}
    rows, rb, block_c = t["rows"], t["rb"], t["block_c"]
    if rows % rb:
        raise ValueError(f"glu_backward: rows per program ({rows}) must be a multiple of rows per step ({rb})")
    R, C2 = z.shape
    hh = C2 // 2
    dz = torch.empty((R, C2), dtype=z.dtype, device=z.device)
    parts = torch.empty((triton.cdiv(R, rows), C2), dtype=torch.float32, device=z.device)
    grid = (parts.shape[0], triton.cdiv(hh, block_c))
    _glu_bwd_kernel[grid](z, bias if bias is not None else z, dout, dz, parts, R, hh, z.stride(0), dout.stride(0),
                          HAS_BIAS=bias is not None, ROWS=rows, RB=rb, BLOCK_C=block_c, num_warps=t["num_warps"])
    return dz, parts.sum(0)
