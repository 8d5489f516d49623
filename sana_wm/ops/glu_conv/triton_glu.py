"""Fused Triton forward of the FFN's depthwise 3×3 conv + bias + GLU (inference), from token layout.

The composite path (`__init__.py`) runs three passes over the FFN's widest activation ([B, T, S, 2C], 2C = 11 200):
Inductor's SiLU kernel, cuDNN's depthwise conv (which writes the whole 2C-channel result back) and Inductor's GLU.
This kernel reads the SiLU'd activation once and writes only the C-channel GLU output: one program owns a block of
BLOCK_P token positions × BLOCK_C channels of one frame and gathers the nine taps of the value channel c and of its
gate channel c + C (neighbouring taps hit L1/L2), so the 2C-channel conv result never reaches memory.

SiLU stays outside, in the producer's element-wise kernel: each input element feeds nine taps, and evaluating SiLU
per tap made an earlier one-pass kernel (SiLU inside) bound by the special-function units (bench/RESULTS.md).

Numerics follow the composite path: bf16 (or the working dtype) products summed in float32, the conv result
rounded to the working dtype as cuDNN returns it, then value ⊙ SiLU(gate) in float32, rounded once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _dwconv_glu_kernel(
    X, Wt, Bias, O, H, W, C,
    HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pp = tl.program_id(0)  # position blocks fastest: neighbouring programs share their halo rows in L2
    pc = tl.program_id(1)
    f = tl.program_id(2).to(tl.int64)  # frame (b·T + t)
    S = H * W
    rp = pp * BLOCK_P + tl.arange(0, BLOCK_P)
    rc = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    mp, mc = rp < S, rc < C
    y = rp // W
    x = rp % W
    C2 = 2 * C
    x_base = X + f * S * C2
    acc_v = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for tap in tl.static_range(9):
        dy = tap // 3 - 1
        dx = tap % 3 - 1
        ok = mp & (y + dy >= 0) & (y + dy < H) & (x + dx >= 0) & (x + dx < W)
        m = ok[:, None] & mc[None, :]
        src = x_base + (rp + dy * W + dx)[:, None] * C2 + rc[None, :]
        wv = tl.load(Wt + rc * 9 + tap, mask=mc, other=0.0).to(tl.float32)
        wg = tl.load(Wt + (rc + C) * 9 + tap, mask=mc, other=0.0).to(tl.float32)
        acc_v += tl.load(src, mask=m, other=0.0).to(tl.float32) * wv[None, :]
        acc_g += tl.load(src + C, mask=m, other=0.0).to(tl.float32) * wg[None, :]
    if HAS_BIAS:
        acc_v += tl.load(Bias + rc, mask=mc, other=0.0).to(tl.float32)[None, :]
        acc_g += tl.load(Bias + C + rc, mask=mc, other=0.0).to(tl.float32)[None, :]
    value = acc_v.to(O.dtype.element_ty).to(tl.float32)  # the conv result in the working dtype, as cuDNN returns it
    gate = acc_g.to(O.dtype.element_ty).to(tl.float32)
    out = value * gate * tl.sigmoid(gate)
    o_ptr = O + f * S * C + rp[:, None] * C + rc[None, :]
    tl.store(o_ptr, out.to(O.dtype.element_ty), mask=mp[:, None] & mc[None, :])


def dwconv_glu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, hw: tuple[int, int],
               block_p: int = 64, block_c: int = 64, num_warps: int = 4) -> torch.Tensor:
    """x = SiLU(h) [B, T, S, 2C] (CUDA), weight [2C, 1, 3, 3], bias [2C] | None → value ⊙ SiLU(gate) [B, T, S, C]."""
    x = x.contiguous()
    B, T, S, C2 = x.shape
    C = C2 // 2
    out = torch.empty(B, T, S, C, device=x.device, dtype=x.dtype)
    w = weight.to(x.dtype).contiguous()
    b = bias.to(x.dtype).contiguous() if bias is not None else w
    grid = (triton.cdiv(S, block_p), triton.cdiv(C, block_c), B * T)
    _dwconv_glu_kernel[grid](x, w, b, out, hw[0], hw[1], C, HAS_BIAS=bias is not None, BLOCK_P=block_p,
                             BLOCK_C=block_c, num_warps=num_warps)
    return out
