"""Fused Triton forward of the FFN middle, SiLU → depthwise 3×3 conv (+ bias) → GLU (inference), in token layout.

The composite path (`__init__.py`) makes three passes over the FFN's widest activation ([B, T, S, 2C], 2C = 11 200):
Inductor's SiLU kernel, cuDNN's depthwise conv (which writes the whole 2C-channel result back) and Inductor's GLU.
This kernel reads the activation once and writes only the C-channel GLU output.

One program owns one frame and a block of BLOCK_C channels (the value channels c and their gate channels c + C) and
walks the frame's image rows top to bottom. Each input row is loaded once, SiLU is applied once per element, and its
two horizontal neighbours (x ± 1, zero outside the row) are formed by multiplying with constant 0/1 shift matrices
on the tensor cores — exact, since every output picks exactly one input. The row then adds its three vertical taps
to three running output rows (above, same, below); the row above is complete at that point and is written out as
value ⊙ SiLU(gate). Two earlier versions were slower than the composite path in the compiled model
(bench/RESULTS.md): one evaluated SiLU per tap (nine times per element, bound by the special-function units), one
gathered the nine taps from L1/L2 per output tile (≈ 1 TB/s).

Numerics follow the composite path: SiLU in float32 rounded to the working dtype (the conv's input in eager), taps
summed in float32, the conv result rounded to the working dtype (as cuDNN returns it), then value ⊙ SiLU(gate) in
float32, rounded once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_EMULATE = {"on": False}  # set by checks that run this kernel in Triton's CPU interpreter (its bf16 dot is broken)


@triton.jit
def _shift(p, x, EMULATE: tl.constexpr):
    """p @ x for a 0/1 shift matrix p (exact: one non-zero per row) in float32."""
    if EMULATE or x.dtype == tl.float32:
        out = tl.dot(p.to(tl.float32), x.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(p.to(x.dtype), x)
    return out


@triton.jit
def _taps(xm, x0, xp, Wt, rc, mc, row: tl.constexpr):
    """Σ_kx w[c, row, kx] · x_{kx}: one kernel row's three taps over a shifted input row [BLOCK_W, BLOCK_C]."""
    w0 = tl.load(Wt + rc * 9 + row * 3, mask=mc, other=0.0).to(tl.float32)
    w1 = tl.load(Wt + rc * 9 + row * 3 + 1, mask=mc, other=0.0).to(tl.float32)
    w2 = tl.load(Wt + rc * 9 + row * 3 + 2, mask=mc, other=0.0).to(tl.float32)
    return xm * w0[None, :] + x0 * w1[None, :] + xp * w2[None, :]


@triton.jit
def _glu(acc_v, acc_g, bias_v, bias_g, dtype: tl.constexpr):
    """value ⊙ SiLU(gate) of one finished output row, from the conv results rounded to `dtype` as cuDNN returns them."""
    value = (acc_v + bias_v[None, :]).to(dtype).to(tl.float32)
    gate = (acc_g + bias_g[None, :]).to(dtype).to(tl.float32)
    return (value * gate * tl.sigmoid(gate)).to(dtype)


# Channel-block width and warps are picked per shape on first use (a few candidates; register pressure of the six
# running [BLOCK_W, BLOCK_C] float32 rows decides).
@triton.autotune(configs=[triton.Config({"BLOCK_C": bc}, num_warps=nw) for bc, nw in ((16, 4), (32, 4), (32, 8),
                                                                                      (64, 8))],
                 key=["H", "W", "C"])
@triton.jit
def _silu_dwconv_glu_kernel(
    X, Wt, Bias, O, H, W, C,
    HAS_BIAS: tl.constexpr, EMULATE: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pc = tl.program_id(0)
    f = tl.program_id(1).to(tl.int64)  # frame (b·T + t)
    rc = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    rw = tl.arange(0, BLOCK_W)
    mc, mw = rc < C, rw < W
    m = mw[:, None] & mc[None, :]
    C2 = 2 * C
    x_base = X + f * H * W * C2
    o_base = O + f * H * W * C
    ri, rj = rw[:, None], rw[None, :]
    p_left = tl.where(rj == ri - 1, 1.0, 0.0)  # (p_left @ row)[x] = row[x − 1]
    p_right = tl.where(rj == ri + 1, 1.0, 0.0)  # (p_right @ row)[x] = row[x + 1]; rows ≥ W load as 0
    if HAS_BIAS:
        bias_v = tl.load(Bias + rc, mask=mc, other=0.0).to(tl.float32)
        bias_g = tl.load(Bias + C + rc, mask=mc, other=0.0).to(tl.float32)
    else:
        bias_v = tl.zeros((BLOCK_C,), dtype=tl.float32)
        bias_g = tl.zeros((BLOCK_C,), dtype=tl.float32)
    zero = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    above_v, above_g, cur_v, cur_g = zero, zero, zero, zero  # running output rows y − 1 and y
    for y in range(0, H):
        offs = (y * W + rw)[:, None] * C2 + rc[None, :]
        xv = tl.load(x_base + offs, mask=m, other=0.0)
        xg = tl.load(x_base + offs + C, mask=m, other=0.0)
        xv = (xv.to(tl.float32) * tl.sigmoid(xv.to(tl.float32))).to(xv.dtype)  # SiLU, in the working dtype
        xg = (xg.to(tl.float32) * tl.sigmoid(xg.to(tl.float32))).to(xg.dtype)
        vm, vp = _shift(p_left, xv, EMULATE), _shift(p_right, xv, EMULATE)
        gm, gp = _shift(p_left, xg, EMULATE), _shift(p_right, xg, EMULATE)
        v0, g0 = xv.to(tl.float32), xg.to(tl.float32)
        # Input row y feeds output row y − 1 through kernel row 2, row y through kernel row 1, row y + 1 through 0.
        above_v += _taps(vm, v0, vp, Wt, rc, mc, 2)
        above_g += _taps(gm, g0, gp, Wt, rc + C, mc, 2)
        cur_v += _taps(vm, v0, vp, Wt, rc, mc, 1)
        cur_g += _taps(gm, g0, gp, Wt, rc + C, mc, 1)
        below_v = _taps(vm, v0, vp, Wt, rc, mc, 0)
        below_g = _taps(gm, g0, gp, Wt, rc + C, mc, 0)
        # Output row y − 1 is complete.
        out = _glu(above_v, above_g, bias_v, bias_g, O.dtype.element_ty)
        tl.store(o_base + ((y - 1) * W + rw)[:, None] * C + rc[None, :], out, mask=m & (y >= 1))
        above_v, above_g, cur_v, cur_g = cur_v, cur_g, below_v, below_g
    # The last row (the row below it is the zero padding).
    out = _glu(above_v, above_g, bias_v, bias_g, O.dtype.element_ty)
    tl.store(o_base + ((H - 1) * W + rw)[:, None] * C + rc[None, :], out, mask=m)


def silu_dwconv_glu(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    hw: tuple[int, int]) -> torch.Tensor:
    """h [B, T, S, 2C] (CUDA, before SiLU), weight [2C, 1, 3, 3], bias [2C] | None → value ⊙ SiLU(gate) [B, T, S, C],
    (value, gate) = DWConv3×3(SiLU(h)) per frame with zero padding."""
    h = h.contiguous()
    B, T, S, C2 = h.shape
    C = C2 // 2
    H, W = hw
    out = torch.empty(B, T, S, C, device=h.device, dtype=h.dtype)
    w = weight.to(h.dtype).contiguous()
    b = bias.to(h.dtype).contiguous() if bias is not None else w
    grid = lambda meta: (triton.cdiv(C, meta["BLOCK_C"]), B * T)  # noqa: E731
    _silu_dwconv_glu_kernel[grid](h, w, b, out, H, W, C, HAS_BIAS=bias is not None, EMULATE=_EMULATE["on"],
                                  BLOCK_W=max(16, triton.next_power_of_2(W)))
    return out
