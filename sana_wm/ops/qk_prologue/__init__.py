"""The GDN main branch's query/key prologue — RMSNorm → ×weight → ReLU → ×scale → RoPE — as one differentiable op.

`rms_relu_rope(x, weight, cos, sin, scale, eps)` returns the prologue output y and its rotation y_rot (the GDN reads
both: y in the normaliser stream, y_rot in the numerator). On CUDA it is a registered op whose forward and backward
are each one Triton pass over token rows (`triton_prologue.py`); elsewhere, and with the kernels off, the PyTorch
composition in `naive.py`, which is the reference (its adjoint, written out, is the op's backward off CUDA).

Why a hand kernel: Inductor's fusion of this chain was a looped-reduction kernel writing float32 rotations plus two
copies to bf16, about five times the chain's memory floor at 961 frames (bench/RESULTS.md, "Kernel design log"). As a registered op it is also one node that selective checkpointing can keep (`sana_wm.parallel`),
so training does not recompute it. `SANA_WM_FUSED_PROLOGUE=0` runs the composition on CUDA too.
"""

from __future__ import annotations

import torch

from sana_wm.ops import switch

from .naive import naive_rms_relu_rope, naive_rms_relu_rope_backward


def _import_kernels():  # Triton is optional: CPU machines and CI run the composition
    from .triton_prologue import rms_relu_rope_backward, rms_relu_rope_forward

    return rms_relu_rope_backward, rms_relu_rope_forward


__all__ = ["naive_rms_relu_rope", "naive_rms_relu_rope_backward", "rms_relu_rope"]

# SANA_WM_FUSED_PROLOGUE=0 (`sana_wm.ops.switch`) runs the PyTorch path on CUDA too (A/B timing, and a safety
# switch).
_SWITCH = switch.get("SANA_WM_FUSED_PROLOGUE")
rms_relu_rope_backward, rms_relu_rope_forward = switch.load_kernels(_import_kernels, _SWITCH) or (None, None)
_use_triton = _SWITCH.use


@torch.library.custom_op("sana_wm::rms_relu_rope", mutates_args=())
def _prologue_op(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: float,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = weight.to(x.dtype)
    if _use_triton(x):
        return rms_relu_rope_forward(x if x.stride(-1) == 1 else x.contiguous(), w, cos.float(), sin.float(), scale,
                                     eps)
    y, y_rot = naive_rms_relu_rope(x, w, cos, sin, scale, eps)
    return y.contiguous(), y_rot.contiguous()


@_prologue_op.register_fake
def _(x, weight, cos, sin, scale, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("sana_wm::rms_relu_rope_backward", mutates_args=())
def _prologue_backward_op(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                          gy: torch.Tensor, gy_rot: torch.Tensor, scale: float,
                          eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx in x's dtype, dweight in float32, float64 for float64 x) — its own op so that compiled graphs see one
    opaque node (a bare Triton launch in a backward cannot run on AOTAutograd's fake tensors)."""
    w = weight.to(x.dtype)
    if _use_triton(x):
        return rms_relu_rope_backward(x if x.stride(-1) == 1 else x.contiguous(), w, cos.float(), sin.float(),
                                      gy.to(x.dtype), gy_rot.to(x.dtype), scale, eps)
    dx, dw = naive_rms_relu_rope_backward(x, w, cos, sin, gy, gy_rot, scale, eps)
    return dx.contiguous(), dw


@_prologue_backward_op.register_fake
def _(x, weight, cos, sin, gy, gy_rot, scale, eps):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            torch.empty(weight.shape, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device))


def _setup_context(ctx, inputs, output):
    x, weight, cos, sin, scale, eps = inputs
    ctx.save_for_backward(x, weight, cos, sin)
    ctx.scale, ctx.eps = scale, eps


def _backward(ctx, gy, gy_rot):
    x, weight, cos, sin = ctx.saved_tensors
    gy = torch.zeros_like(x) if gy is None else gy
    gy_rot = torch.zeros_like(x) if gy_rot is None else gy_rot
    dx, dw = _prologue_backward_op(x, weight, cos, sin, gy, gy_rot, ctx.scale, ctx.eps)
    return dx, dw.to(weight.dtype), None, None, None, None


_prologue_op.register_autograd(_backward, setup_context=_setup_context)


def rms_relu_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: float = 1.0,
                  eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, N, C] (channel stride 1; e.g. a column slice of a fused projection), weight [C], cos/sin [N, P] with
    heads of D = 2P channels → (y, y_rot), each contiguous [B, N, C] in x's dtype; see `naive.py` for the maths.

    Examples:
        >>> x = torch.tensor([[[3.0, -4.0, 0.0, 0.0]]]); cs = torch.tensor([[0.0, 1.0]])  # one head, D = 4
        >>> y, y_rot = rms_relu_rope(x, torch.ones(4), cos=cs, sin=torch.tensor([[1.0, 0.0]]))
        >>> y, y_rot  # RMS 2.5; the first pair turned by 90°, the second by 0°
        (tensor([[[1.2000, 0.0000, 0.0000, 0.0000]]]), tensor([[[0.0000, 1.2000, 0.0000, 0.0000]]]))
    """
    if x.dim() != 3 or weight.shape != (x.shape[-1],) or cos.dim() != 2 or cos.shape != sin.shape \
            or cos.shape[0] != x.shape[1] or x.shape[-1] % (2 * cos.shape[-1]):
        raise ValueError(f"rms_relu_rope: x must be [B, N, C], weight [C], cos/sin [N, P] with C a multiple of 2P; "
                         f"got x {list(x.shape)}, weight {list(weight.shape)}, cos {list(cos.shape)}, "
                         f"sin {list(sin.shape)}")
    if _use_triton(x):
        return _prologue_op(x, weight, cos, sin, float(scale), float(eps))
    # Elsewhere the composition itself, so that autograd and torch.compile see through it.
    return naive_rms_relu_rope(x, weight, cos, sin, scale, eps)
