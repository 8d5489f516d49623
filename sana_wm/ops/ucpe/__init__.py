"""The camera branch's per-token prologue — optional RMSNorm → ReLU → scale, UCPE, the post-UCPE RMS clamp (optional)
and the key's squared norm ratio — as one differentiable op, and the plain `ucpe` transform the output side uses.

`ucpe_clamp(x, mat, cos, sin, num_heads, weight, relu, scale, norm_eps, downscale)` is a registered op with one
Triton pass forward and one backward on CUDA (`triton_ucpe.py`); elsewhere, and with the kernels off, it is the PyTorch composition
in `naive.py`, which is the reference, with its adjoint written out (the op's backward off CUDA). Why a hand kernel: Inductor's kernels for this chain wrote float32 UCPE intermediates and took several times its
memory floor, and in training the chain ran again in the backward (bench/RESULTS.md, "Kernel design log"). As a registered op it is also one node that selective checkpointing keeps
(`sana_wm.parallel`). `SANA_WM_FUSED_UCPE=0` runs the composition on CUDA too.
"""

from __future__ import annotations

import torch

from sana_wm.ops import switch

from .naive import CLAMP_EPS, clamp_to_reference_rms, naive_ucpe_clamp, naive_ucpe_clamp_backward, ucpe


def _import_kernels():  # Triton is optional: CPU machines and CI run the composition
    from .triton_ucpe import ucpe_clamp_backward, ucpe_clamp_forward

    return ucpe_clamp_backward, ucpe_clamp_forward


__all__ = ["clamp_to_reference_rms", "naive_ucpe_clamp", "naive_ucpe_clamp_backward", "ucpe",
           "ucpe_clamp"]

# SANA_WM_FUSED_UCPE=0 (`sana_wm.ops.switch`) runs the PyTorch path on CUDA too (A/B timing, and a safety
# switch).
_SWITCH = switch.get("SANA_WM_FUSED_UCPE")
ucpe_clamp_backward, ucpe_clamp_forward = switch.load_kernels(_import_kernels, _SWITCH) or (None, None)
_use_triton = _SWITCH.use


def _prep(x, mat, cos, sin, weight):
    """The layouts the kernels read: channel stride 1, contiguous matrices and tables, the weight in x's dtype."""
    return (x if x.stride(-1) == 1 else x.contiguous(), mat.contiguous(), cos.float().contiguous(),
            sin.float().contiguous(), None if weight is None else weight.to(x.dtype).contiguous())


@torch.library.custom_op("sana_wm::ucpe_clamp", mutates_args=())
def _ucpe_clamp_op(x: torch.Tensor, mat: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   weight: torch.Tensor | None, relu: bool, scale: float, norm_eps: float,
                   num_heads: int, downscale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_triton(x):
        x, mat, cos, sin, weight = _prep(x, mat, cos, sin, weight)
        return ucpe_clamp_forward(x, mat, cos, sin, weight, relu, scale, norm_eps, CLAMP_EPS, num_heads, downscale)
    xu, ratio = naive_ucpe_clamp(x, mat, cos, sin, weight, relu, scale, norm_eps, num_heads, downscale)
    return xu.contiguous(), ratio.contiguous()


def _ratio_dtype(x):
    return torch.promote_types(x.dtype, torch.float32)


@_ucpe_clamp_op.register_fake
def _(x, mat, cos, sin, weight, relu, scale, norm_eps, num_heads, downscale=True):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            torch.empty((*x.shape[:-1], num_heads), dtype=_ratio_dtype(x), device=x.device))


@torch.library.custom_op("sana_wm::ucpe_clamp_backward", mutates_args=())
def _ucpe_clamp_backward_op(x: torch.Tensor, mat: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                            weight: torch.Tensor | None, relu: bool, scale: float, norm_eps: float, num_heads: int,
                            g_xu: torch.Tensor, g_ratio: torch.Tensor,
                            downscale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx in x's dtype, dweight in float32/float64; empty when there is no norm) — its own op so that compiled
    graphs see one opaque node (a bare Triton launch in a backward cannot run on AOTAutograd's fake tensors)."""
    if _use_triton(x):
        x, mat, cos, sin, w = _prep(x, mat, cos, sin, weight)
        dx, dw = ucpe_clamp_backward(x, mat, cos, sin, w, relu, scale, norm_eps, CLAMP_EPS, num_heads,
                                     g_xu.to(x.dtype), g_ratio, downscale)
    else:
        dx, dw = naive_ucpe_clamp_backward(x, mat, cos, sin, weight, relu, scale, norm_eps, num_heads, g_xu, g_ratio,
                                           downscale)
        dx = dx.contiguous()
    return dx, (dw if dw is not None else x.new_empty(0, dtype=_ratio_dtype(x)))


@_ucpe_clamp_backward_op.register_fake
def _(x, mat, cos, sin, weight, relu, scale, norm_eps, num_heads, g_xu, g_ratio, downscale=True):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            torch.empty(0 if weight is None else weight.shape[0], dtype=_ratio_dtype(x), device=x.device))


def _setup_context(ctx, inputs, output):
    x, mat, cos, sin, weight, relu, scale, norm_eps, num_heads, downscale = inputs
    ctx.save_for_backward(x, mat, cos, sin, weight)
    ctx.args = relu, scale, norm_eps, num_heads, downscale


def _backward(ctx, g_xu, g_ratio):
    x, mat, cos, sin, weight = ctx.saved_tensors
    relu, scale, norm_eps, num_heads, downscale = ctx.args
    g_xu = torch.zeros_like(x) if g_xu is None else g_xu
    g_ratio = x.new_zeros((*x.shape[:-1], num_heads), dtype=_ratio_dtype(x)) if g_ratio is None else g_ratio
    dx, dw = _ucpe_clamp_backward_op(x, mat, cos, sin, weight, relu, scale, norm_eps, num_heads, g_xu, g_ratio,
                                     downscale)
    return dx, None, None, None, (None if weight is None else dw.to(weight.dtype)), None, None, None, None, None


_ucpe_clamp_op.register_autograd(_backward, setup_context=_setup_context)


def ucpe_clamp(x: torch.Tensor, mat: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
               weight: torch.Tensor | None = None, relu: bool = False, scale: float = 1.0,
               norm_eps: float = 1e-5, downscale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, N, C = Hd·D] (channel stride 1), mat [B, N, 4, 4] (Pᵀ for queries, P⁻¹ for keys and values), cos/sin
    [N, D/4] (the camera RoPE table), optional RMSNorm weight [C] → (xu [B, N, C] contiguous in x's dtype, ratio
    [B, N, Hd] float32); see `naive.py`. `downscale` turns the post-UCPE RMS clamp on (a block of a model whose
    `camera_rms_downscale` covers it) or off. No gradient flows to mat or the table (camera inputs are data).

    Examples:
        >>> x = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 1.0]]])  # one head, D = 8
        >>> mat = torch.eye(4).flip(0)[None, None]  # reverse the geometry group
        >>> xu, ratio = ucpe_clamp(x, mat, torch.zeros(1, 2), torch.ones(1, 2), num_heads=1)
        >>> xu, ratio  # the group reversed, both pairs turned by 90°; norms unchanged
        (tensor([[[ 4.,  3.,  2.,  1.,  0.,  1., -1.,  0.]]]), tensor([[[1.]]]))
    """
    B, N, C = x.shape if x.dim() == 3 else (0, 0, 0)
    D = C // num_heads if num_heads > 0 else 0
    if x.dim() != 3 or num_heads <= 0 or C % num_heads or D % 8 or mat.shape != (B, N, 4, 4) \
            or cos.shape != (N, D // 4) or sin.shape != cos.shape or (weight is not None and weight.shape != (C,)):
        raise ValueError(f"ucpe_clamp: x must be [B, N, C] with C = num_heads·D and D a multiple of 8, mat [B, N, 4, 4], "
                         f"cos/sin [N, D/4], weight [C] or None; got x {list(x.shape)}, num_heads {num_heads}, mat "
                         f"{list(mat.shape)}, cos {list(cos.shape)}, sin {list(sin.shape)}, weight "
                         f"{None if weight is None else list(weight.shape)}")
    if _use_triton(x):
        return _ucpe_clamp_op(x, mat, cos, sin, weight, bool(relu), float(scale), float(norm_eps), int(num_heads),
                              bool(downscale))
    # Elsewhere the composition itself, so that autograd and torch.compile see through it (inside the opaque op it
    # would run eagerly: 1.58 s instead of 1.02 s per 161-frame training step with the kernels switched off).
    return naive_ucpe_clamp(x, mat, cos, sin, weight, relu, scale, norm_eps, num_heads, downscale)
