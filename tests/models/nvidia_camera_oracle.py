"""TEST ORACLE — our own transcription of the order of operations of NVIDIA's camera branch (UCPE branch A) of one
self-attention block, written independently of `sana_wm.models.attention` and `sana_wm.ops` so that a test can hold
our model to it. Never imported by production code.

Transcribed from NVIDIA's public SANA-WM code (NVlabs/Sana; docs/design/nvidia-fidelity.md has the commits):

GDN block (`BidirectionalGDNUCPESinglePathLiteLA*`):
  1. q, k, v = the camera projections of the modulated block input
  2. k ← the bidirectional short conv: causal conv forward + causal conv on reversed time − centre tap
  3. q, k ← RMSNorm over all C channels (camera norms), then per head; ReLU on q and k; k ← k / √(D·S)
  4. pre-UCPE key norm ‖k‖ per token and head, clamped at 1e-6
  5. UCPE: each group of 4 of the first half multiplied by Pᵀ (q) or P⁻¹ (k, v); the second half's interleaved pairs
     rotated by the camera RoPE table
  6. only when the block downscales: each of q′, k′, v′ scaled per token and head by
     min(1, rms(ref) / max(rms(x′), 1e-6)), rms(t) = √(mean(t²) + 1e-6), ref = the tensor before step 5
  7. inflation² = (max(‖k′‖, 1e-6) / ‖k‖)² with k′ after step 6; its mean over the frame's tokens r_{t,h};
     β_cam = β / max(r, 1)
  8. numerator-only delta rule per frame: S ← g·S; S ← S + β(v − S k) kᵀ; o = S q; plus the same scan over time
     reversed with k, v, β flipped and shifted by one frame (zeros in front), g flipped and shifted (ones in front)
     and q only flipped; o_fwd + o_bwd
  9. inverse UCPE: P on the first half, the conjugate rotation on the second; out_proj_cam

Softmax block (`BidirectionalSoftmaxUCPESinglePathLiteLA`): steps 1, 3 without ReLU and without the key scale, 5 and
6 (refs: the normed q and k, raw v), then full attention over all tokens with the head dim zero-padded 112 → 128
(scale 1/√128), then 9.

Everything runs in the inputs' dtype (use float64); the bf16 casts of NVIDIA's softmax attention are not part of the
order of operations and are left out (build the model with reference_numerics=False to compare).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight


def _causal_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [B, T, S, C], w [C, K]: y_t = Σ_j w_j x_{t−K+1+j} with zeros before frame 0."""
    K, T = w.shape[1], x.shape[1]
    xp = F.pad(x, (0, 0, 0, 0, K - 1, 0))
    return sum(w[:, j] * xp[:, j : j + T] for j in range(K))


def _bidirectional_short_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    back = _causal_conv(x.flip(1), w).flip(1)
    return _causal_conv(x, w) + back - w[:, -1] * x


def _apply_4x4(x: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """x [B, N, Hd, G, 4], mat [B, N, 4, 4] → mat · x per group."""
    return torch.einsum("bnij,bnhgj->bnhgi", mat.to(x.dtype), x)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, conjugate: bool) -> torch.Tensor:
    """Interleaved pairs (2i, 2i+1) of x [B, N, Hd, 2P] as complex numbers times e^{±iθ}, θ from cos/sin [N, P]."""
    c, s = cos.to(x.dtype)[None, :, None], sin.to(x.dtype)[None, :, None]
    if conjugate:
        s = -s
    re, im = x[..., 0::2], x[..., 1::2]
    return torch.stack([re * c - im * s, re * s + im * c], dim=-1).flatten(-2)


def _ucpe(x: torch.Tensor, mat: torch.Tensor, cos, sin, conjugate: bool = False) -> torch.Tensor:
    half = x.shape[-1] // 2
    geo = _apply_4x4(x[..., :half].unflatten(-1, (-1, 4)), mat).flatten(-2)
    return torch.cat([geo, _rotate(x[..., half:], cos, sin, conjugate)], dim=-1)


def _downscale(ref: torch.Tensor, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    ref_rms = (ref.square().mean(-1, keepdim=True) + eps).sqrt()
    x_rms = (x.square().mean(-1, keepdim=True) + eps).sqrt()
    return x * (ref_rms / x_rms.clamp_min(eps)).clamp(max=1.0)


def _delta_scan(q, k, v, beta, g):
    """q, k, v [B, T, S, Hd, D]; beta [B, T, S, Hd]; g [B, T, Hd] → o [B, T, S, Hd, D], forward in time."""
    B, T, S, Hd, D = q.shape
    state = q.new_zeros(B, Hd, D, D)
    out = []
    for t in range(T):
        kt, vt, qt = (z[:, t].permute(0, 2, 3, 1) for z in (k, v, q))  # [B, Hd, D, S]
        bt = beta[:, t].permute(0, 2, 1)[:, :, None]  # [B, Hd, 1, S]
        state = state * g[:, t, :, None, None]
        delta = (vt - state @ kt) * bt
        state = state + delta @ kt.transpose(-1, -2)
        out.append((state @ qt).permute(0, 3, 1, 2))  # [B, S, Hd, D]
    return torch.stack(out, dim=1)


def _flip_and_shift(x: torch.Tensor, fill: float) -> torch.Tensor:
    """Reverse time (dim 1), drop the last, put `fill` in front."""
    r = x.flip(1)
    return torch.cat([torch.full_like(r[:, :1], fill), r[:, :-1]], dim=1)


def nvidia_camera_branch(attn, x: torch.Tensor, ctx, beta, g, downscale: bool) -> torch.Tensor:
    """NVIDIA's camera branch of block attention `attn` (our module, used only for its weights) on the modulated
    input x [B, N, C]; ctx supplies the per-token matrices (rays_T = Pᵀ, rays_inv = P⁻¹, rays = P) and the camera
    RoPE table; beta [B, T, S, Hd] and g [B, T, Hd] are the block's gates (GDN blocks). Returns out_proj_cam(o)."""
    B, N, C = x.shape
    T = ctx.grid[0]
    S = N // T
    Hd, D = attn.num_heads, attn.head_dim
    cos, sin = ctx.cam_rope
    heads = lambda t: t.unflatten(-1, (Hd, D))
    q, k, v = attn.q_proj_cam(x), attn.k_proj_cam(x), attn.v_proj_cam(x)
    gdn = attn.use_gdn
    if gdn:
        k = _bidirectional_short_conv(k.unflatten(1, (T, S)), attn.conv_k_cam.weight[:, 0]).flatten(1, 2)
    q = heads(_rms_norm(q, attn.q_norm_cam.weight, attn.q_norm_cam.eps))
    k = heads(_rms_norm(k, attn.k_norm_cam.weight, attn.k_norm_cam.eps))
    v = heads(v)
    if gdn:
        q, k = torch.relu(q), torch.relu(k) * (D**-0.5 * S**-0.5)
    pre_norm = k.norm(dim=-1).clamp_min(1e-6)
    qt, kt, vt = _ucpe(q, ctx.rays_T, cos, sin), _ucpe(k, ctx.rays_inv, cos, sin), _ucpe(v, ctx.rays_inv, cos, sin)
    if downscale:
        qt, kt, vt = _downscale(q, qt), _downscale(k, kt), _downscale(v, vt)
    if gdn:
        inflation_sq = (kt.norm(dim=-1).clamp_min(1e-6) / pre_norm) ** 2  # [B, N, Hd]
        frame_inflation = inflation_sq.unflatten(1, (T, S)).mean(dim=2, keepdim=True)  # [B, T, 1, Hd]
        beta_cam = beta / frame_inflation.clamp_min(1.0)
        f = lambda t: t.unflatten(1, (T, S))
        o_fwd = _delta_scan(f(qt), f(kt), f(vt), beta_cam, g)
        o_bwd = _delta_scan(f(qt).flip(1), _flip_and_shift(f(kt), 0.0), _flip_and_shift(f(vt), 0.0),
                            _flip_and_shift(beta_cam, 0.0), _flip_and_shift(g, 1.0)).flip(1)
        o = (o_fwd + o_bwd).flatten(1, 2)
    else:
        pad = 2 ** math.ceil(math.log2(D)) - D
        qp, kp, vp = (F.pad(t, (0, pad)).transpose(1, 2) for t in (qt, kt, vt))  # [B, Hd, N, 128]
        attn_w = torch.softmax(qp @ kp.transpose(-1, -2) / math.sqrt(D + pad), dim=-1)
        o = (attn_w @ vp)[..., :D].transpose(1, 2)
    o = _ucpe(o, ctx.rays, cos, sin, conjugate=True)
    return attn.out_proj_cam(o.flatten(-2))
