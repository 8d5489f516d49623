"""Fused Triton kernels for the GDN: per-frame transitions and the read-out, forward and backward, straight from token
layout.

The composite path (`torch_scan.py`) spends most of its time outside the maths: it re-lays q/k/v out from the
model's token-major [B, T, S, H, D] to [B, H, T, S, D], up-casts them to float32 copies and runs the per-frame
products as small float32 GEMMs on CUDA cores. These kernels read the token-major bf16 tensors in place (strided
loads) and run the products on tensor cores without giving up float32 results:

* `transitions`: per (batch·head, frame, column block) A_t = Kᵀ diag(β) K, U_t = Vᵀ diag(β) K and z_t = Kᵀ β,
  reducing over the S tokens of the frame in BLOCK_S chunks.
* `readout`: per (batch·head, frame, token block) o = q̃ S_tᵀ, divided by the normaliser qᵀ z_t + ε when there is
  one, written in the caller's dtype directly in token layout.

Precision with bf16 inputs ("bf16 split"): k, v and β are bf16, so every product k·β is exact in float32 (8 + 8
significant bits) and splits exactly into two bf16 numbers, hi = bf16(kβ) and lo = kβ − hi. Two bf16 tensor-core
MMAs then form the exact float32 products of the reference and sum them in the tensor cores' float32 accumulators.
The float32 states of the read-out are split three ways once per frame (`split_bf16x3`: hi + mid + lo carries 24
significant bits). Measured on an H200 at (B, T, S, H, D) = (2, 21, 880, 2, 112): 3.4e-6 relative error against
float64, where the CUDA-core composite path gets 1.7e-7 — we attribute the gap to the tensor cores' accumulation,
which is not IEEE-rounded; both are three orders of magnitude below the bf16 rounding the model applies to the
result. Inputs that are not all bf16 (float32 runs, float16) take full-precision float32 dots ("ieee") and match
the composite path's accuracy. The state recurrence between the two kernels is the fused scan of `triton_scan.py`.

Backward (`transitions_backward`, `readout_backward`): the same layout and the same idea. Each product has one
bf16-exact factor (k, v or q) and one float32 factor (dA, dU, do, S), which is split three ways in registers
(`_mma_x`); only dq = do·S has two float32 factors, and takes the six leading cross products of both splits
(`_mma_xx`). float32 inputs take "ieee" dots.

`torch_scan` uses these kernels for inference (the whole op, one custom op) and for training (the `gdn_transitions`
/ `gdn_readout` custom ops, forward and backward; their float32 PyTorch backward is kept as the reference). The
reference for everything is `naive.py` (float64); the tests (tests/ops/test_gdn_gpu.py) compare against it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _dot16(a, b, acc, EMULATE: tl.constexpr):
    """acc += a @ b for bf16 a and b: exact products, float32 accumulation (float32 maths in the interpreter)."""
    if EMULATE:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _mma(a, b, acc, SPLIT: tl.constexpr, EMULATE: tl.constexpr):
    """acc += a @ b with a exact in bf16 (when SPLIT) and b float32, to float32 accuracy.

    SPLIT: b = hi + lo exactly in bf16 (b is a product of two bf16 numbers) → two bf16 MMAs.
    EMULATE (interpreter only): the same split, multiplied in float32 (the CPU interpreter's bf16 dot is broken).
    """
    if SPLIT:
        hi = b.to(tl.bfloat16)
        lo = (b - hi.to(tl.float32)).to(tl.bfloat16)
        a16 = a.to(tl.bfloat16)
        acc = _dot16(a16, hi, acc, EMULATE)
        acc = _dot16(a16, lo, acc, EMULATE)
    else:
        acc = tl.dot(a.to(tl.float32), b, acc, input_precision="ieee")
    return acc


@triton.jit
def _split3(x):
    """float32 x = hi + mid + lo in bf16 to within float32 rounding (3 × 8 significant bits)."""
    hi = x.to(tl.bfloat16)
    r = x - hi.to(tl.float32)
    mid = r.to(tl.bfloat16)
    lo = (r - mid.to(tl.float32)).to(tl.bfloat16)
    return hi, mid, lo


@triton.jit
def _mma_x(a, b, acc, SPLIT: tl.constexpr, EMULATE: tl.constexpr):
    """acc += a @ b with a exact in bf16 and b any float32, to float32 accuracy: b split three ways (SPLIT), or one
    float32 "ieee" dot (float32 inputs)."""
    if SPLIT:
        a16 = a.to(tl.bfloat16)
        hi, mid, lo = _split3(b)
        acc = _dot16(a16, lo, acc, EMULATE)  # smallest terms first
        acc = _dot16(a16, mid, acc, EMULATE)
        acc = _dot16(a16, hi, acc, EMULATE)
    else:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return acc


@triton.jit
def _mma_xx(a, b, acc, SPLIT: tl.constexpr, EMULATE: tl.constexpr):
    """acc += a @ b with both float32, to float32 accuracy: both split three ways and the six cross products down to
    2^-16 of hi·hi summed (the three dropped ones are below float32 rounding); one "ieee" dot without SPLIT."""
    if SPLIT:
        ah, am, al = _split3(a)
        bh, bm, bl = _split3(b)
        acc = _dot16(ah, bl, acc, EMULATE)
        acc = _dot16(al, bh, acc, EMULATE)
        acc = _dot16(am, bm, acc, EMULATE)
        acc = _dot16(ah, bm, acc, EMULATE)
        acc = _dot16(am, bh, acc, EMULATE)
        acc = _dot16(ah, bh, acc, EMULATE)
    else:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


@triton.jit
def _program(H, T):
    """(b, h, t, frame = (b·H + h)·T + t as int64, block) of this program on the grid (batch·head, frame, block)."""
    bh = tl.program_id(0)
    t = tl.program_id(1)
    return bh // H, bh % H, t, bh.to(tl.int64) * T + t, tl.program_id(2)


@triton.jit
def _at(X, b, t, h, sb, st, sh):
    """Pointer to token 0 of (b, t, h) in a token-layout tensor [B, T, S, H, ·] with strides (sb, st, ·, sh)."""
    return X + b.to(tl.int64) * sb + t.to(tl.int64) * st + h * sh


@triton.jit
def _transitions_kernel(
    K, V, BETA, A, U, Z,
    T, H, S, D, DV,
    skb, skt, sks, skh,
    svb, svt, svs, svh,
    sbb, sbt, sbs, sbh,
    HAS_V: tl.constexpr, HAS_Z: tl.constexpr, SPLIT: tl.constexpr, EMULATE: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    b, h, t, frame, pn = _program(H, T)
    rd = tl.arange(0, BLOCK_D)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rv = tl.arange(0, BLOCK_DV)
    md, mn, mv = rd < D, rn < D, rv < DV
    k_base = _at(K, b, t, h, skb, skt, skh)
    v_base = _at(V, b, t, h, svb, svt, svh)
    beta_base = _at(BETA, b, t, h, sbb, sbt, sbh)
    acc_a = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_DV, BLOCK_N), dtype=tl.float32)
    acc_z = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        rs = s0 + tl.arange(0, BLOCK_S)
        ms = rs < S
        rows = k_base + rs[:, None].to(tl.int64) * sks
        k_all = tl.load(rows + rd[None, :], mask=ms[:, None] & md[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
        k_blk = tl.load(rows + rn[None, :], mask=ms[:, None] & mn[None, :], other=0.0)  # [BLOCK_S, BLOCK_N]
        beta = tl.load(beta_base + rs.to(tl.int64) * sbs, mask=ms, other=0.0).to(tl.float32)
        kb = k_blk.to(tl.float32) * beta[:, None]  # exact for bf16 k and β
        acc_a = _mma(tl.trans(k_all), kb, acc_a, SPLIT, EMULATE)
        if HAS_V:
            v = tl.load(v_base + rs[:, None].to(tl.int64) * svs + rv[None, :], mask=ms[:, None] & mv[None, :],
                        other=0.0)
            acc_u = _mma(tl.trans(v), kb, acc_u, SPLIT, EMULATE)
        if HAS_Z:
            acc_z += tl.sum(kb, axis=0)
    tl.store(A + frame * D * D + rd[:, None] * D + rn[None, :], acc_a, mask=md[:, None] & mn[None, :])
    if HAS_V:
        tl.store(U + frame * DV * D + rv[:, None] * D + rn[None, :], acc_u, mask=mv[:, None] & mn[None, :])
    if HAS_Z:
        tl.store(Z + frame * D + rn, acc_z, mask=mn)


@triton.jit
def _readout_kernel(
    Q, ST, ST_MID, ST_LO, QD, SD, O,
    T, H, S, D, DV, eps,
    sqb, sqt, sqs, sqh,
    sdb, sdt, sds, sdh,
    sob, sot, sos, soh,
    HAS_DEN: tl.constexpr, SPLIT: tl.constexpr, EMULATE: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    b, h, t, frame, ps = _program(H, T)
    rs = ps * BLOCK_S + tl.arange(0, BLOCK_S)
    rd = tl.arange(0, BLOCK_D)
    rv = tl.arange(0, BLOCK_DV)
    ms, md, mv = rs < S, rd < D, rv < DV
    q = tl.load(_at(Q, b, t, h, sqb, sqt, sqh) + rs[:, None].to(tl.int64) * sqs + rd[None, :],
                mask=ms[:, None] & md[None, :], other=0.0)
    # States S_t [Dv, D] are read transposed, [D, Dv], so that out = q @ S_tᵀ is a plain dot.
    st_offs = frame * DV * D + rv[None, :] * D + rd[:, None]
    st_mask = md[:, None] & mv[None, :]
    if SPLIT:  # S_t = hi + mid + lo in bf16 (split once per frame by the caller): three exact-product MMAs
        hi = tl.load(ST + st_offs, mask=st_mask, other=0.0)
        mid = tl.load(ST_MID + st_offs, mask=st_mask, other=0.0)
        lo = tl.load(ST_LO + st_offs, mask=st_mask, other=0.0)
        q16 = q.to(tl.bfloat16)
        out = _dot16(q16, hi, tl.zeros((BLOCK_S, BLOCK_DV), dtype=tl.float32), EMULATE)
        out = _dot16(q16, mid, out, EMULATE)
        out = _dot16(q16, lo, out, EMULATE)
    else:
        st = tl.load(ST + st_offs, mask=st_mask, other=0.0)
        out = tl.dot(q.to(tl.float32), st, input_precision="ieee")  # [BLOCK_S, BLOCK_DV]
    if HAS_DEN:
        qd = tl.load(_at(QD, b, t, h, sdb, sdt, sdh) + rs[:, None].to(tl.int64) * sds + rd[None, :],
                     mask=ms[:, None] & md[None, :], other=0.0).to(tl.float32)
        z = tl.load(SD + frame * D + rd, mask=md, other=0.0)
        den = tl.sum(qd * z[None, :], axis=1)
        out = out / (den[:, None] + eps)
    o_ptr = _at(O, b, t, h, sob, sot, soh) + rs[:, None].to(tl.int64) * sos + rv[None, :]
    tl.store(o_ptr, out.to(O.dtype.element_ty), mask=ms[:, None] & mv[None, :])


# -- backward (training) -----------------------------------------------------------------------------------------------
# With Kb = diag(β) K per frame: A = Kᵀ Kb, U = Vᵀ Kb, z = Kbᵀ 1 and o = q Sᵀ. Row by row (token s, row vectors):
#   dk_s = β_s k_s (dA + dAᵀ) + β_s (v_s dU  or  dz),   dv_s = β_s k_s dUᵀ,
#   dβ_s = k_s dA k_sᵀ + (v_s dU k_sᵀ  or  dz·k_s),      dq_s = do_s S,   dS = Σ_s do_sᵀ q_s.
# Every product has one bf16-exact factor (k, v, q) except dq = do·S, whose both factors are float32 sums.


@triton.jit
def _transitions_bwd_kernel(
    K, V, BETA, DA, DU, DK, DVO, DBETA,
    T, H, S, D, DV,
    skb, skt, sks, skh,
    svb, svt, svs, svh,
    sbb, sbt, sbs, sbh,
    HAS_V: tl.constexpr, SPLIT: tl.constexpr, EMULATE: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    b, h, t, frame, ps = _program(H, T)
    rs = ps * BLOCK_S + tl.arange(0, BLOCK_S)
    rd = tl.arange(0, BLOCK_D)
    rv = tl.arange(0, BLOCK_DV)
    ms, md, mv = rs < S, rd < D, rv < DV
    row = ((b.to(tl.int64) * T + t) * S + rs.to(tl.int64)) * H + h  # token rows of the contiguous outputs
    k = tl.load(_at(K, b, t, h, skb, skt, skh) + rs[:, None].to(tl.int64) * sks + rd[None, :],
                mask=ms[:, None] & md[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
    beta = tl.load(_at(BETA, b, t, h, sbb, sbt, sbh) + rs.to(tl.int64) * sbs, mask=ms, other=0.0).to(tl.float32)
    mdd = md[:, None] & md[None, :]
    da = DA + frame * D * D
    m_sym = (tl.load(da + rd[:, None] * D + rd[None, :], mask=mdd, other=0.0)
             + tl.load(da + rd[None, :] * D + rd[:, None], mask=mdd, other=0.0))  # dA + dAᵀ
    y = _mma_x(k, m_sym, tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32), SPLIT, EMULATE)  # k (dA + dAᵀ)
    kf = k.to(tl.float32)
    quad = 0.5 * tl.sum(kf * y, axis=1)  # k dA kᵀ
    if HAS_V:
        v = tl.load(_at(V, b, t, h, svb, svt, svh) + rs[:, None].to(tl.int64) * svs + rv[None, :],
                    mask=ms[:, None] & mv[None, :], other=0.0)  # [BLOCK_S, BLOCK_DV]
        du = tl.load(DU + frame * DV * D + rv[:, None] * D + rd[None, :], mask=mv[:, None] & md[None, :], other=0.0)
        y = _mma_x(v, du, y, SPLIT, EMULATE)  # + v dU
        w = _mma_x(k, tl.trans(du), tl.zeros((BLOCK_S, BLOCK_DV), dtype=tl.float32), SPLIT, EMULATE)  # k dUᵀ
        tl.store(DVO + row[:, None] * DV + rv[None, :], (beta[:, None] * w).to(DVO.dtype.element_ty),
                 mask=ms[:, None] & mv[None, :])
    else:
        y += tl.load(DU + frame * D + rd, mask=md, other=0.0)[None, :]  # + dz
    tl.store(DK + row[:, None] * D + rd[None, :], (beta[:, None] * y).to(DK.dtype.element_ty),
             mask=ms[:, None] & md[None, :])
    tl.store(DBETA + row, (tl.sum(kf * y, axis=1) - quad).to(DBETA.dtype.element_ty), mask=ms)


@triton.jit
def _readout_bwd_kernel(
    Q, ST, DO, DQ, DST,
    T, H, S, D, DV,
    sqb, sqt, sqs, sqh,
    sob, sot, sos, soh,
    SPLIT: tl.constexpr, EMULATE: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    # One program per (batch·head, frame, block of BLOCK_N columns of D): dq[:, cols] = do S[:, cols] for every token
    # tile, and dS[:, cols] = Σ_s do_sᵀ q_s[cols] accumulated over the frame's tokens.
    b, h, t, frame, pn = _program(H, T)
    rn = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rv = tl.arange(0, BLOCK_DV)
    mn, mv = rn < D, rv < DV
    st = tl.load(ST + frame * DV * D + rv[:, None] * D + rn[None, :], mask=mv[:, None] & mn[None, :], other=0.0)
    q_base = _at(Q, b, t, h, sqb, sqt, sqh)
    do_base = _at(DO, b, t, h, sob, sot, soh)
    acc = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)  # dSᵀ[cols]
    for s0 in range(0, S, BLOCK_S):
        rs = s0 + tl.arange(0, BLOCK_S)
        ms = rs < S
        do = tl.load(do_base + rs[:, None].to(tl.int64) * sos + rv[None, :], mask=ms[:, None] & mv[None, :],
                     other=0.0).to(tl.float32)  # [BLOCK_S, BLOCK_DV]
        q = tl.load(q_base + rs[:, None].to(tl.int64) * sqs + rn[None, :], mask=ms[:, None] & mn[None, :],
                    other=0.0)  # [BLOCK_S, BLOCK_N]
        dq = _mma_xx(do, st, tl.zeros((BLOCK_S, BLOCK_N), dtype=tl.float32), SPLIT, EMULATE)
        row = ((b.to(tl.int64) * T + t) * S + rs.to(tl.int64)) * H + h
        tl.store(DQ + row[:, None] * D + rn[None, :], dq.to(DQ.dtype.element_ty), mask=ms[:, None] & mn[None, :])
        acc = _mma_x(tl.trans(q), do, acc, SPLIT, EMULATE)  # += q[cols]ᵀ do
    tl.store(DST + frame * DV * D + rv[None, :] * D + rn[:, None], acc, mask=mn[:, None] & mv[None, :])


def split_bf16x3(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (float32) = hi + mid + lo (bf16 each) to within float32 rounding: 3 × 8 significant bits."""
    hi = x.to(torch.bfloat16)
    r = x - hi.float()
    mid = r.to(torch.bfloat16)
    return hi, mid, (r - mid.float()).to(torch.bfloat16)


_EMULATE = {"on": False}  # set by tests that run these kernels in Triton's CPU interpreter


def _token_strides(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.stride()[:4])


def _last_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _split_ok(*xs: torch.Tensor | None) -> bool:
    return all(x is None or x.dtype == torch.bfloat16 for x in xs)


def wants_split(q: torch.Tensor, q_den: torch.Tensor | None = None) -> bool:
    """Whether `readout` runs the bf16 exact-product path for these queries (and so takes split states)."""
    return _split_ok(q, q_den)


def transitions(k: torch.Tensor, v: torch.Tensor | None, beta: torch.Tensor, want_z: bool = False):
    """k [B,T,S,H,D], v [B,T,S,H,Dv] or None, β [B,T,S,H] → A [B·H,T,D,D], U [B·H,T,Dv,D] | None, z [B·H,T,1,D] | None
    (float32)."""
    k, beta = _last_contiguous(k), beta
    B, T, S, H, D = k.shape
    DV = v.shape[-1] if v is not None else 1
    v_ = _last_contiguous(v) if v is not None else k
    dev = k.device
    A = torch.empty(B * H, T, D, D, device=dev, dtype=torch.float32)
    U = torch.empty(B * H, T, DV, D, device=dev, dtype=torch.float32) if v is not None else A
    Z = torch.empty(B * H, T, 1, D, device=dev, dtype=torch.float32) if want_z else A
    BLOCK_D = max(16, triton.next_power_of_2(D))
    # Tile configs from an H200 sweep at the model's shapes (D = 112, S = 880; bench/RESULTS.md, "Kernel design log"):
    # with values 64 tokens × 128 columns, 8 warps, 3 stages; the normaliser (no values) 64 × 64, 4 warps, 3 stages.
    BLOCK_N, warps = (min(128, BLOCK_D), 8) if v is not None else (min(64, BLOCK_D), 4)
    grid = (B * H, T, triton.cdiv(D, BLOCK_N))
    _transitions_kernel[grid](
        k, v_, beta, A, U, Z, T, H, S, D, DV,
        *_token_strides(k), *_token_strides(v_), *beta.stride(),
        HAS_V=v is not None, HAS_Z=want_z, SPLIT=_split_ok(k, v, beta), EMULATE=_EMULATE["on"],
        BLOCK_S=64, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, BLOCK_DV=max(16, triton.next_power_of_2(DV)),
        num_warps=warps, num_stages=3,
    )
    return A, (U if v is not None else None), (Z if want_z else None)


def readout(q: torch.Tensor, states: torch.Tensor, q_den: torch.Tensor | None = None,
            z_states: torch.Tensor | None = None, eps: float = 1e-8, out_dtype: torch.dtype = torch.float32):
    """o[b,t,s,h] = states[bh,t] q[b,t,s,h] (÷ (q_den·z_states[bh,t] + ε) when given) → [B,T,S,H,Dv] out_dtype.

    `states` is float32 [B·H, T, Dv, D], or already split (hi, mid, lo) in bf16 (`split_bf16x3`) when
    `wants_split(q, q_den)`.
    """
    q = _last_contiguous(q)
    B, T, S, H, D = q.shape
    has_den = q_den is not None
    qd = _last_contiguous(q_den) if has_den else q
    split = wants_split(q, q_den)
    if isinstance(states, tuple):
        if not split:
            raise ValueError("readout: split states need bf16 queries")
        parts = tuple(p.contiguous() for p in states)
    else:
        states = states.contiguous()
        parts = split_bf16x3(states) if split else (states, states, states)
    DV = parts[0].shape[-2]
    out = torch.empty(B, T, S, H, DV, device=q.device, dtype=out_dtype)
    zd = z_states.contiguous() if has_den else parts[0]
    BLOCK_S = 128  # H200 sweep: 128 tokens, 8 warps, 2 stages beat 64 by 17-27 %
    grid = (B * H, T, triton.cdiv(S, BLOCK_S))
    _readout_kernel[grid](
        q, *parts, qd, zd, out, T, H, S, D, DV, float(eps),
        *_token_strides(q), *_token_strides(qd), *_token_strides(out),
        HAS_DEN=has_den, SPLIT=split, EMULATE=_EMULATE["on"],
        BLOCK_S=BLOCK_S, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_DV=max(16, triton.next_power_of_2(DV)),
        num_warps=8, num_stages=2,
    )
    return out


# The backward tiles were swept on an H200 for bf16 inputs, whose products run as split-bf16 tensor-core MMAs. Other
# inputs take "ieee" float32 dots instead, far slower at the swept 128-token transitions tile, so they keep smaller
# tiles (bench/RESULTS.md, "Kernel design log").
_FP32_BWD_TILES = {"transitions": (64, 8, 1), "readout": (64, 64, 8, 2)}


def transitions_backward(k: torch.Tensor, v: torch.Tensor | None, beta: torch.Tensor, dA: torch.Tensor,
                         dU: torch.Tensor, *, block_s: int | None = None, num_warps: int | None = None,
                         num_stages: int | None = None):
    """Gradients of `transitions`: given dA [B·H,T,D,D] and dU [B·H,T,Dv,D] (or dz [B·H,T,1,D] when v is None), float32,
    returns dk [B,T,S,H,D], dv [B,T,S,H,Dv] | None, dβ [B,T,S,H] in the dtypes of k, v and β (contiguous).
    The keyword arguments are the launch's tile (tuning only; the result does not depend on them). Default for bf16
    inputs from an H200 sweep at the model's shapes (bench/RESULTS.md): 128 tokens, 8 warps, 1 stage, 0.50 / 0.31 ms
    with values / without, against 0.95 / 0.49 ms for 64 tokens; other dtypes: `_FP32_BWD_TILES`."""
    split = _split_ok(k, v, beta)
    tile = (128, 8, 1) if split else _FP32_BWD_TILES["transitions"]
    block_s, num_warps, num_stages = block_s or tile[0], num_warps or tile[1], num_stages or tile[2]
    k = _last_contiguous(k)
    B, T, S, H, D = k.shape
    DV = v.shape[-1] if v is not None else 1
    v_ = _last_contiguous(v) if v is not None else k
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=k.device, dtype=v.dtype) if v is not None else dk
    dbeta = torch.empty(beta.shape, device=k.device, dtype=beta.dtype)
    grid = (B * H, T, triton.cdiv(S, block_s))
    _transitions_bwd_kernel[grid](
        k, v_, beta, dA.float().contiguous(), dU.float().contiguous(), dk, dv, dbeta, T, H, S, D, DV,
        *_token_strides(k), *_token_strides(v_), *beta.stride(),
        HAS_V=v is not None, SPLIT=split, EMULATE=_EMULATE["on"],
        BLOCK_S=block_s, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_DV=max(16, triton.next_power_of_2(DV)),
        num_warps=num_warps, num_stages=num_stages,
    )
    return dk, (dv if v is not None else None), dbeta


def readout_backward(q: torch.Tensor, states: torch.Tensor, do: torch.Tensor, *, block_s: int | None = None,
                     block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None):
    """Gradients of `readout` without a normaliser: q [B,T,S,H,D], states [B·H,T,Dv,D] float32 and do [B,T,S,H,Dv] →
    dq [B,T,S,H,D] in q's dtype (contiguous) and dstates [B·H,T,Dv,D] float32. The keyword arguments are the launch's
    tile (tuning only). Defaults from an H200 sweep at the model's shapes (bench/RESULTS.md): 64 tokens × 32 columns,
    4 warps with values (0.66 ms against 0.97 for 64 × 64, 8 warps); 128 × 128, 8 warps for the normaliser's single
    value column (0.22 against 0.34 ms). Other dtypes: `_FP32_BWD_TILES`."""
    q, do = _last_contiguous(q), _last_contiguous(do)
    B, T, S, H, D = q.shape
    DV = states.shape[-2]
    split = _split_ok(q)
    tile = ((64, 32, 4, 2) if DV > 16 else (128, 128, 8, 2)) if split else _FP32_BWD_TILES["readout"]
    block_s, block_n = block_s or tile[0], block_n or tile[1]
    num_warps, num_stages = num_warps or tile[2], num_stages or tile[3]
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dst = torch.empty(B * H, T, DV, D, device=q.device, dtype=torch.float32)
    BLOCK_N = min(block_n, max(16, triton.next_power_of_2(D)))
    grid = (B * H, T, triton.cdiv(D, BLOCK_N))
    _readout_bwd_kernel[grid](
        q, states.float().contiguous(), do, dq, dst, T, H, S, D, DV,
        *_token_strides(q), *_token_strides(do),
        SPLIT=split, EMULATE=_EMULATE["on"],
        BLOCK_S=block_s, BLOCK_N=BLOCK_N, BLOCK_DV=max(16, triton.next_power_of_2(DV)),
        num_warps=num_warps, num_stages=num_stages,
    )
    return dq, dst
