"""Triton forward of the bidirectional short conv (`naive.py` is the reference): one pass, float32 accumulation.

One program owns one (batch, frame) and a [BLOCK_S tokens × BLOCK_C channels] tile and reads the 2K−1 frames around
it. Frames are the fastest-varying program axis, so programs in flight at once share most of their taps through L2
and each input byte comes from HBM about once. Input strides are free (the key is a column slice of the fused qkv
GEMM output); the output is contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _short_conv_kernel(X, Wt, Y, T, S, C, sxb, sxt, sxs, K: tl.constexpr, BLOCK_S: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    bt = tl.program_id(0)
    b = (bt // T).to(tl.int64)
    t = bt % T
    rs = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    rc = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = rc < C
    mask = (rs < S)[:, None] & mc[None, :]
    base = X + b * sxb + rs[:, None].to(tl.int64) * sxs + rc[None, :]
    w = tl.load(Wt + rc * K + (K - 1), mask=mc, other=0.0).to(tl.float32)
    acc = tl.load(base + t.to(tl.int64) * sxt, mask=mask, other=0.0).to(tl.float32) * w[None, :]
    for d in tl.static_range(1, K):
        w = tl.load(Wt + rc * K + (K - 1 - d), mask=mc, other=0.0).to(tl.float32)
        before = tl.load(base + (t - d).to(tl.int64) * sxt, mask=mask & (t >= d), other=0.0).to(tl.float32)
        after = tl.load(base + (t + d).to(tl.int64) * sxt, mask=mask & (t + d < T), other=0.0).to(tl.float32)
        acc += (before + after) * w[None, :]
    out = Y + bt.to(tl.int64) * S * C + rs[:, None].to(tl.int64) * C + rc[None, :]
    tl.store(out, acc.to(Y.dtype.element_ty), mask=mask)


def short_conv_forward(x: torch.Tensor, weight: torch.Tensor, block_s: int = 16, block_c: int = 256,
                       num_warps: int = 4) -> torch.Tensor:
    """x [B, T, S, C] (channel stride 1), weight [C, K] → contiguous [B, T, S, C] in x's dtype."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    B, T, S, C = x.shape
    K = weight.shape[1]
    y = torch.empty((B, T, S, C), dtype=x.dtype, device=x.device)
    grid = (B * T, triton.cdiv(S, block_s), triton.cdiv(C, block_c))
    _short_conv_kernel[grid](x, weight.contiguous(), y, T, S, C, x.stride(0), x.stride(1), x.stride(2), K=K,
                             BLOCK_S=block_s, BLOCK_C=block_c, num_warps=num_warps)
    return y
