"""Fast pure-PyTorch frame-wise bidirectional GDN scans: the CPU path and the GPU fallback.

Because SANA-WM writes a whole frame (S tokens) into the D×D state in one step, each frame's update is an affine map
of the state, S_t = S_{t-1} W_t + U_t with W_t = g_t (I - A_t), A_t = K_tᵀ B_t K_t and U_t = V_tᵀ B_t K_t. All A_t and
U_t come from one batched GEMM over the S tokens; only the T-step recurrence over D×D states is sequential, and the
outputs come from one more batched GEMM against the per-frame states. The backward (exclusive) direction is written
directly in original time: S^b_t = S^b_{t+1} W_{t+1} + U_{t+1}, S^b_{T-1} = 0 (docs/design/architecture.md §5.2).

All maths runs in float32 whatever the input dtype (the released model's `fp32_attention`); outputs are float32.
The T-step recurrences are `scan.bidirectional_scan` (both directions in one op, exact custom backward; one Triton
launch each way on CUDA); the batched GEMMs around them use autograd. On CUDA the transitions and the read-out run
as fused Triton kernels straight from token layout (`triton_fused.py`), registered as custom ops so torch.compile
keeps whole graphs:
  * no gradient to build (inference, validation): the whole op is one custom op, with both scan directions of the
    numerator and normaliser in one launch (`triton_scan.bidirectional_states`);
  * training: the `gdn_transitions` and `gdn_readout` ops, whose backward also runs in fused kernels (float32
    PyTorch maths as the reference, `SANA_WM_FUSED_GDN_BWD`), with `bidirectional_scan_two` (numerator and normaliser
    in one launch) or `bidirectional_scan` in between.
`SANA_WM_FUSED_GDN=0` keeps every call on the composite path (`sana_wm.ops.switch` lists the switches). See
`naive.py` for the reference.

Layout: q, k, q_rot, k_rot, v [B, T, S, H, D]; beta [B, T, S, H]; g [B, T, H].
"""

from __future__ import annotations

import torch

from sana_wm.ops import switch

from .scan import bidirectional_scan, bidirectional_scan_two


def _import_kernels():
    from . import triton_fused, triton_scan

    return triton_fused, triton_scan


# The fused kernels need Triton (CUDA machines); CPU machines and CI use the composite path.
_FUSED, _FUSED_BWD = switch.get("SANA_WM_FUSED_GDN"), switch.get("SANA_WM_FUSED_GDN_BWD")
triton_fused, triton_scan = switch.load_kernels(_import_kernels, _FUSED, _FUSED_BWD) or (None, None)


def _fused_mode(*xs: torch.Tensor) -> str | None:
    """Which fused path the inputs take: "forward" (no gradient to build: the whole op in fused kernels), "train"
    (fused transitions and read-out, forward and backward, as differentiable ops), or None (composite path: CPU, float64, no Triton,
    head dim > 128, or switched off)."""
    if not _FUSED.use(xs[0]) or xs[0].shape[-1] > 128:
        return None
    if any(x.dtype not in switch.KERNEL_DTYPES for x in xs):
        return None  # float64 (reference checks) keeps float64 maths on the composite path
    return "train" if torch.is_grad_enabled() and any(x.requires_grad for x in xs) else "forward"


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


def _heads_f32(x: torch.Tensor) -> torch.Tensor:
    """[B, T, S, H, D] → float32 [B, H, T, S, D]."""
    return _f32(x).permute(0, 3, 1, 2, 4)


def _transitions(k: torch.Tensor, v: torch.Tensor | None, beta: torch.Tensor):
    """Per-frame A_t = Σ_s β k kᵀ [B,H,T,D,D] and U_t = Σ_s β v kᵀ [B,H,T,Dv,D] (U = Σ_s β kᵀ when v is None)."""
    kh = _heads_f32(k)  # [B, H, T, S, D]
    kb = kh * _f32(beta).permute(0, 3, 1, 2).unsqueeze(-1)  # β-weighted keys
    A = kh.transpose(-1, -2) @ kb  # [B, H, T, D, D]
    if v is None:  # denominator stream: value ≡ 1, so U_t = (Σ_s β_s k_s)ᵀ as a 1×D row
        U = kb.sum(dim=-2, keepdim=True)  # [B, H, T, 1, D]
    else:
        U = _f32(v).permute(0, 3, 1, 4, 2) @ kb  # [B, H, T, Dv, D]
    return A, U


def _bidirectional_states(A: torch.Tensor, U: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Sum of inclusive-forward and exclusive-backward states per frame: [B, H, T, Dv, D].

    Exclusive backward: S^b_t = g_{t+1} S^b_{t+1}(I − A_{t+1}) + U_{t+1}; both scans come from one
    `bidirectional_scan` (one Triton launch on CUDA, its backward one more)."""
    FR = bidirectional_scan(A, U, _f32(g).permute(0, 2, 1))  # [2, B, H, T, Dv, D]
    return FR[0] + FR[1]


def _read(q: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """o_{t,s} = states_t q_{t,s}: [B,T,S,H,D] × [B,H,T,Dv,D] → [B, H, T, S, Dv]."""
    return _heads_f32(q) @ states.transpose(-1, -2)


def _fused_states(problems, g: torch.Tensor):
    """`_bidirectional_states` of one or two (A, U, split) problems in the fused kernels' [B·H, T, ·, D] layout
    (g [B, T, H]): one scan launch for all directions and problems; split states come back as bf16 (hi, mid, lo)."""
    return triton_scan.bidirectional_states(problems, g.permute(0, 2, 1))


@torch.library.custom_op("sana_wm::gdn_fused_forward", mutates_args=())
def _gdn_fused_forward(
    q: torch.Tensor, k: torch.Tensor, q_rot: torch.Tensor, k_rot: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
    g: torch.Tensor, eps: float, out_dtype: torch.dtype,
) -> torch.Tensor:
    # An opaque custom op so torch.compile keeps whole blocks in one graph around the Triton launches.
    A_rot, U, _ = triton_fused.transitions(k_rot, v, beta)
    A, _, z = triton_fused.transitions(k, None, beta, want_z=True)
    num, den = _fused_states([(A_rot, U, triton_fused.wants_split(q_rot, q)), (A, z, False)], g)
    return triton_fused.readout(q_rot, num, q, den, eps, out_dtype)


@_gdn_fused_forward.register_fake
def _(q, k, q_rot, k_rot, v, beta, g, eps, out_dtype):
    return q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=out_dtype)


@torch.library.custom_op("sana_wm::delta_fused_forward", mutates_args=())
def _delta_fused_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    A, U, _ = triton_fused.transitions(k, v, beta)
    (states,) = _fused_states([(A, U, triton_fused.wants_split(q))], g)
    return triton_fused.readout(q, states, out_dtype=out_dtype)


@_delta_fused_forward.register_fake
def _(q, k, v, beta, g, out_dtype):
    return q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=out_dtype)


# -- training: fused kernels forward and backward ----------------------------------------------------------------------
# When a gradient is needed, the transitions and the read-out still run forward in the fused kernels (no re-layout,
# tensor-core exact products), and their backward runs in the fused backward kernels (`triton_fused.
# transitions_backward` / `readout_backward`: split-bf16 tensor-core products to float32 accuracy, token layout in and
# out). With `fused_bwd` False the backward is the composite path's float32 maths written out in PyTorch (the
# reference). The state recurrence in between stays `bidirectional_scan` (its own exact backward). Registered ops,
# so torch.compile keeps full graphs and selective checkpointing can keep their outputs (`sana_wm.parallel`).


@torch.library.custom_op("sana_wm::gdn_transitions", mutates_args=())
def _transitions_op(k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, use_v: bool,
                    fused_bwd: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [B·H, T, D, D], U [B·H, T, Dv, D]) with the values `v` when `use_v`, else (A, z [B·H, T, 1, D])."""
    if use_v:
        A, U, _ = triton_fused.transitions(k, v, beta)
        return A, U
    A, _, z = triton_fused.transitions(k, None, beta, want_z=True)
    return A, z


@_transitions_op.register_fake
def _(k, v, beta, use_v, fused_bwd):
    B, T, S, H, D = k.shape
    dv = v.shape[-1] if use_v else 1
    return k.new_empty((B * H, T, D, D), dtype=torch.float32), k.new_empty((B * H, T, dv, D), dtype=torch.float32)


def _transitions_setup(ctx, inputs, output):
    k, v, beta, use_v, fused_bwd = inputs
    ctx.save_for_backward(k, v, beta)
    ctx.use_v, ctx.fused_bwd = use_v, fused_bwd


# The backward kernels are custom ops of their own: autograd's backward is traced by torch.compile (AOTAutograd), and
# a bare Triton launch cannot run on its fake tensors.
@torch.library.custom_op("sana_wm::gdn_transitions_backward", mutates_args=())
def _transitions_bwd_op(k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, dA: torch.Tensor, dU: torch.Tensor,
                        use_v: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dk, dv, dβ); dv is an empty tensor when `use_v` is False (the normaliser has no values)."""
    dk, dv, dbeta = triton_fused.transitions_backward(k, v if use_v else None, beta, dA, dU)
    return dk, (dv if use_v else k.new_empty(0)), dbeta


@_transitions_bwd_op.register_fake
def _(k, v, beta, dA, dU, use_v):
    like = lambda x: torch.empty(x.shape, dtype=x.dtype, device=x.device)  # noqa: E731 - contiguous, as the kernels
    return like(k), (like(v) if use_v else k.new_empty(0)), like(beta)


@torch.library.custom_op("sana_wm::gdn_readout_backward", mutates_args=())
def _readout_bwd_op(q: torch.Tensor, states: torch.Tensor, do: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_fused.readout_backward(q, states, do)


@_readout_bwd_op.register_fake
def _(q, states, do):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(states.shape, device=q.device)


def _transitions_backward(ctx, dA, dU):
    # A = Khᵀ Kb, U = Vhᵀ Kb (or z = Σ_s Kb) per (b, h, t), Kb = β·Kh: the products' adjoints, in float32.
    k, v, beta = ctx.saved_tensors
    if ctx.fused_bwd:
        dk, dv, dbeta = _transitions_bwd_op(k, v, beta, dA, dU, ctx.use_v)  # the launch makes them contiguous
        return dk, (dv if ctx.use_v else None), dbeta, None, None
    B, T, S, H, D = k.shape
    kh = _heads_f32(k)
    bh = _f32(beta).permute(0, 3, 1, 2).unsqueeze(-1)  # [B, H, T, S, 1]
    kb = kh * bh
    dA = dA.unflatten(0, (B, H))
    dkb = kh @ dA  # ∂/∂Kb of Khᵀ Kb
    dkh = kb @ dA.transpose(-1, -2)  # ∂/∂Kh of Khᵀ Kb
    dv = None
    if ctx.use_v:
        dU = dU.unflatten(0, (B, H))
        vh = _heads_f32(v)
        dkb = dkb + vh @ dU
        dv = (kb @ dU.transpose(-1, -2)).permute(0, 2, 3, 1, 4).to(v.dtype)
    else:
        dkb = dkb + dU.unflatten(0, (B, H))  # z = Σ_s Kb: the same row for every token
    dk = (dkh + dkb * bh).permute(0, 2, 3, 1, 4).to(k.dtype)
    dbeta = (dkb * kh).sum(-1).permute(0, 2, 3, 1).to(beta.dtype)
    return dk, dv, dbeta, None, None


_transitions_op.register_autograd(_transitions_backward, setup_context=_transitions_setup)


@torch.library.custom_op("sana_wm::gdn_readout", mutates_args=())
def _readout_op(q: torch.Tensor, states: torch.Tensor, fused_bwd: bool) -> torch.Tensor:
    """o[b,t,s,h] = states[b·h, t] q[b,t,s,h]: [B, T, S, H, Dv] float32."""
    return triton_fused.readout(q, states)


@_readout_op.register_fake
def _(q, states, fused_bwd):
    return q.new_empty((*q.shape[:-1], states.shape[-2]), dtype=torch.float32)


def _readout_setup(ctx, inputs, output):
    q, states, fused_bwd = inputs
    ctx.save_for_backward(q, states)
    ctx.fused_bwd = fused_bwd


def _readout_backward(ctx, do):
    q, states = ctx.saved_tensors
    if ctx.fused_bwd:
        return (*_readout_bwd_op(q, states, do), None)  # the launch needs only a unit last stride
    B, T, S, H, D = q.shape
    st = states.unflatten(0, (B, H))  # [B, H, T, Dv, D]
    doh = _heads_f32(do)  # [B, H, T, S, Dv]
    dq = (doh @ st).permute(0, 2, 3, 1, 4).to(q.dtype)
    dst = (doh.transpose(-1, -2) @ _heads_f32(q)).flatten(0, 1)  # Σ_s do qᵀ
    return dq, dst, None


_readout_op.register_autograd(_readout_backward, setup_context=_readout_setup)


def _bh_decay(g: torch.Tensor) -> torch.Tensor:
    """g [B, T, H] → float32 [B·H, T], the fused kernels' layout."""
    return _f32(g).permute(0, 2, 1).flatten(0, 1)


def _gdn_train_fused(q, k, q_rot, k_rot, v, beta, g, eps):
    fb = _FUSED_BWD.enabled  # read when traced: torch.compile re-specialises on it
    A_rot, U = _transitions_op(k_rot, v, beta, True, fb)
    A, z = _transitions_op(k, k, beta, False, fb)  # the value slot is unused for the normaliser
    # Numerator and normaliser share the decay: both directions of both in one scan launch (and one for the adjoint).
    FR_num, FR_den = bidirectional_scan_two(A_rot, U, A, z, _bh_decay(g))  # [2, B·H, T, ·, D] each
    num = _readout_op(q_rot, FR_num[0] + FR_num[1], fb)
    den = _readout_op(q, FR_den[0] + FR_den[1], fb)
    return num / (den + eps)


def _delta_train_fused(q, k, v, beta, g):
    fb = _FUSED_BWD.enabled  # read when traced: torch.compile re-specialises on it
    A, U = _transitions_op(k, v, beta, True, fb)
    FR = bidirectional_scan(A, U, _bh_decay(g))
    return _readout_op(q, FR[0] + FR[1], fb)


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
    mode = _fused_mode(q, k, q_rot, k_rot, v, beta, g)
    if mode == "forward":
        return _gdn_fused_forward(q, k, q_rot, k_rot, v, beta, g, float(eps), out_dtype or torch.float32)
    if mode == "train":
        out = _gdn_train_fused(q, k, q_rot, k_rot, v, beta, g, eps)
        return out if out_dtype is None else out.to(out_dtype)
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
    mode = _fused_mode(q, k, v, beta, g)
    if mode == "forward":
        return _delta_fused_forward(q, k, v, beta, g, out_dtype or torch.float32)
    if mode == "train":
        out = _delta_train_fused(q, k, v, beta, g)
        return out if out_dtype is None else out.to(out_dtype)
    A, U = _transitions(k, v, beta)
    out = _read(q, _bidirectional_states(A, U, g)).permute(0, 2, 3, 1, 4)
    return out if out_dtype is None else out.to(out_dtype)
