"""The FFN's SiLU → depthwise 3×3 → GLU middle (`GLUMBConvTemp`), as one stateless op.

`silu_depthwise_glu` runs SiLU, the depthwise conv on a channels-last view of the token layout (cuDNN/ATen; no copy)
and the GLU, which autograd and Inductor handle (Inductor fuses the SiLU and the GLU into its element-wise kernels
around the conv). `naive.py` is the reference.

Three fused Triton forwards were tried on 2026-12-01 and removed, none faster than this path in the compiled model on
an H200 (bench/RESULTS.md): SiLU evaluated per tap (+≈460 ms per 961-frame forward: nine SiLUs per element bind the
special-function units); SiLU outside and the nine taps gathered per output tile from L1/L2 (3.5 ms per 961-frame
call vs cuDNN's 5.3 ms for the conv alone, yet the model no faster, 3320.0 vs 3296.7 ms); and one pass walking image
rows with SiLU once per element and the horizontal taps as 0/1 shift MMAs (7.1 ms per call, latency-bound; model
3359.5 vs 3368.0 ms). In the compiled model Inductor already folds the SiLU and the GLU into neighbouring kernels.

A training pair was tried in the sixth session of 2026-12-01 and removed (commit 41e61c8 has it, with GPU tests): the
tap-gather forward plus a backward of two Triton kernels (GLU adjoint writing dz; transposed conv with per-frame
float32 weight and bias partials). Its float32 and three of four bf16 cases matched float64 on the GPU, but in the
compiled 161-frame training step its kernels took ≈ 125 ms against ≈ 91 ms for this path's cuDNN conv, dgrad, wgrad
and Inductor kernels (forward 0.80 ms per call vs 0.49 + 0.19, the dgrad/wgrad kernel 2.6 ms vs 0.88 + 0.53 + 0.34;
bench/RESULTS.md run 26).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import naive_silu_depthwise_glu

__all__ = ["silu_depthwise_glu", "naive_silu_depthwise_glu"]

# Depthwise convs fail on tensors of more than 2³¹ − 1 elements despite cuDNN's 64-bit indexing (pytorch/pytorch
# #152816), so minute-long clips are split into calls of whole frames under that limit. One call where it fits: at 961
# frames (1.43·10⁹ elements) two calls cost 1.2 ms more per block than one (Inductor's GLU pass then reads a cat).
MAX_CONV_ELEMENTS = 2**31 - 1


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
    img = F.silu(h).reshape(B * T, H, W, C2).permute(0, 3, 1, 2)  # [BT, 2C, H, W] channels_last strides, no copy
    step = max(1, MAX_CONV_ELEMENTS // (S * C2))
    outs = [F.conv2d(img[i : i + step], weight, bias, padding=1, groups=C2) for i in range(0, B * T, step)]
    value, gate = torch.cat(outs).permute(0, 2, 3, 1).reshape(B, T, S, C2).chunk(2, dim=-1)
    return value * F.silu(gate)
