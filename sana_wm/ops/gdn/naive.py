"""Float64 reference of SANA-WM's frame-wise bidirectional Gated DeltaNet scans — the spec, not a fast path.

Written straight from docs/design/architecture.md §5.2 (main branch, steps 7–9) and §6.1 step 7 (camera single
path), one head and one frame at a time, with the *flip-and-shift* formulation of the backward pass that NVIDIA's
code uses. The fast implementation in `torch_scan.py` uses the explicit original-time recurrence instead,
so agreement between the two checks both readings of the maths.

Layout of every tensor argument (D = head dim, S = tokens per frame):
    q, k, q_rot, k_rot, v : [B, T, S, H, D]
    beta                  : [B, T, S, H]    per-token write strength in (0, 1)
    g                     : [B, T, H]       per-frame decay in (0, 1]
"""

from __future__ import annotations

import torch


def _forward_scan(k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """Inclusive delta-rule scan for one (batch, head).

    k: [T, S, Dk], v: [T, S, Dv], beta: [T, S], g: [T]. Returns T states of shape [Dv, Dk]:
    S_t = g_t S_{t-1} (I - K_t B_t K_tᵀ) + V_t B_t K_tᵀ with K_t, V_t the D×S matrices of frame t.
    """
    T, _, dk = k.shape
    dv = v.shape[-1]
    state = torch.zeros(dv, dk, dtype=k.dtype, device=k.device)
    eye = torch.eye(dk, dtype=k.dtype, device=k.device)
    states = []
    for t in range(T):
        K = k[t].T  # [Dk, S]
        V = v[t].T  # [Dv, S]
        B = torch.diag(beta[t])  # [S, S]
        state = g[t] * state @ (eye - K @ B @ K.T) + V @ B @ K.T
        states.append(state)
    return states


def _flip_and_shift(x: torch.Tensor, pad_value: float) -> torch.Tensor:
    """Reverse along time, drop the (new) last element, pad the front with `pad_value` (time is dim 0)."""
    flipped = x.flip(0)
    pad = torch.full_like(flipped[:1], pad_value)
    return torch.cat([pad, flipped[:-1]], dim=0)


def _bidirectional_states(k, v, beta, g) -> list[torch.Tensor]:
    """Forward (inclusive) + backward (exclusive) states for one (batch, head), summed per frame."""
    fwd = _forward_scan(k, v, beta, g)
    # Backward pass: keys, values and β flip-and-shifted with 0, the decay with 1; then flip back.
    bwd_rev = _forward_scan(
        _flip_and_shift(k, 0.0), _flip_and_shift(v, 0.0), _flip_and_shift(beta, 0.0), _flip_and_shift(g, 1.0)
    )
    bwd = bwd_rev[::-1]
    return [f + b for f, b in zip(fwd, bwd, strict=True)]


def naive_bidirectional_gdn(
    q: torch.Tensor,
    k: torch.Tensor,
    q_rot: torch.Tensor,
    k_rot: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    g: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Main-branch frame-wise bidirectional GDN with the normaliser (docs/design/architecture.md §5.2).

    num = (S_fwd + S_bwd) Q̃ on rotated keys/queries; den = (z_fwd + z_bwd)ᵀ Q on unrotated ones, where z is the
    delta rule with target 1; out = num / (den + eps). Returns [B, T, S, H, D] in float64.
    """
    q, k, q_rot, k_rot, v, beta, g = (x.double() for x in (q, k, q_rot, k_rot, v, beta, g))
    B, T, S, H, D = q.shape
    out = torch.zeros(B, T, S, H, v.shape[-1], dtype=torch.float64, device=q.device)
    ones = torch.ones(T, S, 1, dtype=torch.float64, device=q.device)
    for b in range(B):
        for h in range(H):
            num_states = _bidirectional_states(k_rot[b, :, :, h], v[b, :, :, h], beta[b, :, :, h], g[b, :, h])
            den_states = _bidirectional_states(k[b, :, :, h], ones, beta[b, :, :, h], g[b, :, h])
            for t in range(T):
                num = num_states[t] @ q_rot[b, t, :, h].T  # [Dv, S]
                den = den_states[t] @ q[b, t, :, h].T  # [1, S]
                out[b, t, :, h] = (num / (den + eps)).T
    return out


def naive_bidirectional_delta(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """Camera-branch single-path rule (docs/design/architecture.md §6.1): o_t = (S_fwd,t + S_bwd,t) Q_t, no normaliser.

    Returns [B, T, S, H, Dv] in float64.
    """
    q, k, v, beta, g = (x.double() for x in (q, k, v, beta, g))
    B, T, S, H, _ = q.shape
    out = torch.zeros(B, T, S, H, v.shape[-1], dtype=torch.float64, device=q.device)
    for b in range(B):
        for h in range(H):
            states = _bidirectional_states(k[b, :, :, h], v[b, :, :, h], beta[b, :, :, h], g[b, :, h])
            for t in range(T):
                out[b, t, :, h] = (states[t] @ q[b, t, :, h].T).T
    return out
