"""Fast pure-PyTorch frame-wise bidirectional GDN scans: the CPU path and the GPU fallback.

Because SANA-WM writes a whole frame (S tokens) into the D×D state in one step, each frame's update is an affine map
of the state, S_t = S_{t-1} W_t + U_t with W_t = g_t (I - A_t), A_t = K_tᵀ B_t K_t and U_t = V_tᵀ B_t K_t. All A_t and
U_t come from one batched GEMM over the S tokens; only the T-step recurrence over D×D states is sequential, and the
outputs come from one more batched GEMM against the per-frame states. The backward (exclusive) direction is written
directly in original time: S^b_t = S^b_{t+1} W_{t+1} + U_{t+1}, S^b_{T-1} = 0 (REFERENCE §1.5.2 step 9).

All maths runs in float32 whatever the input dtype (the released model's `fp32_attention`); outputs are float32.
The T-step recurrence is `scan.state_scan` (exact custom backward; fused Triton kernel on CUDA); the batched GEMMs
around it use autograd. On CUDA, when no gradient is needed, the transitions and the read-out run as fused Triton
kernels straight from token layout (`triton_fused.py`, registered as opaque custom ops for torch.compile).
See `naive.py` for the reference.

Layout: q, k, q_rot, k_rot, v [B, T, S, H, D]; beta [B, T, S, H]; g [B, T, H].
"""

from __future__ import annotations

import os

import torch

from .scan import state_scan

try:  # the fused forward kernels need Triton (CUDA machines); CPU machines and CI use the composite path
    from . import triton_fused
except Exception:  # noqa: BLE001 - any import problem (no triton, no driver) means "not available"
    triton_fused = None

# SANA_WM_FUSED_GDN=0 turns the fused forward off process-wide (a safety switch, and for A/B timing).
_FUSED = {"enabled": os.environ.get("SANA_WM_FUSED_GDN", "1") != "0"}


def set_fused_forward(enabled: bool) -> None:
    """Turn the fused Triton forward (used for CUDA inputs when no gradient is needed) on or off (benchmarks)."""
    _FUSED["enabled"] = bool(enabled)


def _use_fused(*xs: torch.Tensor) -> bool:
    """Fused kernels: Triton present, CUDA inputs, head dim ≤ 128, and no gradient to build (they are forward-only)."""
    if triton_fused is None or not _FUSED["enabled"] or not xs[0].is_cuda or xs[0].shape[-1] > 128:
        return False
    if any(x.dtype not in (torch.bfloat16, torch.float16, torch.float32) for x in xs):
        return False  # float64 (reference checks) keeps float64 maths on the composite path
    return not (torch.is_grad_enabled() and any(x.requires_grad for x in xs))


def _check(name: str, x: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    if x.dim() != len(shape) or any(e is not None and e != s for e, s in zip(shape, x.shape, strict=True)):
        want = "[" + ", ".join("?" if e is None else str(e) for e in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(x.shape)}")


def _validate(q, k, v, beta, g) -> None:
    _check("q", q, (None,) * 5)
    B, T, S, H, D = q.shape
    _check("k", k, (B, T, S, H, D))
    _check("v", v, (B, T, S, H, None))
    _check("beta", beta, (B, T, S, H))
    _check("g", g, (B, T, H))


def _f32(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 reference inputs stay float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _transitions(k: torch.Tensor, v: torch.Tensor | None, beta: torch.Tensor):
    """Per-frame A_t = Σ_s β k kᵀ [B,H,T,D,D] and U_t = Σ_s β v kᵀ [B,H,T,Dv,D] (U = Σ_s β kᵀ when v is None)."""
    kh = _f32(k).permute(0, 3, 1, 2, 4)  # [B, H, T, S, D]
    kb = kh * _f32(beta).permute(0, 3, 1, 2).unsqueeze(-1)  # β-weighted keys
    A = kh.transpose(-1, -2) @ kb  # [B, H, T, D, D]
    if v is None:  # denominator stream: value ≡ 1, so U_t = (Σ_s β_s k_s)ᵀ as a 1×D row
        U = kb.sum(dim=-2, keepdim=True)  # [B, H, T, 1, D]
    else:
        U = _f32(v).permute(0, 3, 1, 4, 2) @ kb  # [B, H, T, Dv, D]
    return A, U


def _bidirectional_states(A: torch.Tensor, U: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Sum of inclusive-forward and exclusive-backward states per frame: [B, H, T, Dv, D]."""
    gh = _f32(g).permute(0, 2, 1)  # [B, H, T]
    fwd = state_scan(A, U, gh)
    # Exclusive backward: S^b_t = g_{t+1} S^b_{t+1}(I − A_{t+1}) + U_{t+1}, i.e. the reverse scan of U shifted by one.
    U_next = torch.cat([U[:, :, 1:], torch.zeros_like(U[:, :, :1])], dim=2)
    return fwd + state_scan(A, U_next, gh, reverse=True)


def _read(q: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """o_{t,s} = states_t q_{t,s}: [B,T,S,H,D] × [B,H,T,Dv,D] → [B, H, T, S, Dv]."""
    return _f32(q).permute(0, 3, 1, 2, 4) @ states.transpose(-1, -2)


def _fused_states(A: torch.Tensor, U: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """`_bidirectional_states` for the fused kernels' [B·H, T, ·, D] layout (g [B, T, H]); same layout out."""
    B, H = g.shape[0], g.shape[2]
    return _bidirectional_states(A.unflatten(0, (B, H)), U.unflatten(0, (B, H)), g).flatten(0, 1)


@torch.library.custom_op("sana_wm::gdn_fused_forward", mutates_args=())
def _gdn_fused_forward(
    q: torch.Tensor, k: torch.Tensor, q_rot: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
    g: torch.Tensor, eps: float, out_dtype: torch.dtype,
) -> torch.Tensor:
    # An opaque custom op so torch.compile keeps whole blocks in one graph around the Triton launches.
    A_rot, U, _ = triton_fused.transitions(k_rot, v, beta)
    A, _, z = triton_fused.transitions(k, None, beta, want_z=True)
    return triton_fused.readout(q_rot, _fused_states(A_rot, U, g), q, _fused_states(A, z, g), eps, out_dtype)


@_gdn_fused_forward.register_fake
def _(q, k, q_rot, k_rot, v, beta, g, eps, out_dtype):
    return q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=out_dtype)


@torch.library.custom_op("sana_wm::delta_fused_forward", mutates_args=())
def _delta_fused_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    A, U, _ = triton_fused.transitions(k, v, beta)
    return triton_fused.readout(q, _fused_states(A, U, g), out_dtype=out_dtype)


@_delta_fused_forward.register_fake
def _(q, k, v, beta, g, out_dtype):
    return q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=out_dtype)


def bidirectional_gdn(q, k, q_rot, k_rot, v, beta, g, eps: float = 1e-8, out_dtype: torch.dtype | None = None):
    """Main-branch frame-wise bidirectional GDN with normaliser. Returns [B, T, S, H, Dv] in `out_dtype` (default
    float32; float64 for float64 inputs). The maths is float32 either way; `out_dtype` only saves the caller a cast.

    num = (S_fwd + S_bwd) q̃ (rotated keys/queries), den = (z_fwd + z_bwd)ᵀ q (unrotated), out = num / (den + eps).

    Examples:
        >>> B, T, S, H, D = 1, 3, 5, 2, 8
        >>> q = k = q_rot = k_rot = v = torch.rand(B, T, S, H, D)
        >>> out = bidirectional_gdn(q, k, q_rot, k_rot, v, torch.rand(B, T, S, H), torch.rand(B, T, H))
        >>> out.shape
        torch.Size([1, 3, 5, 2, 8])
    """
    _validate(q_rot, k_rot, v, beta, g)
    _check("q", q, tuple(q_rot.shape))
    _check("k", k, tuple(k_rot.shape))
    if _use_fused(q, k, q_rot, k_rot, v, beta, g):
        return _gdn_fused_forward(q, k, q_rot, k_rot, v, beta, g, float(eps), out_dtype or torch.float32)
    A_rot, U = _transitions(k_rot, v, beta)
    num = _read(q_rot, _bidirectional_states(A_rot, U, g))  # [B, H, T, S, Dv]
    A, b = _transitions(k, None, beta)
    den = _read(q, _bidirectional_states(A, b, g))  # [B, H, T, S, 1]
    out = (num / (den + eps)).permute(0, 2, 3, 1, 4)
    return out if out_dtype is None else out.to(out_dtype)


def bidirectional_delta(q, k, v, beta, g, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Camera-branch single-path bidirectional delta rule (numerator only). Returns [B, T, S, H, Dv] in `out_dtype`
    (default float32; float64 for float64 inputs)."""
    _validate(q, k, v, beta, g)
    if _use_fused(q, k, v, beta, g):
        return _delta_fused_forward(q, k, v, beta, g, out_dtype or torch.float32)
    A, U = _transitions(k, v, beta)
    out = _read(q, _bidirectional_states(A, U, g)).permute(0, 2, 3, 1, 4)
    return out if out_dtype is None else out.to(out_dtype)
