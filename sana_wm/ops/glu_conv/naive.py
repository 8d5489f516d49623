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


def naive_depthwise3x3(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Reference of `triton_dwconv.depthwise3x3`: x [N, H, W, C], taps [9, C] (row 3·kh + kw), bias [C] or None →
    the zero-padded depthwise 3×3 conv [N, H, W, C], computed in the wider of x's dtype and float32."""
    wide = torch.promote_types(x.dtype, torch.float32)
    C = x.shape[-1]
    weight = taps.to(wide).t().reshape(C, 1, 3, 3)
    y = F.conv2d(x.to(wide).permute(0, 3, 1, 2), weight, None if bias is None else bias.to(wide), padding=1, groups=C)
    return y.permute(0, 2, 3, 1).to(x.dtype).contiguous()


def naive_depthwise3x3_wgrad(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Reference of `triton_dwconv.depthwise3x3_wgrad`: x, dy [N, H, W, C] → [10, C] in the wider of x's dtype and
    float32: rows 0–8 Σ over frames and positions of dy · (x shifted by tap 3·kh + kw), row 9 Σ dy."""
    wide = torch.promote_types(x.dtype, torch.float32)
    C = x.shape[-1]
    xi, dyi = x.to(wide).permute(0, 3, 1, 2), dy.to(wide).permute(0, 3, 1, 2)
    weight = torch.zeros(C, 1, 3, 3, dtype=wide, device=x.device)
    _, dw, db = torch.ops.aten.convolution_backward(dyi, xi, weight, [C], [1, 1], [1, 1], [1, 1], False, [0, 0], C,
                                                    [False, True, True])
    return torch.cat([dw.reshape(C, 9).t(), db[None]])
