"""Triton depthwise 3×3 conv (stride 1, zero padding 1) on the token layout: the forward, and the weight and bias
gradient. The reference is `torch.nn.functional.conv2d(..., groups=C)` (`naive.py` composes the FFN middle with it).

Layout: x [N, H, W, C] contiguous (N = frames, the token layout [B·T, S, C] viewed as images), weight as [9, C]
float32 (tap-major: the 3×3 kernel of channel c is column c, row 3·kh + kw), output [N, H, W, C] in x's dtype.

Forward: one program owns BP consecutive positions of one frame (flattened h·W + w, so a tile crosses row ends) × BC
channels. For each of the nine taps it loads the tile shifted by (dh·W + dw) positions, masked where the neighbour
falls outside the frame, and accumulates in float32; the shifted tiles overlap, so all but the first come mostly from
L1/L2. Positions are the fastest program axis, so the tiles above and below (the vertical halo) are in flight at the
same time. Offsets within a frame are int32 (the caller checks (S + W + 1)·C < 2³¹) and each load is a contiguous run
of channels; the frame offset is int64. The weights of a tile's channels are nine float32 rows loaded once.
The data gradient is the same kernel with the flipped kernel (a stride-1 "same" conv's transpose is the correlation
with the flipped taps), as `_DepthwiseConv3x3` already does with cuDNN.

Weight gradient: dW[k, c] = Σ over frames and positions of dy[p, c] · x[p + shift_k, c], db[c] = Σ dy[p, c]. One
program owns BC channels and a contiguous run of (frame, position tile) pairs; it keeps ten [BP, BC] float32
accumulators in registers through its loop and reduces them over positions once at the end (no cross-warp reduction
per tile), writing a float32 partial row per program that the caller sums (deterministic, no atomics).

Why not cuDNN: its depthwise kernels for this shape (`conv2d_c1_k1_nhwc_specialized`, `wgrad2d_c1_k1_nhwc`) move
data at about 2 TB/s on an H200 (0.50 and 0.55 ms per call at 161 frames, 1 GB of minimum traffic each; bench/
RESULTS.md run 34).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Launch tiles (positions per tile, channels per tile, warps; the weight gradient also its number of position splits
# per channel block, 0 = derived from the SM count). Read at call time, so a benchmark can sweep them.
FWD_TILE = dict(bp=32, bc=128, num_warps=4, rows=0)
WGRAD_TILE = dict(bp=32, bc=64, num_warps=4, splits=0)


@triton.jit
def _tap(Xn, offs, s, hh, ww, mc, dh: tl.constexpr, dw: tl.constexpr, S, H, W, C):
    """x at the positions shifted by (dh, dw), zero outside the frame, as float32 [BP, BC]."""
    valid = s < S
    if dh < 0:
        valid = valid & (hh >= -dh)
    if dh > 0:
        valid = valid & (hh < H - dh)
    if dw < 0:
        valid = valid & (ww >= -dw)
    if dw > 0:
        valid = valid & (ww < W - dw)
    return tl.load(Xn + offs + (dh * W + dw) * C, mask=valid[:, None] & mc[None, :], other=0.0).to(tl.float32)


@triton.jit
def _dw_fwd_kernel(X, W9, BIAS, Y, S, H, W, C, HAS_BIAS: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    ps, pc, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    s = ps * BP + tl.arange(0, BP)
    c = pc * BC + tl.arange(0, BC)
    mc = c < C
    hh = s // W
    ww = s - hh * W
    frame = n.to(tl.int64) * S * C
    Xn = X + frame
    offs = s[:, None] * C + c[None, :]
    acc = tl.zeros([BP, BC], tl.float32)
    for kh in tl.static_range(3):
        for kw in tl.static_range(3):
            wk = tl.load(W9 + (kh * 3 + kw) * C + c, mask=mc, other=0.0)
            acc += _tap(Xn, offs, s, hh, ww, mc, kh - 1, kw - 1, S, H, W, C) * wk[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + c, mask=mc, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + frame + offs, acc.to(Y.dtype.element_ty), mask=(s < S)[:, None] & mc[None, :])


@triton.jit
def _dw_fwd_rows_kernel(X, W9, BIAS, Y, H, W, C, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, WP: tl.constexpr,
                        BC: tl.constexpr):
    """Row-sliding form: one program owns ROWS image rows of one frame × BC channels and walks input rows top to
    bottom; each input row is loaded once per horizontal tap (three loads, not nine) and its three horizontally
    filtered versions go to the output rows above, at and below it, carried in two float32 row accumulators."""
    pr, pc, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    w = tl.arange(0, WP)
    c = pc * BC + tl.arange(0, BC)
    mc = c < C
    mw = w < W
    frame = n.to(tl.int64) * H * W * C
    offs = w[:, None] * C + c[None, :]
    m_mid = mw[:, None] & mc[None, :]
    m_left = ((w >= 1) & mw)[:, None] & mc[None, :]
    m_right = (w + 1 < W)[:, None] & mc[None, :]
    w0 = tl.load(W9 + c, mask=mc, other=0.0)[None, :]
    w1 = tl.load(W9 + C + c, mask=mc, other=0.0)[None, :]
    w2 = tl.load(W9 + 2 * C + c, mask=mc, other=0.0)[None, :]
    w3 = tl.load(W9 + 3 * C + c, mask=mc, other=0.0)[None, :]
    w4 = tl.load(W9 + 4 * C + c, mask=mc, other=0.0)[None, :]
    w5 = tl.load(W9 + 5 * C + c, mask=mc, other=0.0)[None, :]
    w6 = tl.load(W9 + 6 * C + c, mask=mc, other=0.0)[None, :]
    w7 = tl.load(W9 + 7 * C + c, mask=mc, other=0.0)[None, :]
    w8 = tl.load(W9 + 8 * C + c, mask=mc, other=0.0)[None, :]
    if HAS_BIAS:
        bias = tl.load(BIAS + c, mask=mc, other=0.0).to(tl.float32)[None, :]
    r0 = pr * ROWS
    acc_prev = tl.zeros([WP, BC], tl.float32)  # output row r − 1, still missing the input row r
    acc_cur = tl.zeros([WP, BC], tl.float32)  # output row r
    for r in range(r0 - 1, r0 + ROWS + 1):
        rv = (r >= 0) & (r < H)
        row = X + frame + r * W * C + offs
        xl = tl.load(row - C, mask=m_left & rv, other=0.0).to(tl.float32)  # x[r, w − 1]
        xm = tl.load(row, mask=m_mid & rv, other=0.0).to(tl.float32)
        xr = tl.load(row + C, mask=m_right & rv, other=0.0).to(tl.float32)  # x[r, w + 1]
        out = acc_prev + (xl * w6 + xm * w7 + xr * w8)  # kh = 2: output row r − 1 reads input row r
        if HAS_BIAS:
            out += bias
        ro = r - 1
        tl.store(Y + frame + ro * W * C + offs, out.to(Y.dtype.element_ty),
                 mask=m_mid & (ro >= r0) & (ro < H) & (ro < r0 + ROWS))
        acc_prev = acc_cur + (xl * w3 + xm * w4 + xr * w5)  # kh = 1
        acc_cur = xl * w0 + xm * w1 + xr * w2  # kh = 0: output row r + 1


@triton.jit
def _dw_wgrad_kernel(X, DY, PART, S, H, W, C, TILES, TILES_PER_FRAME, PER_PROG, BP: tl.constexpr,
                     BC: tl.constexpr):
    pp, pc = tl.program_id(0), tl.program_id(1)
    c = pc * BC + tl.arange(0, BC)
    mc = c < C
    a0 = tl.zeros([BP, BC], tl.float32)
    a1 = tl.zeros([BP, BC], tl.float32)
    a2 = tl.zeros([BP, BC], tl.float32)
    a3 = tl.zeros([BP, BC], tl.float32)
    a4 = tl.zeros([BP, BC], tl.float32)
    a5 = tl.zeros([BP, BC], tl.float32)
    a6 = tl.zeros([BP, BC], tl.float32)
    a7 = tl.zeros([BP, BC], tl.float32)
    a8 = tl.zeros([BP, BC], tl.float32)
    ab = tl.zeros([BP, BC], tl.float32)
    for i in range(pp * PER_PROG, tl.minimum(pp * PER_PROG + PER_PROG, TILES)):
        n = i // TILES_PER_FRAME
        s = (i - n * TILES_PER_FRAME) * BP + tl.arange(0, BP)
        hh = s // W
        ww = s - hh * W
        frame = n.to(tl.int64) * S * C
        offs = s[:, None] * C + c[None, :]
        Xn = X + frame
        dy = tl.load(DY + frame + offs, mask=(s < S)[:, None] & mc[None, :], other=0.0).to(tl.float32)
        ab += dy
        a0 += _tap(Xn, offs, s, hh, ww, mc, -1, -1, S, H, W, C) * dy
        a1 += _tap(Xn, offs, s, hh, ww, mc, -1, 0, S, H, W, C) * dy
        a2 += _tap(Xn, offs, s, hh, ww, mc, -1, 1, S, H, W, C) * dy
        a3 += _tap(Xn, offs, s, hh, ww, mc, 0, -1, S, H, W, C) * dy
        a4 += _tap(Xn, offs, s, hh, ww, mc, 0, 0, S, H, W, C) * dy
        a5 += _tap(Xn, offs, s, hh, ww, mc, 0, 1, S, H, W, C) * dy
        a6 += _tap(Xn, offs, s, hh, ww, mc, 1, -1, S, H, W, C) * dy
        a7 += _tap(Xn, offs, s, hh, ww, mc, 1, 0, S, H, W, C) * dy
        a8 += _tap(Xn, offs, s, hh, ww, mc, 1, 1, S, H, W, C) * dy
    row = PART + pp.to(tl.int64) * 10 * C + c
    tl.store(row, tl.sum(a0, 0), mask=mc)
    tl.store(row + C, tl.sum(a1, 0), mask=mc)
    tl.store(row + 2 * C, tl.sum(a2, 0), mask=mc)
    tl.store(row + 3 * C, tl.sum(a3, 0), mask=mc)
    tl.store(row + 4 * C, tl.sum(a4, 0), mask=mc)
    tl.store(row + 5 * C, tl.sum(a5, 0), mask=mc)
    tl.store(row + 6 * C, tl.sum(a6, 0), mask=mc)
    tl.store(row + 7 * C, tl.sum(a7, 0), mask=mc)
    tl.store(row + 8 * C, tl.sum(a8, 0), mask=mc)
    tl.store(row + 9 * C, tl.sum(ab, 0), mask=mc)


def fits_int32(H: int, W: int, C: int) -> bool:
    """Whether a frame's offsets, including the halo one row and one position beyond it, fit the kernels' int32."""
    return (H * W + W + 1) * C < 2**31


def _tile(defaults: dict, name: str, tile: dict) -> dict:
    unknown = set(tile) - set(defaults)
    if unknown:
        raise TypeError(f"{name}: unknown tile keyword(s) {sorted(unknown)}; expected some of {sorted(defaults)}")
    return {**defaults, **tile}


def _check(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4 or not x.is_contiguous():
        raise ValueError(f"{name}: x must be a contiguous [N, H, W, C] tensor, got shape {list(x.shape)} strides "
                         f"{list(x.stride())}")
    if not fits_int32(*x.shape[1:]):
        raise ValueError(f"{name}: a frame of {list(x.shape[1:])} is too large for int32 offsets")


def depthwise3x3(x: torch.Tensor, w9: torch.Tensor, bias: torch.Tensor | None, **tile) -> torch.Tensor:
    """x [N, H, W, C] contiguous, w9 [9, C] float32 (row 3·kh + kw), bias [C] or None → [N, H, W, C] in x's dtype.
    Keywords override `FWD_TILE` (bp, bc, num_warps): for tuning only, the result does not depend on them."""
    _check(x, "depthwise3x3")
    t = _tile(FWD_TILE, "depthwise3x3", tile)
    N, H, W, C = x.shape
    y = torch.empty_like(x)
    if t["rows"]:
        grid = (triton.cdiv(H, t["rows"]), triton.cdiv(C, t["bc"]), N)
        _dw_fwd_rows_kernel[grid](x, w9, bias if bias is not None else w9, y, H, W, C, HAS_BIAS=bias is not None,
                                  ROWS=t["rows"], WP=triton.next_power_of_2(W), BC=t["bc"], num_warps=t["num_warps"])
        return y
    grid = (triton.cdiv(H * W, t["bp"]), triton.cdiv(C, t["bc"]), N)
    _dw_fwd_kernel[grid](x, w9, bias if bias is not None else w9, y, H * W, H, W, C, HAS_BIAS=bias is not None,
                         BP=t["bp"], BC=t["bc"], num_warps=t["num_warps"])
    return y


def depthwise3x3_wgrad(x: torch.Tensor, dy: torch.Tensor, **tile) -> torch.Tensor:
    """x, dy [N, H, W, C] contiguous → [10, C] float32: rows 0–8 the taps' gradient (row 3·kh + kw), row 9 the bias
    gradient. Keywords override `WGRAD_TILE` (bp, bc, num_warps, splits); only the summation order depends on them."""
    _check(x, "depthwise3x3_wgrad")
    if dy.shape != x.shape or not dy.is_contiguous():
        raise ValueError(f"depthwise3x3_wgrad: dy must be contiguous and shaped like x {list(x.shape)}, got "
                         f"{list(dy.shape)}")
    t = _tile(WGRAD_TILE, "depthwise3x3_wgrad", tile)
    N, H, W, C = x.shape
    per_frame = triton.cdiv(H * W, t["bp"])
    tiles = N * per_frame
    cblocks = triton.cdiv(C, t["bc"])
    splits = t["splits"]
    if splits <= 0:  # about eight programs per SM in all, each walking as long a run of tiles as that leaves
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1
        splits = max(1, min(tiles, triton.cdiv(8 * sms, cblocks)))
    per_prog = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, per_prog)
    part = torch.empty((splits, 10, C), dtype=torch.float32, device=x.device)
    _dw_wgrad_kernel[(splits, cblocks)](x, dy, part, H * W, H, W, C, tiles, per_frame, per_prog, BP=t["bp"],
                                        BC=t["bc"], num_warps=t["num_warps"])
    return part.sum(0)
