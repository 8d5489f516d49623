"""Reference for the GDN main branch's query/key prologue (plain PyTorch, float64-capable): the composition the model
ran before the fused op, with the same roundings."""

from __future__ import annotations

import torch


def naive_rms_relu_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                        scale: float = 1.0, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, N, C] → (y, y_rot), each [B, N, C] in x's dtype, with heads of D = 2P channels (cos/sin [N, P]):

        y     = ReLU(RMSNorm(x) · weight) · scale       RMS over all C channels in float32, rounded to x's dtype,
                                                         then the weight and the scale each in x's dtype
        y_rot = RoPE(y)                                  interleaved pairs (2j, 2j+1) of each head rotated in float32
    """
    B, N, C = x.shape
    y = rms_relu_scale(x, weight, True, scale, eps)
    heads = (B, N, C // (2 * cos.shape[-1]), -1)
    return y, rotate_pairs(y.reshape(heads), cos, sin).reshape(B, N, C).to(x.dtype)


def rms_relu_scale(x: torch.Tensor, weight: torch.Tensor, relu: bool, scale: float, eps: float) -> torch.Tensor:
    """ReLU?(RMSNorm(x) · weight) · scale over the last axis: the statistic in float32 (float64 for float64 x), the
    normalised row rounded to x's dtype, then the weight and the scale each in x's dtype."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight.to(x.dtype)
    if relu:
        y = torch.relu(y)
    return y * scale if scale != 1.0 else y


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Interleaved pairs (2j, 2j+1) of x [B, N, H, 2P] turned by the angles of cos/sin [N, P] (back by them when
    `inverse`), in float32 (float64 for float64 x); returns that wide dtype, x's shape."""
    wide = torch.promote_types(x.dtype, torch.float32)
    re, im = x.to(wide).unflatten(-1, (-1, 2)).unbind(-1)  # [B, N, H, P]
    c, s = cos.to(wide)[:, None, :], sin.to(wide)[:, None, :]
    if inverse:
        s = -s
    return torch.stack([re * c - im * s, re * s + im * c], dim=-1).flatten(-2)


def naive_rms_relu_rope_backward(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                                 gy: torch.Tensor, gy_rot: torch.Tensor, scale: float = 1.0,
                                 eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """The adjoint of `naive_rms_relu_rope` written out (what the Triton backward computes), in float32 (float64 for
    float64 inputs): (dx in x's dtype, dweight in the wide dtype) for upstream gradients gy, gy_rot [B, N, C].
    The gradient at y is gy + Rᵀ gy_rot (each pair turned back by its angle); `rms_backward` does the rest."""
    B, N, C = x.shape
    back = rotate_pairs(gy_rot.reshape(B, N, C // (2 * cos.shape[-1]), -1), cos, sin, inverse=True).reshape(B, N, C)
    return rms_backward(x, weight, gy.to(back.dtype) + back, True, scale, eps)


def rms_backward(x: torch.Tensor, weight: torch.Tensor, g_out: torch.Tensor, relu: bool, scale: float,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint of y = ReLU?(RMSNorm(x)·w)·scale (norm rounded to x's dtype, then each product): (dx, dw).

        g  = g_out · scale · [y > 0]
        dw = Σ_tokens g · n                           n = RMSNorm(x) rounded to x's dtype
        dx = r · (g·w − x̂ · mean(g·w · x̂))           x̂ = x·r, r = 1/√(mean(x²) + ε)
    """
    wide = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(wide)
    r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    xh = xf * r
    n = xh.to(x.dtype)
    g = g_out.to(wide) * scale
    if relu:
        g = torch.where((n * weight.to(x.dtype)) > 0, g, 0.0)
    dw = (g * n.to(wide)).sum((0, 1))
    gn = g * weight.to(x.dtype).to(wide)
    dx = r * (gn - xh * (gn * xh).mean(-1, keepdim=True))
    return dx.to(x.dtype), dw
