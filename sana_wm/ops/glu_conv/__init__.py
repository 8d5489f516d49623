"""The FFN's SiLU → depthwise 3×3 → GLU middle (`GLUMBConvTemp`), as one stateless op.

`silu_depthwise_glu` runs SiLU, the depthwise conv on a channels-last view of the token layout (cuDNN/ATen; no copy)
and the GLU, which autograd and Inductor handle: Inductor fuses the SiLU and the GLU into its element-wise kernels
around the conv, and cuDNN's depthwise conv was faster than each Triton conv written for it, so neither hand-fused
Triton forwards nor a Triton conv beat this path in the compiled model. `naive.py` is the reference.

Training on CUDA changes two things, each because the default was slower:
* the GLU's backward is one Triton pass (`triton_glu.py`) that adds the conv's bias, writes both halves of the conv's
  output gradient and sums the bias gradient on the way, instead of Inductor's `cat` kernel and its two-kernel bias
  reduction; `SANA_WM_FUSED_GLU_BWD=0` switches it off;
* the conv's input gradient is a forward conv with the flipped kernel (`_DepthwiseConv3x3`), which cuDNN runs faster
  than its data-gradient kernel.

Measurements, and the log of the variants tried and removed: bench/RESULTS.md, "Kernel design log", FFN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sana_wm.ops import switch

from .naive import naive_glu_backward, naive_silu_depthwise_glu


def _import_kernels():  # Triton is optional: CPU machines and CI run the PyTorch path
    from .triton_glu import glu_backward as _triton_glu_backward

    return _triton_glu_backward


__all__ = ["silu_depthwise_glu", "naive_silu_depthwise_glu", "naive_glu_backward"]

# SANA_WM_FUSED_GLU_BWD=0 (`sana_wm.ops.switch`) keeps the GLU's backward in Inductor on CUDA too (A/B timing,
# and a safety switch).
_SWITCH = switch.get("SANA_WM_FUSED_GLU_BWD")
_triton_glu_backward = switch.load_kernels(_import_kernels, _SWITCH)

# Depthwise convs fail on tensors of more than 2³¹ − 1 elements despite cuDNN's 64-bit indexing (pytorch/pytorch
# #152816), so minute-long clips are split into calls of whole frames under that limit. One call where it fits: at 961
# frames (1.43·10⁹ elements) two calls cost 1.2 ms more per block than one (Inductor's GLU pass then reads a cat).
MAX_CONV_ELEMENTS = 2**31 - 1


class _DepthwiseConv3x3(torch.autograd.Function):
    """Depthwise 3×3 conv (stride 1, zero padding 1) whose input gradient is itself a forward depthwise conv with the
    spatially flipped kernel: the same sums, since a stride-1 "same" convolution's transpose is the correlation with
    the flipped taps. cuDNN's forward kernel for this shape runs at about twice the speed of its data-gradient kernel
    (0.49 vs 0.92 ms per call at 161 frames on an H200), which saves ≈ 8 ms per 161-frame training step (bench/
    RESULTS.md, "Kernel design log"). The weight and bias gradients stay cuDNN's (`convolution_backward` without the data part).
    A plain autograd.Function: torch.compile traces it into the block graph, and selective checkpointing sees the
    `aten.convolution` inside as any other op; plain checkpointing under torch 2.11 does not, which is why compiled
    "full" checkpointing goes through the selective path (`sana_wm.parallel._recompute_all_context`)."""

    @staticmethod
    def forward(ctx, img, weight, bias):
        ctx.save_for_backward(img, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(img, weight, bias, padding=1, groups=img.shape[1])

    @staticmethod
    def backward(ctx, dy):
        img, weight = ctx.saved_tensors
        C = img.shape[1]
        # Under autocast the forward ran in dy's dtype: the gradients are computed in it, and autograd casts them to
        # the inputs' dtypes.
        w = weight.to(dy.dtype)
        dimg = F.conv2d(dy, w.flip(-2, -1), None, padding=1, groups=C) if ctx.needs_input_grad[0] else None
        dw = db = None
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            _, dw, db = torch.ops.aten.convolution_backward(
                dy, img.to(dy.dtype), w, [C] if ctx.has_bias else None, [1, 1], [1, 1], [1, 1], False, [0, 0], C,
                [False, bool(ctx.needs_input_grad[1]), bool(ctx.has_bias and ctx.needs_input_grad[2])])
        return dimg, dw, db


@torch.library.custom_op("sana_wm::glu_backward", mutates_args=())
def _glu_backward_op(z: torch.Tensor, bias: torch.Tensor, dout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dz [..., 2h] in z's dtype, dbias [2h] float32) of `_BiasGLU`; an opaque op so that a compiled backward
    launches the Triton kernel (a bare launch cannot run on AOTAutograd's fake tensors)."""
    zf, df = z.reshape(-1, z.shape[-1]), dout.reshape(-1, dout.shape[-1])
    if _SWITCH.use(z) and zf.stride(-1) == 1 and df.stride(-1) == 1:
        dz, db = _triton_glu_backward(zf, bias, df)
    else:
        dz, db = naive_glu_backward(zf, bias, df)
        dz, db = dz.contiguous(), db.float()
    return dz.reshape(z.shape), db


@_glu_backward_op.register_fake
def _(z, bias, dout):
    return torch.empty(z.shape, dtype=z.dtype, device=z.device), z.new_empty(z.shape[-1], dtype=torch.float32)


class _BiasGLU(torch.autograd.Function):
    """value · SiLU(gate) with (value, gate) = (z + bias).chunk(2) and z the depthwise conv's output before its bias:
    the forward stays element-wise work for Inductor to fuse; the backward is `sana_wm::glu_backward` (one Triton pass
    that also sums the bias gradient, `triton_glu.py`)."""

    @staticmethod
    def forward(ctx, z, bias):
        ctx.save_for_backward(z, bias)
        value, gate = (z + bias.to(z.dtype)).chunk(2, dim=-1)
        return value * F.silu(gate)

    @staticmethod
    def backward(ctx, dout):
        z, bias = ctx.saved_tensors
        dz, db = _glu_backward_op(z, bias.to(z.dtype), dout)
        return dz, db.to(bias.dtype)


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
    # Training on CUDA: the conv without its bias, which the GLU's Triton backward folds in (and sums its gradient).
    glu_kernel = bias is not None and torch.is_grad_enabled() and _SWITCH.use(h)
    conv_bias = None if glu_kernel else bias
    # One call takes img itself, not a no-op slice: a slice's backward (`slice_backward`) would write the input
    # gradient into a new NCHW-contiguous buffer, turning the channels-last data gradient into a channel-major one
    # that the SiLU backward then reads and writes with a transpose (a `clone_permute` kernel in the compiled step).
    parts = [img] if step >= B * T else [img[i : i + step] for i in range(0, B * T, step)]
    outs = [_DepthwiseConv3x3.apply(part, weight, conv_bias) for part in parts]
    z = (outs[0] if len(outs) == 1 else torch.cat(outs)).permute(0, 2, 3, 1).reshape(B, T, S, C2)
    if glu_kernel:
        return _BiasGLU.apply(z, bias)
    value, gate = z.chunk(2, dim=-1)
    return value * F.silu(gate)
