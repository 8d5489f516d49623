"""The FFN's SiLU → depthwise 3×3 → GLU middle (`GLUMBConvTemp`), as one stateless op.

`silu_depthwise_glu` has two paths:
  * composite (CPU, training, fallback): SiLU, the depthwise conv on a channels-last view of the token layout
    (cuDNN/ATen; no copy) and the GLU, which autograd and Inductor handle (Inductor fuses the SiLU and the GLU into
    its element-wise kernels around the conv);
  * fused (CUDA, no gradient to build): `triton_glu.silu_dwconv_glu`, SiLU, the conv taps, bias and GLU in one
    Triton kernel that reads the activation once and never writes the 2C-channel conv result (a registered custom
    op, so torch.compile keeps whole graphs). `SANA_WM_FUSED_GLU_CONV=0` or `set_fused_glu_conv(False)` turns it off.
`naive.py` is the float64 reference.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .naive import naive_silu_depthwise_glu

try:  # the fused forward needs Triton (CUDA machines); CPU machines and CI use the composite path
    from . import triton_glu
except Exception:  # noqa: BLE001 - any import problem (no triton, no driver) means "not available"
    triton_glu = None

__all__ = ["silu_depthwise_glu", "naive_silu_depthwise_glu", "set_fused_glu_conv"]

# cuDNN/ATen index conv inputs with int32: keep each depthwise call under 2³⁰ elements (minute-long clips).
MAX_CONV_ELEMENTS = 2**30
_FUSED = {"enabled": os.environ.get("SANA_WM_FUSED_GLU_CONV", "1") != "0"}


def set_fused_glu_conv(enabled: bool) -> bool:
    """Turn the fused Triton forward on or off (A/B timing, a safety switch); returns the previous setting."""
    previous = _FUSED["enabled"]
    _FUSED["enabled"] = bool(enabled)
    return previous


def _use_fused(*xs: torch.Tensor | None) -> bool:
    h = xs[0]
    if triton_glu is None or not _FUSED["enabled"] or not h.is_cuda:
        return False
    if h.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    return not (torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs))


@torch.library.custom_op("sana_wm::silu_dwconv3x3_glu", mutates_args=())
def _fused_op(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, height: int,
              width: int) -> torch.Tensor:
    return triton_glu.silu_dwconv_glu(h, weight, bias, (height, width))


@_fused_op.register_fake
def _(h, weight, bias, height, width):
    return h.new_empty((*h.shape[:-1], h.shape[-1] // 2))


def silu_depthwise_glu(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       hw: tuple[int, int]) -> torch.Tensor:
    """h [B, T, S = H·W, 2C] (the FFN's inverted-conv output, before SiLU) → value ⊙ SiLU(gate) [B, T, S, C], where
    (value, gate) = DWConv3×3(SiLU(h)) per frame with zero padding; weight [2C, 1, 3, 3], bias [2C] or None.

    Examples:
        >>> h = torch.randn(1, 2, 12, 8)
        >>> silu_depthwise_glu(h, torch.randn(8, 1, 3, 3), torch.zeros(8), (3, 4)).shape
        torch.Size([1, 2, 12, 4])
    """
    B, T, S, C2 = h.shape
    H, W = hw
    if H * W != S or C2 % 2 or tuple(weight.shape) != (C2, 1, 3, 3):
        raise ValueError(f"silu_depthwise_glu: h {list(h.shape)} needs S = H·W = {H}·{W} and an even channel count; "
                         f"weight {list(weight.shape)} must be [{C2}, 1, 3, 3]")
    if _use_fused(h, weight, bias):
        return _fused_op(h, weight, bias, H, W)
    img = F.silu(h).reshape(B * T, H, W, C2).permute(0, 3, 1, 2)  # [BT, 2C, H, W] channels_last strides, no copy
    step = max(1, MAX_CONV_ELEMENTS // (S * C2))
    outs = [F.conv2d(img[i : i + step], weight, bias, padding=1, groups=C2) for i in range(0, B * T, step)]
    value, gate = torch.cat(outs).permute(0, 2, 3, 1).reshape(B, T, S, C2).chunk(2, dim=-1)
    return value * F.silu(gate)
