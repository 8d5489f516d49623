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
