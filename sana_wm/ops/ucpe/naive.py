"""Reference for the camera branch's per-token prologue (plain PyTorch, float64-capable): optional RMSNorm → ReLU →
scale, then UCPE, then (when `downscale`) the post-UCPE RMS clamp, and the squared norm ratio the GDN's β discount is
built from. Whether a block clamps is the model's `camera_rms_downscale` choice (docs/design/nvidia-fidelity.md).
`naive_ucpe_clamp` is the composition the model ran before the fused op, with the same roundings;
`naive_ucpe_clamp_backward` is its adjoint written out, which the Triton backward follows step by step."""

from __future__ import annotations

import torch

from sana_wm.ops.qk_prologue.naive import rms_backward, rms_relu_scale, rotate_pairs

CLAMP_EPS = 1e-6  # ε of the RMS clamp and of the norm ratio (docs/design/architecture.md §6.1 steps 5–6)


def ucpe(x: torch.Tensor, mat: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
         inverse_rope: bool = False) -> torch.Tensor:
    """UCPE on x [B, N, Hd, D]: groups of 4 in the first half multiplied by the per-token 4×4 `mat` [B, N, 4, 4]
    (bf16-exact products summed in float32, rounded once), the second half's interleaved pairs rotated by the
    re-sliced RoPE table cos/sin [N, D/4] in float32 (conjugate when `inverse_rope`). Out in x's dtype.

    Written as broadcast multiply-adds rather than an einsum: as a GEMM this is a batch of 4×4 products that runs on
    16×16 tensor-core tiles at a few % of peak, while as element-wise work it fuses into its neighbours.
    """
    wide = torch.promote_types(x.dtype, torch.float32)
    half = x.shape[-1] // 2
    geo, rot = x[..., :half], x[..., half:]
    g = geo.unflatten(-1, (-1, 4)).to(wide)  # [B, N, Hd, D/8, 4]
    m = mat.to(x.dtype).to(wide)[:, :, None, None]  # [B, N, 1, 1, 4, 4]
    out = m[..., 0] * g[..., 0:1]
    for j in range(1, 4):
        out = out + m[..., j] * g[..., j : j + 1]
    return torch.cat([out.flatten(-2), rotate_pairs(rot, cos, sin, inverse_rope)], dim=-1).to(x.dtype)


def clamp_to_reference_rms(reference: torch.Tensor, x: torch.Tensor, eps: float = CLAMP_EPS) -> torch.Tensor:
    """Shrink each head vector of x back to the RMS of its pre-UCPE `reference` if the transform inflated it."""
    ref_rms = (reference.square().mean(-1, keepdim=True) + eps).sqrt()
    x_rms = (x.square().mean(-1, keepdim=True) + eps).sqrt()
    return x * (ref_rms / x_rms.clamp_min(eps)).clamp(max=1.0)


def _prenorm(x, weight, relu, scale, norm_eps):
    """The optional RMSNorm (over all C) → ×weight → ReLU → ×scale, as the query/key prologue's."""
    return x if weight is None else rms_relu_scale(x, weight, relu, scale, norm_eps)


def naive_ucpe_clamp(x: torch.Tensor, mat: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     weight: torch.Tensor | None = None, relu: bool = False, scale: float = 1.0,
                     norm_eps: float = 1e-5, num_heads: int = 1,
                     downscale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, N, C = Hd·D] → (xu [B, N, C] in x's dtype, ratio [B, N, Hd] float32 (float64 for float64 x)):

        a     = x, or ReLU?(RMSNorm(x)·weight)·scale when a norm weight is given
        xu    = clamp_to_reference_rms(a, UCPE(a)) if downscale else UCPE(a)      per head
        ratio = (max(‖xu‖, ε) / max(‖a‖, ε))²                   per head; the key's inflation (β discount)
    """
    a = _prenorm(x, weight, relu, scale, norm_eps).unflatten(-1, (num_heads, -1))
    xu = ucpe(a, mat, cos, sin)
    if downscale:
        xu = clamp_to_reference_rms(a, xu)
    wide = torch.promote_types(x.dtype, torch.float32)
    ratio = (xu.to(wide).norm(dim=-1).clamp_min(CLAMP_EPS) / a.to(wide).norm(dim=-1).clamp_min(CLAMP_EPS)) ** 2
    return xu.flatten(-2), ratio


def naive_ucpe_clamp_backward(x, mat, cos, sin, weight, relu, scale, norm_eps, num_heads, g_xu, g_ratio,
                              downscale: bool = True):
    """The adjoint of `naive_ucpe_clamp` written out in the wide dtype: (dx in x's dtype, dweight or None).

    Per head, with u = UCPE(a), f = min(ρ_a / max(ρ_u, ε), 1) (f ≡ 1, ∂f = 0 without `downscale`),
    ρ = √(mean(·²) + ε), xu = f·u:
        G   = g_xu + g_ratio · 2·xu / max(‖a‖, ε)²   [‖xu‖ ≥ ε]        the ratio's pull on xu
        du  = f·G + (∂f/∂ρ_u)·u / (D·ρ_u),   ∂f = Σ G·u where f = ρ_a/max(ρ_u, ε) ≤ 1, else 0
        da  = UCPEᵀ(du) + (∂f/∂ρ_a)·a / (D·ρ_a) − g_ratio · 2·ratio·a / ‖a‖²   [‖a‖ ≥ ε]
    then back through ×scale, ReLU, ×weight and the RMS norm as in `qk_prologue`.
    """
    wide = torch.promote_types(x.dtype, torch.float32)
    eps = CLAMP_EPS
    a_rounded = _prenorm(x, weight, relu, scale, norm_eps)
    a = a_rounded.unflatten(-1, (num_heads, -1)).to(wide)
    D = a.shape[-1]
    u = ucpe(a_rounded.unflatten(-1, (num_heads, -1)), mat, cos, sin).to(wide)
    rho_a = (a.square().mean(-1, keepdim=True) + eps).sqrt()
    rho_u = (u.square().mean(-1, keepdim=True) + eps).sqrt()
    den = rho_u.clamp_min(eps)
    q = rho_a / den
    f = q.clamp(max=1.0) if downscale else torch.ones_like(q)
    xu = (u * f).to(x.dtype).to(wide)
    na, nu = a.norm(dim=-1, keepdim=True), xu.norm(dim=-1, keepdim=True)
    ratio = (nu.clamp_min(eps) / na.clamp_min(eps)) ** 2
    gr = g_ratio.to(wide)[..., None]
    G = g_xu.unflatten(-1, (num_heads, -1)).to(wide) + torch.where(nu >= eps, gr * 2 * xu / na.clamp_min(eps) ** 2, 0)
    dq = torch.where(q <= 1.0, (G * u).sum(-1, keepdim=True), 0) if downscale else torch.zeros_like(q)
    d_den = -dq * rho_a / den**2
    d_rho_u = torch.where(rho_u >= eps, d_den, 0)
    du = f * G + d_rho_u * u / (D * rho_u)
    da = ucpe(du, mat.to(x.dtype).transpose(-1, -2), cos, sin, inverse_rope=True)  # UCPEᵀ: Mᵀ on the geometry, R⁻¹ = Rᵀ
    da = da + (dq / den) * a / (D * rho_a) - torch.where(na >= eps, gr * 2 * ratio * a / na.clamp_min(eps) ** 2, 0)
    da = da.flatten(-2)
    if weight is None:
        return da.to(x.dtype), None
    return rms_backward(x, weight, da, relu, scale, norm_eps)
