"""The GDN's bidirectional short convolution along frames, as one differentiable op.

`bidirectional_short_conv(x, weight)` runs in one Triton pass on CUDA (float32 accumulation, rounded once) and as
shifted adds elsewhere; `naive.py` is the reference. It is a registered custom op so that `torch.compile` keeps it
as one opaque node. Why not let Inductor fuse the shifted adds into their consumers: it did, and recomputed the seven
taps inside every kernel that reads the convolved keys (the RMS-norm statistics and normalising passes of the main and
camera keys), several times the cost of one pass; with the Triton pass the norms read a plain tensor (bench/RESULTS.md,
"Kernel design log").

The filter is symmetric, so its adjoint is itself: dx = conv(dy). The weight gradient is the correlation of dy with
the shifted inputs, written as PyTorch sums that Inductor fuses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sana_wm.ops import switch

from .naive import naive_bidirectional_short_conv


def _import_kernels():  # Triton is optional: CPU machines and CI run the PyTorch shifted adds
    from .triton_conv import short_conv_forward

    return short_conv_forward


__all__ = ["bidirectional_short_conv", "naive_bidirectional_short_conv"]

# SANA_WM_FUSED_SHORT_CONV=0 (`sana_wm.ops.switch`) runs the PyTorch path on CUDA too (A/B timing, and a
# safety switch).
_SWITCH = switch.get("SANA_WM_FUSED_SHORT_CONV")
short_conv_forward = switch.load_kernels(_import_kernels, _SWITCH)
_use_triton = _SWITCH.use


@torch.library.custom_op("sana_wm::bidirectional_short_conv", mutates_args=())
def _short_conv_op(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if _use_triton(x):
        return short_conv_forward(x, weight.to(x.dtype))
    return naive_bidirectional_short_conv(x, weight).contiguous()


@_short_conv_op.register_fake
def _(x, weight):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _setup_context(ctx, inputs, output):
    x, weight = inputs
    ctx.save_for_backward(x, weight)


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    K, T = weight.shape[1], x.shape[1]
    dx = _short_conv_op(dy, weight)  # symmetric filter: the adjoint is the same conv
    # dw[:, K−1−d] = Σ dy[t]·(x[t−d] + x[t+d]) over batch, frames and tokens, in float32. Every tap reads the same
    # zero-padded x over the same [B, T, S, C] domain, which lets Inductor fuse the K sums under torch.compile.
    dyf = dy.float()
    xp = F.pad(x.float(), (0, 0, 0, 0, K - 1, K - 1))
    cols = []
    for d in range(K - 1, -1, -1):  # column j = K−1−d
        taps = xp[:, K - 1 : K - 1 + T] if d == 0 else xp[:, K - 1 - d : K - 1 - d + T] + xp[:, K - 1 + d : K - 1 + d + T]
        cols.append((dyf * taps).sum((0, 1, 2)))
    return dx, torch.stack(cols, dim=1).to(weight.dtype)


_short_conv_op.register_autograd(_backward, setup_context=_setup_context)


def bidirectional_short_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [B, T, S, C] (any strides), weight [C, K] → [B, T, S, C] contiguous in x's dtype; see `naive.py`.

    Examples:
        >>> x = torch.zeros(1, 3, 2, 4); x[0, 1] = 1.0
        >>> bidirectional_short_conv(x, torch.tensor([[0.5, 1.0]] * 4))[0, :, 0, 0]
        tensor([0.5000, 1.0000, 0.5000])
    """
    if x.dim() != 4 or weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"bidirectional_short_conv: x must be [B, T, S, C] and weight [C, K] with the same C; got "
                         f"x {list(x.shape)}, weight {list(weight.shape)}")
    return _short_conv_op(x, weight)
