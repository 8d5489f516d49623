"""The FFN's SiLU → depthwise 3×3 → GLU middle (`GLUMBConvTemp`), as one differentiable op.

`silu_depthwise_glu(h, weight, bias, hw)`: on CUDA and when autograd will need its backward (training), SiLU in
PyTorch (Inductor folds it into the producer's element-wise kernel), then the registered op `sana_wm::dwconv_glu`, whose
forward (conv + bias + GLU) and backward (GLU adjoint, transposed conv, weight and bias gradients) are Triton kernels in
`triton_glu.py`. Otherwise (inference, CPU, or `SANA_WM_FUSED_GLU_CONV=0`) the composite path: SiLU, cuDNN/ATen's
depthwise conv on a channels-last view of the token layout (no copy), and the GLU, which autograd and Inductor handle.
`naive.py` is the reference.

History (bench/RESULTS.md). Three fused Triton forwards were tried for inference on 2026-12-01 and, alone, were not
kept: SiLU evaluated per tap (+≈460 ms per 961-frame forward: nine SiLUs per element bind the special-function
units); SiLU outside and the nine taps gathered per output tile from L1/L2 (3.5 ms per 961-frame call vs cuDNN's
5.3 ms for the conv alone, yet the model no faster, 3320.0 vs 3296.7 ms); and one pass walking image rows with the
horizontal taps as 0/1 shift MMAs (7.1 ms per call, latency-bound). The training step is where the composite path
costs most: its backward (cuDNN dgrad and wgrad, Inductor's GLU adjoint and bias reduction) and the recompute under
selective checkpointing took ≈ 4.3 ms per block at 161 frames. The tap-gather forward is back as the first half of a
forward/backward pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sana_wm.ops.switch import KernelSwitch

from .naive import naive_dwconv_glu, naive_silu_depthwise_glu

try:  # Triton is optional: CPU machines and CI run the composite path.
    from .triton_glu import dwconv_glu_backward, dwconv_glu_forward
except Exception:  # noqa: BLE001 - any import problem (no triton, no driver) means "not available"
    dwconv_glu_forward = dwconv_glu_backward = None

__all__ = ["silu_depthwise_glu", "naive_silu_depthwise_glu", "naive_dwconv_glu", "set_fused_glu_conv"]

# SANA_WM_FUSED_GLU_CONV=0 runs the composite path on CUDA too (A/B timing, and a safety switch).
_SWITCH = KernelSwitch("SANA_WM_FUSED_GLU_CONV", dwconv_glu_forward is not None)
_use_triton = _SWITCH.use


def set_fused_glu_conv(enabled: bool) -> bool:
    """Turn the Triton conv + GLU on/off process-wide; returns the previous setting."""
    return _SWITCH.set(enabled)


@torch.library.custom_op("sana_wm::dwconv_glu", mutates_args=())
def _dwconv_glu_op(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, H: int, W: int) -> torch.Tensor:
    """a = SiLU(h) [B, T, S, 2C]; weight [2C, 1, 3, 3] and bias [2C] | None in a's dtype → [B, T, S, C]."""
    if _use_triton(a):
        return dwconv_glu_forward(a.contiguous(), weight, bias, (H, W))
    return naive_dwconv_glu(a, weight, bias, (H, W)).contiguous()


@_dwconv_glu_op.register_fake
def _(a, weight, bias, H, W):
    return a.new_empty(*a.shape[:3], a.shape[3] // 2)


@torch.library.custom_op("sana_wm::dwconv_glu_backward", mutates_args=())
def _dwconv_glu_backward_op(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grad_out: torch.Tensor,
                            H: int, W: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(da in a's dtype, dweight [2C, 1, 3, 3] and dbias [2C] in float32, float64 for float64 a); dbias is zeros
    without a bias. Its own op so that compiled graphs see one opaque node."""
    if _use_triton(a):
        return dwconv_glu_backward(a.contiguous(), weight, bias, grad_out.to(a.dtype), (H, W))
    acc = torch.promote_types(a.dtype, torch.float32)
    b = torch.zeros(weight.shape[0], dtype=a.dtype, device=a.device) if bias is None else bias
    _, vjp = torch.func.vjp(lambda a, w, b: naive_dwconv_glu(a, w, b, (H, W)), a, weight, b)
    da, dw, db = vjp(grad_out.to(a.dtype))
    return da.contiguous(), dw.to(acc), db.to(acc)


@_dwconv_glu_backward_op.register_fake
def _(a, weight, bias, grad_out, H, W):
    acc = torch.promote_types(a.dtype, torch.float32)
    return (torch.empty_like(a), weight.new_empty(weight.shape, dtype=acc),
            weight.new_empty(weight.shape[0], dtype=acc))


def _setup_context(ctx, inputs, output):
    a, weight, bias, H, W = inputs
    ctx.save_for_backward(a, weight, bias)
    ctx.hw = (H, W)


def _backward(ctx, grad_out):
    a, weight, bias = ctx.saved_tensors
    da, dw, db = _dwconv_glu_backward_op(a, weight, bias, grad_out, *ctx.hw)
    return da, dw.to(weight.dtype), None if bias is None else db.to(bias.dtype), None, None


_dwconv_glu_op.register_autograd(_backward, setup_context=_setup_context)

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
    # The fused pair where autograd will run its backward; a forward alone (inference) keeps the composite path,
    # which the fused forward by itself did not beat in the compiled model (see the module docstring).
    if _use_triton(h) and torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _dwconv_glu_op(F.silu(h).contiguous(), weight.to(h.dtype),
                              None if bias is None else bias.to(h.dtype), H, W)
    img = F.silu(h).reshape(B * T, H, W, C2).permute(0, 3, 1, 2)  # [BT, 2C, H, W] channels_last strides, no copy
    step = max(1, MAX_CONV_ELEMENTS // (S * C2))
    outs = [F.conv2d(img[i : i + step], weight, bias, padding=1, groups=C2) for i in range(0, B * T, step)]
    value, gate = torch.cat(outs).permute(0, 2, 3, 1).reshape(B, T, S, C2).chunk(2, dim=-1)
    return value * F.silu(gate)
