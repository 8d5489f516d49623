"""Reference for the FFN's SiLU → depthwise 3×3 → GLU middle (float64-capable, plain PyTorch, NCHW convolution)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_silu_depthwise_glu(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             hw: tuple[int, int]) -> torch.Tensor:
    """h [B, T, S = H·W, 2C] → value ⊙ SiLU(gate) [B, T, S, C], where (value, gate) = DWConv3×3(SiLU(h)) per frame
    (zero padding 1; weight [2C, 1, 3, 3], bias [2C]), computed in h's dtype without intermediate rounding tricks."""
    B, T, S, C2 = h.shape
    H, W = hw
    img = F.silu(h).reshape(B * T, H, W, C2).permute(0, 3, 1, 2)
    z = F.conv2d(img, weight.to(h.dtype), None if bias is None else bias.to(h.dtype), padding=1, groups=C2)
    value, gate = z.permute(0, 2, 3, 1).reshape(B, T, S, C2).chunk(2, dim=-1)
    return value * F.silu(gate)


def naive_glu_backward(z: torch.Tensor, bias: torch.Tensor | None, dout: torch.Tensor):
    """The adjoint of out = (z_v + b_v) · SiLU(z_g + b_g), (z_v, z_g) = z.chunk(2, −1), computed in the wide dtype:
    z [..., 2h], dout [..., h], bias [2h] or None → (dz in z's dtype, dbias = Σ over rows of the rounded dz, in the wide
    dtype)."""
    wide = torch.promote_types(z.dtype, torch.float32)
    zb = z.to(wide) + (0 if bias is None else bias.to(wide))
    value, gate = zb.chunk(2, dim=-1)
    sig = torch.sigmoid(gate)
    do = dout.to(wide)
    dz = torch.cat([do * gate * sig, do * value * sig * (1 + gate * (1 - sig))], dim=-1).to(z.dtype)
    return dz, dz.to(wide).flatten(0, -2).sum(0)
