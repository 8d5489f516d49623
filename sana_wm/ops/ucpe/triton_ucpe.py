"""Triton forward and backward of the camera branch's prologue (`naive.py` is the reference, step for step). The RMS
clamp is a compile-time switch (DOWNSCALE): off, xu is the rounded UCPE output and the clamp's adjoint terms vanish.

One program owns one token row of C = Hd·D channels and walks it in chunks of HC heads, each held as four
[heads × groups] component tiles: component j of group g of head h is channel h·D + 4g + j. In that layout the geometry
half's 4×4 products are scalar multiply-adds across the four tiles, the RoPE half's pairs are components (0, 1) and
(2, 3) of a group, and per-head sums are tile-row sums. Chunks keep the live state small, so that many rows are in
flight per SM (whole-row [32 × 32] tiles would be 55 % padding at Hd = 20, D = 112). The RMS norm's
statistic is a first pass over the row; the row stays in L1/L2 for the passes after it. So the norm, ReLU, scale,
UCPE, RMS clamp and the key's norm ratio are one pass that reads the projection once and writes the result once;
Inductor's kernels for the same chain wrote float32 UCPE intermediates and, in training, ran it again in the backward.

The backward recomputes the row and applies the adjoints of `naive_ucpe_clamp_backward`. With a norm it walks the row
twice, since the RMS norm's Jacobian needs a row sum of the first walk's gradient: the first walk stores that gradient
in a float32 scratch row per program and the second reads it back with x, rather than recomputing the whole chain.
The norm weight's gradient is a float32 partial row per program (summed by the caller: deterministic, no atomics),
read-modify-written once per token row: summing it in registers instead means walking the program's rows chunk by
chunk in the second pass, and then the rows no longer stay in L1 between the passes.

The kernels are bound by instructions and latency, not bytes. Hence each group's four components are one vector load
or store, the token's 4×4 matrix and RoPE angles are loaded once per row rather than once per chunk, and the
autotuner's list holds tiles of two groups per thread. Measurements and the variants removed: bench/RESULTS.md,
"Kernel design log", camera prologue.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _wide(v, DT: tl.constexpr):
    """Round float32 values to the working dtype and back (the composition's rounding points)."""
    return v.to(DT).to(tl.float32)


@triton.jit
def _chunk(c0, HD: tl.constexpr, D: tl.constexpr, HC: tl.constexpr, GB: tl.constexpr):
    """Heads c0 … c0+HC−1 of a row: head index, group index, channel offsets of component 0, mask."""
    h = c0 + tl.arange(0, HC)
    g = tl.arange(0, GB)
    return h, g, h[:, None] * D + 4 * g[None, :], (h < HD)[:, None] & (g < D // 4)[None, :]


@triton.jit
def _load4(ptr, offs, mask):
    """The four components of each group as float32 [heads × groups] tiles, read as one vector of 4 per group (four
    strided scalar loads cost 4× the load instructions, and this kernel is bound by instructions, not bytes)."""
    v = tl.load(ptr + offs[:, :, None] + tl.arange(0, 4)[None, None, :], mask=mask[:, :, None], other=0.0)
    even, odd = tl.split(tl.reshape(v.to(tl.float32), [v.shape[0], v.shape[1], 2, 2]))  # components (0, 2), (1, 3)
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    return x0, x1, x2, x3


@triton.jit
def _store4(ptr, offs, mask, v0, v1, v2, v3):
    dt = ptr.dtype.element_ty
    v = tl.join(tl.join(v0, v2), tl.join(v1, v3))  # [heads, groups, 2, 2] → component 2·i + j at [..., i, j]
    v = tl.reshape(v, [v.shape[0], v.shape[1], 4])
    tl.store(ptr + offs[:, :, None] + tl.arange(0, 4)[None, None, :], v.to(dt), mask=mask[:, :, None])


@triton.jit
def _row_rstd(xrow, C, norm_eps, HD: tl.constexpr, D: tl.constexpr, HC: tl.constexpr, GB: tl.constexpr):
    """1/√(mean(x²) + ε) over the whole row, in float32."""
    acc = tl.zeros([HC, GB], tl.float32)
    for c0 in range(0, HD, HC):
        _, _, offs, mask = _chunk(c0, HD, D, HC, GB)
        x0, x1, x2, x3 = _load4(xrow, offs, mask)
        acc += x0 * x0 + x1 * x1 + x2 * x2 + x3 * x3
    return tl.rsqrt(tl.sum(acc) / C + norm_eps)


@triton.jit
def _mat(M, i: tl.constexpr, DT: tl.constexpr):
    return _wide(tl.load(M + i).to(tl.float32), DT)


@triton.jit
def _row_consts(M, COS, SIN, n, g, D: tl.constexpr, DT: tl.constexpr):
    """What a token row's UCPE needs in every chunk, loaded once per row: its 4×4 matrix (16 values, row-major,
    rounded to the working dtype as the composition does) and the cos/sin of the two pairs of each RoPE-half group
    ((c, s) for components (0, 1), then for (2, 3); [1 × groups]). Loaded per chunk they were most of the kernel's
    load instructions (16 + 4 of 29 per chunk in the backward without a norm)."""
    m = (_mat(M, 0, DT), _mat(M, 1, DT), _mat(M, 2, DT), _mat(M, 3, DT), _mat(M, 4, DT), _mat(M, 5, DT),
         _mat(M, 6, DT), _mat(M, 7, DT), _mat(M, 8, DT), _mat(M, 9, DT), _mat(M, 10, DT), _mat(M, 11, DT),
         _mat(M, 12, DT), _mat(M, 13, DT), _mat(M, 14, DT), _mat(M, 15, DT))
    rot = (g >= D // 8) & (g < D // 4)
    p = n.to(tl.int64) * (D // 4) + 2 * (g - D // 8)
    rope = (tl.load(COS + p, mask=rot, other=1.0)[None, :], tl.load(SIN + p, mask=rot, other=0.0)[None, :],
            tl.load(COS + p + 1, mask=rot, other=1.0)[None, :], tl.load(SIN + p + 1, mask=rot, other=0.0)[None, :])
    return m, rope


@triton.jit
def _prenorm(x0, x1, x2, x3, w0, w1, w2, w3, r, scale, RELU: tl.constexpr, DT: tl.constexpr):
    """×rstd → ×weight → ReLU? → ×scale, each rounded as the composition: (a, n̂ rounded)."""
    n0, n1, n2, n3 = _wide(x0 * r, DT), _wide(x1 * r, DT), _wide(x2 * r, DT), _wide(x3 * r, DT)
    a0, a1, a2, a3 = _wide(n0 * w0, DT), _wide(n1 * w1, DT), _wide(n2 * w2, DT), _wide(n3 * w3, DT)
    if RELU:
        a0, a1, a2, a3 = tl.maximum(a0, 0.0), tl.maximum(a1, 0.0), tl.maximum(a2, 0.0), tl.maximum(a3, 0.0)
    a0, a1, a2, a3 = _wide(a0 * scale, DT), _wide(a1 * scale, DT), _wide(a2 * scale, DT), _wide(a3 * scale, DT)
    return a0, a1, a2, a3, n0, n1, n2, n3


@triton.jit
def _ucpe(a0, a1, a2, a3, m, rope, g, D: tl.constexpr, TRANSPOSE: tl.constexpr):
    """UCPE of a chunk (TRANSPOSE: its adjoint, Mᵀ and the inverse rotation), in float32, not rounded; m and rope
    from `_row_consts`."""
    if TRANSPOSE:
        g0 = m[0] * a0 + m[4] * a1 + m[8] * a2 + m[12] * a3
        g1 = m[1] * a0 + m[5] * a1 + m[9] * a2 + m[13] * a3
        g2 = m[2] * a0 + m[6] * a1 + m[10] * a2 + m[14] * a3
        g3 = m[3] * a0 + m[7] * a1 + m[11] * a2 + m[15] * a3
    else:
        g0 = m[0] * a0 + m[1] * a1 + m[2] * a2 + m[3] * a3
        g1 = m[4] * a0 + m[5] * a1 + m[6] * a2 + m[7] * a3
        g2 = m[8] * a0 + m[9] * a1 + m[10] * a2 + m[11] * a3
        g3 = m[12] * a0 + m[13] * a1 + m[14] * a2 + m[15] * a3
    ce, se, co, so = rope
    if TRANSPOSE:
        se, so = -se, -so
    geo = (g < D // 8)[None, :]
    return (tl.where(geo, g0, a0 * ce - a1 * se), tl.where(geo, g1, a0 * se + a1 * ce),
            tl.where(geo, g2, a2 * co - a3 * so), tl.where(geo, g3, a2 * so + a3 * co))


# Tiles picked per (C, Hd, norm or not, dtype) on first use by Triton's autotuner (a handful of launches): HC heads per
# chunk and warps trade live registers per row against rows in flight per SM; the backward also picks rows per program
# (each program keeps one float32 partial row of the weight gradient). The norm is part of the key: without it the
# queries' and the values' calls shared whichever tile was tuned first, though their register needs differ (128 vs 79
# per thread at 4 heads × 4 warps). The kernels are latency-bound (a chain of loads and per-head reductions per
# chunk), so the list includes tiles of two groups per thread, which trade occupancy for independent work.
_FWD_CONFIGS = [triton.Config({"HC": hc}, num_warps=w) for hc, w in ((4, 4), (4, 2), (2, 2), (8, 4), (8, 8))]
_BWD_CONFIGS = [triton.Config({"HC": hc, "ROWS": r}, num_warps=w)
                for hc, r, w in ((4, 8, 4), (4, 16, 4), (4, 4, 4), (2, 8, 2), (8, 8, 8), (8, 8, 4), (4, 8, 2))]
_MIN_ROWS = min(c.kwargs["ROWS"] for c in _BWD_CONFIGS)


@triton.autotune(configs=_FWD_CONFIGS, key=["C", "HD", "HAS_NORM"])
@triton.jit
def _ucpe_clamp_fwd(X, Wt, M, COS, SIN, XU, RATIO, N, C, sxb, sxn, scale, norm_eps, eps, HAS_NORM: tl.constexpr,
                    RELU: tl.constexpr, HD: tl.constexpr, D: tl.constexpr, HC: tl.constexpr, GB: tl.constexpr,
                    DOWNSCALE: tl.constexpr):
    row = tl.program_id(0)
    b, n = row // N, row % N
    DT: tl.constexpr = XU.dtype.element_ty
    xrow = X + b.to(tl.int64) * sxb + n.to(tl.int64) * sxn
    m, rope = _row_consts(M + row.to(tl.int64) * 16, COS, SIN, n, tl.arange(0, GB), D, DT)
    if HAS_NORM:
        r = _row_rstd(xrow, C, norm_eps, HD, D, HC, GB)
    for c0 in range(0, HD, HC):
        h, g, offs, mask = _chunk(c0, HD, D, HC, GB)
        a0, a1, a2, a3 = _load4(xrow, offs, mask)
        if HAS_NORM:
            w0, w1, w2, w3 = _load4(Wt, offs, mask)
            a0, a1, a2, a3, _, _, _, _ = _prenorm(a0, a1, a2, a3, w0, w1, w2, w3, r, scale, RELU, DT)
        u0, u1, u2, u3 = _ucpe(a0, a1, a2, a3, m, rope, g, D, False)
        u0, u1, u2, u3 = _wide(u0, DT), _wide(u1, DT), _wide(u2, DT), _wide(u3, DT)
        sa = tl.sum(a0 * a0 + a1 * a1 + a2 * a2 + a3 * a3, 1)  # per head
        if DOWNSCALE:  # the post-UCPE RMS clamp (without it xu is u, already rounded)
            su = tl.sum(u0 * u0 + u1 * u1 + u2 * u2 + u3 * u3, 1)
            f = tl.minimum(tl.sqrt(sa / D + eps) / tl.maximum(tl.sqrt(su / D + eps), eps), 1.0)[:, None]
            v0, v1, v2, v3 = _wide(u0 * f, DT), _wide(u1 * f, DT), _wide(u2 * f, DT), _wide(u3 * f, DT)
        else:
            v0, v1, v2, v3 = u0, u1, u2, u3
        _store4(XU + row.to(tl.int64) * C, offs, mask, v0, v1, v2, v3)
        ratio = tl.maximum(tl.sqrt(tl.sum(v0 * v0 + v1 * v1 + v2 * v2 + v3 * v3, 1)), eps) / tl.maximum(tl.sqrt(sa), eps)
        tl.store(RATIO + row.to(tl.int64) * HD + h, ratio * ratio, mask=h < HD)


@triton.jit
def _chunk_grad(xrow, Wt, m, rope, GXU, GRATIO, row, c0, C, r, scale, eps, HAS_NORM: tl.constexpr,
                RELU: tl.constexpr, HD: tl.constexpr, D: tl.constexpr, HC: tl.constexpr, GB: tl.constexpr,
                DT: tl.constexpr, DOWNSCALE: tl.constexpr):
    """The adjoint of `naive_ucpe_clamp_backward` for one chunk of heads, up to the gradient at the prenorm's output
    (after ×scale, the ReLU mask and ×weight when there is a norm): (d, n̂ rounded, g before ×weight, x, offs, mask)."""
    h, g, offs, mask = _chunk(c0, HD, D, HC, GB)
    x0, x1, x2, x3 = _load4(xrow, offs, mask)
    if HAS_NORM:
        w0, w1, w2, w3 = _load4(Wt, offs, mask)
        a0, a1, a2, a3, n0, n1, n2, n3 = _prenorm(x0, x1, x2, x3, w0, w1, w2, w3, r, scale, RELU, DT)
    else:
        a0, a1, a2, a3, n0, n1, n2, n3 = x0, x1, x2, x3, x0, x1, x2, x3
    # Forward again: u, the clamp factor f, xu, the norms and the ratio.
    u0, u1, u2, u3 = _ucpe(a0, a1, a2, a3, m, rope, g, D, False)
    u0, u1, u2, u3 = _wide(u0, DT), _wide(u1, DT), _wide(u2, DT), _wide(u3, DT)
    sa = tl.sum(a0 * a0 + a1 * a1 + a2 * a2 + a3 * a3, 1)
    su = tl.sum(u0 * u0 + u1 * u1 + u2 * u2 + u3 * u3, 1)
    rho_a, rho_u = tl.sqrt(sa / D + eps), tl.sqrt(su / D + eps)
    den = tl.maximum(rho_u, eps)
    q = rho_a / den
    if DOWNSCALE:
        f = tl.minimum(q, 1.0)[:, None]
    else:  # no clamp: f ≡ 1 and, below, no gradient through it
        f = (q * 0.0 + 1.0)[:, None]
    v0, v1, v2, v3 = _wide(u0 * f, DT), _wide(u1 * f, DT), _wide(u2 * f, DT), _wide(u3 * f, DT)
    na, nu = tl.sqrt(sa), tl.sqrt(tl.sum(v0 * v0 + v1 * v1 + v2 * v2 + v3 * v3, 1))
    na_c = tl.maximum(na, eps)
    ratio = tl.maximum(nu, eps) / na_c
    ratio = ratio * ratio
    # Adjoint: the ratio's pull on xu, then the clamp, then UCPEᵀ, then the clamp's and the ratio's pull on a.
    gr = tl.load(GRATIO + row.to(tl.int64) * HD + h, mask=h < HD, other=0.0)
    pull = tl.where(nu >= eps, 2.0 * gr / (na_c * na_c), 0.0)[:, None]
    G0, G1, G2, G3 = _load4(GXU + row.to(tl.int64) * C, offs, mask)
    G0, G1, G2, G3 = G0 + pull * v0, G1 + pull * v1, G2 + pull * v2, G3 + pull * v3
    if DOWNSCALE:
        dq = tl.where(q <= 1.0, tl.sum(G0 * u0 + G1 * u1 + G2 * u2 + G3 * u3, 1), 0.0)
    else:
        dq = tl.zeros_like(q)
    d_rho_u = tl.where(rho_u >= eps, -dq * rho_a / (den * den), 0.0)
    cu = (d_rho_u / (D * rho_u))[:, None]
    d0, d1, d2, d3 = _ucpe(f * G0 + cu * u0, f * G1 + cu * u1, f * G2 + cu * u2, f * G3 + cu * u3, m, rope, g, D,
                           True)
    ca = (dq / den / (D * rho_a) - tl.where(na >= eps, 2.0 * gr * ratio / (na_c * na_c), 0.0))[:, None]
    d0, d1, d2, d3 = d0 + ca * a0, d1 + ca * a1, d2 + ca * a2, d3 + ca * a3
    g0, g1, g2, g3 = d0, d1, d2, d3
    if HAS_NORM:  # back through ×scale and the ReLU; the caller takes ×weight and the RMS norm
        if RELU:
            g0, g1 = tl.where(n0 * w0 > 0.0, g0, 0.0), tl.where(n1 * w1 > 0.0, g1, 0.0)
            g2, g3 = tl.where(n2 * w2 > 0.0, g2, 0.0), tl.where(n3 * w3 > 0.0, g3, 0.0)
        g0, g1, g2, g3 = g0 * scale, g1 * scale, g2 * scale, g3 * scale
        d0, d1, d2, d3 = g0 * w0, g1 * w1, g2 * w2, g3 * w3
    return d0, d1, d2, d3, n0, n1, n2, n3, g0, g1, g2, g3, x0, x1, x2, x3, offs, mask


@triton.autotune(configs=_BWD_CONFIGS, key=["C", "HD", "HAS_NORM"], reset_to_zero=["DW"])
@triton.jit
def _ucpe_clamp_bwd(X, Wt, M, COS, SIN, GXU, GRATIO, DX, DW, SC, N, C, rows, sxb, sxn, scale, norm_eps, eps,
                    HAS_NORM: tl.constexpr, RELU: tl.constexpr, HD: tl.constexpr, D: tl.constexpr, HC: tl.constexpr,
                    GB: tl.constexpr, ROWS: tl.constexpr, DOWNSCALE: tl.constexpr):
    pid = tl.program_id(0)
    DT: tl.constexpr = DX.dtype.element_ty
    for k in range(ROWS):
        row = pid * ROWS + k
        if row < rows:
            b, n = row // N, row % N
            xrow = X + b.to(tl.int64) * sxb + n.to(tl.int64) * sxn
            m, rope = _row_consts(M + row.to(tl.int64) * 16, COS, SIN, n, tl.arange(0, GB), D, DT)
            dxrow = DX + row.to(tl.int64) * C
            if HAS_NORM:
                r = _row_rstd(xrow, C, norm_eps, HD, D, HC, GB)
                # Pass 1: the weight gradient (into this program's private float32 row of DW) and mean(g·w·x̂).
                acc = tl.zeros([HC, GB], tl.float32)
                for c0 in range(0, HD, HC):
                    d0, d1, d2, d3, n0, n1, n2, n3, g0, g1, g2, g3, x0, x1, x2, x3, offs, mask = _chunk_grad(
                        xrow, Wt, m, rope, GXU, GRATIO, row, c0, C, r, scale, eps, HAS_NORM, RELU, HD, D,
                        HC, GB, DT, DOWNSCALE)
                    acc += (d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3) * r
                    dwrow = DW + pid.to(tl.int64) * C
                    p0, p1, p2, p3 = _load4(dwrow, offs, mask)
                    _store4(dwrow, offs, mask, p0 + g0 * n0, p1 + g1 * n1, p2 + g2 * n2, p3 + g3 * n3)
                    _store4(SC + pid.to(tl.int64) * C, offs, mask, d0, d1, d2, d3)
                mean = tl.sum(acc) / C
                # Pass 2: the stored gradient through the RMS norm's Jacobian (x again from L1/L2).
                for c0 in range(0, HD, HC):
                    _, _, offs, mask = _chunk(c0, HD, D, HC, GB)
                    d0, d1, d2, d3 = _load4(SC + pid.to(tl.int64) * C, offs, mask)
                    x0, x1, x2, x3 = _load4(xrow, offs, mask)
                    _store4(dxrow, offs, mask, r * (d0 - x0 * r * mean), r * (d1 - x1 * r * mean),
                            r * (d2 - x2 * r * mean), r * (d3 - x3 * r * mean))
            else:
                for c0 in range(0, HD, HC):
                    d0, d1, d2, d3, _, _, _, _, _, _, _, _, _, _, _, _, offs, mask = _chunk_grad(
                        xrow, Wt, m, rope, GXU, GRATIO, row, c0, C, 1.0, scale, eps, HAS_NORM, RELU, HD, D,
                        HC, GB, DT, DOWNSCALE)
                    _store4(dxrow, offs, mask, d0, d1, d2, d3)


def ucpe_clamp_forward(x, mat, cos, sin, weight, relu: bool, scale: float, norm_eps: float, eps: float,
                       num_heads: int, downscale: bool = True):
    """x [B, N, C] (channel stride 1), mat [B, N, 4, 4] contiguous → (xu [B, N, C] contiguous in x's dtype, ratio
    [B, N, Hd] float32); `downscale` turns the RMS clamp on."""
    B, N, C = x.shape
    D = C // num_heads
    xu = torch.empty((B, N, C), dtype=x.dtype, device=x.device)
    ratio = torch.empty((B, N, num_heads), dtype=torch.float32, device=x.device)
    has_norm = weight is not None
    _ucpe_clamp_fwd[(B * N,)](x, weight if has_norm else x, mat, cos, sin, xu, ratio, N, C, x.stride(0), x.stride(1),
                              float(scale), float(norm_eps), float(eps), HAS_NORM=has_norm, RELU=bool(relu),
                              HD=num_heads, D=D, GB=triton.next_power_of_2(D // 4), DOWNSCALE=bool(downscale))
    return xu, ratio


def ucpe_clamp_backward(x, mat, cos, sin, weight, relu: bool, scale: float, norm_eps: float, eps: float,
                        num_heads: int, g_xu, g_ratio, downscale: bool = True):
    """(dx [B, N, C] contiguous in x's dtype, dweight [C] float32 or None) for upstream g_xu [B, N, C] and g_ratio
    [B, N, Hd]."""
    B, N, C = x.shape
    D = C // num_heads
    rows = B * N
    has_norm = weight is not None
    dx = torch.empty((B, N, C), dtype=x.dtype, device=x.device)
    # One float32 partial row per program, for the most programs any tile may launch; unused rows stay zero.
    dw = torch.zeros((triton.cdiv(rows, _MIN_ROWS) if has_norm else 1, C), dtype=torch.float32, device=x.device)
    # ... and one float32 scratch row per program for the gradient before the RMS norm's Jacobian (pass 1 → pass 2).
    scratch = torch.empty_like(dw) if has_norm else dw
    _ucpe_clamp_bwd[lambda meta: (triton.cdiv(rows, meta["ROWS"]),)](
        x, weight if has_norm else x, mat, cos, sin, g_xu.contiguous(), g_ratio.float().contiguous(), dx, dw, scratch,
        N, C, rows, x.stride(0), x.stride(1), float(scale), float(norm_eps), float(eps), HAS_NORM=has_norm,
        RELU=bool(relu), HD=num_heads, D=D, GB=triton.next_power_of_2(D // 4), DOWNSCALE=bool(downscale))
    return dx, (dw.sum(0) if has_norm else None)
