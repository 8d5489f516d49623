"""Triton forward and backward of the FFN's depthwise 3×3 conv + bias + GLU, on the token layout (`naive.py`'s
`naive_dwconv_glu` is the reference; SiLU stays outside, see below).

Layout: a = SiLU(h) is [F frames, S = H·W, 2C] with channels last; channel c < C is a value channel, c + C its gate.
The conv is a cross-correlation with zero padding: z[p] = b + Σ_tap w[tap]·a[p + off(tap)], off = (dy, dx) ∈ {−1,0,1}².

* Forward: one program owns BLOCK_P positions × BLOCK_C value channels of one frame and gathers the nine taps of the
  value channel and of its gate (neighbouring taps hit L1/L2), so the 2C-channel conv result never reaches memory.
* Backward, two passes. `_dz_kernel` recomputes z the same way and applies the GLU's adjoint, writing dz [F, S, 2C].
  `_dgrad_wgrad_kernel` walks one frame's positions for a block of channels: for each tap it loads dz at q − off once
  and uses it twice, da[q] += w[tap]·dz[q − off] (the transposed conv) and dw[tap] += Σ_q dz[q − off]·a[q] (so `a`
  is read unshifted, once). Weight and bias gradients are float32 partials per frame, summed by the caller:
  deterministic, no atomics.

Why hand kernels here: in the compiled training step the composite path (Inductor SiLU and GLU around cuDNN's
depthwise conv) cost ≈ 4.3 ms per block at 161 frames (forward 0.49 ms, the same again when selective checkpointing
recomputes it, dgrad 0.91, wgrad 0.55, bias reduction 0.34, GLU backward 0.66, …; bench/RESULTS.md run 18), several
times its memory traffic. SiLU stays outside, in the producer's element-wise kernel: each input element feeds nine
taps, and evaluating SiLU per tap bound an earlier one-pass kernel on the special-function units.

Numerics follow the composite path: products of working-dtype values summed in float32, the conv result rounded to
the working dtype as cuDNN returns it, value ⊙ SiLU(gate) and its adjoint in float32, rounded once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _conv_tile(A, Wt, Bias, a_base, rp, rc, y, x, mp, mc, H, W, C2, ch_off, HAS_BIAS: tl.constexpr,
               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """z at positions rp of channels rc + ch_off, float32, rounded to the working dtype (cuDNN's output)."""
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for tap in tl.static_range(9):
        dy = tap // 3 - 1
        dx = tap % 3 - 1
        ok = mp & (y + dy >= 0) & (y + dy < H) & (x + dx >= 0) & (x + dx < W)
        src = a_base + (rp + dy * W + dx)[:, None] * C2 + (rc + ch_off)[None, :]
        wt = tl.load(Wt + (rc + ch_off) * 9 + tap, mask=mc, other=0.0).to(tl.float32)
        acc += tl.load(src, mask=ok[:, None] & mc[None, :], other=0.0).to(tl.float32) * wt[None, :]
    if HAS_BIAS:
        acc += tl.load(Bias + rc + ch_off, mask=mc, other=0.0).to(tl.float32)[None, :]
    return acc.to(A.dtype.element_ty).to(tl.float32)


@triton.jit
def _tile(S, W, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pp = tl.program_id(0)  # position blocks fastest: neighbouring programs share their halo rows in L2
    pc = tl.program_id(1)
    rp = pp * BLOCK_P + tl.arange(0, BLOCK_P)
    rc = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    return rp, rc, rp // W, rp % W, rp < S, rc < C


# Tiles picked per shape on first use by Triton's autotuner (a handful of launches).
_CONFIGS = [triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w)
            for p, c, w in ((64, 64, 4), (32, 128, 4), (64, 128, 8))]


@triton.autotune(configs=_CONFIGS, key=["S", "W", "C"])
@triton.jit
def _fwd_kernel(A, Wt, Bias, O, S, H, W, C, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    rp, rc, y, x, mp, mc = _tile(S, W, C, BLOCK_P, BLOCK_C)
    f = tl.program_id(2).to(tl.int64)  # frame (b·T + t); int64: a 961-frame CFG batch passes 2³¹ elements
    a_base = A + f * S * 2 * C
    v = _conv_tile(A, Wt, Bias, a_base, rp, rc, y, x, mp, mc, H, W, 2 * C, 0, HAS_BIAS, BLOCK_P, BLOCK_C)
    g = _conv_tile(A, Wt, Bias, a_base, rp, rc, y, x, mp, mc, H, W, 2 * C, C, HAS_BIAS, BLOCK_P, BLOCK_C)
    out = v * g * tl.sigmoid(g)
    tl.store(O + f * S * C + rp[:, None] * C + rc[None, :], out.to(O.dtype.element_ty),
             mask=mp[:, None] & mc[None, :])


@triton.autotune(configs=_CONFIGS, key=["S", "W", "C"])
@triton.jit
def _dz_kernel(A, Wt, Bias, GO, DZ, S, H, W, C, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr,
               BLOCK_C: tl.constexpr):
    rp, rc, y, x, mp, mc = _tile(S, W, C, BLOCK_P, BLOCK_C)
    f = tl.program_id(2).to(tl.int64)
    a_base = A + f * S * 2 * C
    v = _conv_tile(A, Wt, Bias, a_base, rp, rc, y, x, mp, mc, H, W, 2 * C, 0, HAS_BIAS, BLOCK_P, BLOCK_C)
    g = _conv_tile(A, Wt, Bias, a_base, rp, rc, y, x, mp, mc, H, W, 2 * C, C, HAS_BIAS, BLOCK_P, BLOCK_C)
    m = mp[:, None] & mc[None, :]
    go = tl.load(GO + f * S * C + rp[:, None] * C + rc[None, :], mask=m, other=0.0).to(tl.float32)
    sg = tl.sigmoid(g)
    dv = go * g * sg  # ∂(v·g·σ(g))/∂v
    dg = go * v * sg * (1.0 + g * (1.0 - sg))  # ∂/∂g: SiLU'(g) = σ(g)·(1 + g·(1 − σ(g)))
    dz = DZ + f * S * 2 * C + rp[:, None] * (2 * C) + rc[None, :]
    tl.store(dz, dv.to(DZ.dtype.element_ty), mask=m)
    tl.store(dz + C, dg.to(DZ.dtype.element_ty), mask=m)


_WG_CONFIGS = [triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w)
               for p, c, w in ((64, 64, 4), (32, 64, 4), (32, 128, 4))]


@triton.autotune(configs=_WG_CONFIGS, key=["S", "W", "C2"])
@triton.jit
def _dgrad_wgrad_kernel(DZ, A, Wt, DA, PW, PB, S, H, W, C2, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pc = tl.program_id(0)
    f = tl.program_id(1).to(tl.int64)
    rc = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = rc < C2
    base = f * S * C2
    taps = tl.arange(0, 16)
    acc_w = tl.zeros((16, BLOCK_C), dtype=tl.float32)  # rows 0…8: Σ_q dz[q − off]·a[q] per tap
    acc_b = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for p0 in range(0, S, BLOCK_P):
        rp = p0 + tl.arange(0, BLOCK_P)
        mp = rp < S
        y = rp // W
        x = rp % W
        m = mp[:, None] & mc[None, :]
        a = tl.load(A + base + rp[:, None] * C2 + rc[None, :], mask=m, other=0.0).to(tl.float32)
        da = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for tap in tl.static_range(9):
            dy = tap // 3 - 1
            dx = tap % 3 - 1
            ok = mp & (y - dy >= 0) & (y - dy < H) & (x - dx >= 0) & (x - dx < W)
            dzs = tl.load(DZ + base + (rp - dy * W - dx)[:, None] * C2 + rc[None, :], mask=ok[:, None] & mc[None, :],
                          other=0.0).to(tl.float32)
            wt = tl.load(Wt + rc * 9 + tap, mask=mc, other=0.0).to(tl.float32)
            da += dzs * wt[None, :]
            acc_w += tl.where(taps[:, None] == tap, tl.sum(dzs * a, axis=0)[None, :], 0.0)
            if tap == 4:  # the centre tap reads dz unshifted: its sum is the bias gradient
                acc_b += tl.sum(dzs, axis=0)
        tl.store(DA + base + rp[:, None] * C2 + rc[None, :], da.to(DA.dtype.element_ty), mask=m)
    tl.store(PW + f * 9 * C2 + taps[:, None] * C2 + rc[None, :], acc_w, mask=(taps < 9)[:, None] & mc[None, :])
    tl.store(PB + f * C2 + rc, acc_b, mask=mc)


def _frames(a: torch.Tensor) -> tuple[int, int, int]:
    B, T, S, C2 = a.shape
    return B * T, S, C2


def dwconv_glu_forward(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       hw: tuple[int, int]) -> torch.Tensor:
    """a = SiLU(h) [B, T, S, 2C] contiguous (CUDA), weight [2C, 1, 3, 3] and bias [2C] | None in a's dtype →
    value ⊙ SiLU(gate) [B, T, S, C]."""
    F_, S, C2 = _frames(a)
    C = C2 // 2
    out = torch.empty(*a.shape[:3], C, device=a.device, dtype=a.dtype)
    w = weight.contiguous()
    grid = lambda meta: (triton.cdiv(S, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]), F_)
    _fwd_kernel[grid](a, w, w if bias is None else bias, out, S, hw[0], hw[1], C, HAS_BIAS=bias is not None)
    return out


def dwconv_glu_backward(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grad_out: torch.Tensor,
                        hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(da [B, T, S, 2C] in a's dtype, dweight [2C, 1, 3, 3] float32, dbias [2C] float32) for out = forward(a, …)."""
    F_, S, C2 = _frames(a)
    C = C2 // 2
    H, W = hw
    w = weight.contiguous()
    dz = torch.empty_like(a)
    grid = lambda meta: (triton.cdiv(S, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]), F_)
    _dz_kernel[grid](a, w, w if bias is None else bias, grad_out.contiguous(), dz, S, H, W, C,
                     HAS_BIAS=bias is not None)
    da = torch.empty_like(a)
    pw = torch.empty(F_, 9, C2, device=a.device, dtype=torch.float32)
    pb = torch.empty(F_, C2, device=a.device, dtype=torch.float32)
    _dgrad_wgrad_kernel[lambda meta: (triton.cdiv(C2, meta["BLOCK_C"]), F_)](dz, a, w, da, pw, pb, S, H, W, C2)
    return da, pw.sum(0).t().contiguous().view(C2, 1, 3, 3), pb.sum(0)  # contiguous: the op's fake layout
