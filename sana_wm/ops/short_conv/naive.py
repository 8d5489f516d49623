"""Reference for the GDN's bidirectional short convolution along frames (plain PyTorch, float64-capable)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_bidirectional_short_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [B, T, S, C], weight [C, K] → [B, T, S, C] in x's dtype:

        out[t] = w[:, K−1]·x[t] + Σ_{d=1}^{K−1} w[:, K−1−d]·(x[t−d] + x[t+d]),   x = 0 outside 0 ≤ t < T

    i.e. the causal K-tap depthwise conv run forwards and on reversed time, minus the shared centre tap: a symmetric
    (2K−1)-tap filter with tied weights (docs/design/architecture.md §5.2 step 2). Shifted adds over the frame axis
    in x's dtype.
    """
    w = weight.to(x.dtype)
    K, T = w.shape[1], x.shape[1]
    out = x * w[:, K - 1]
    for d in range(1, min(K, T)):
        tap = w[:, K - 1 - d]
        out = out + F.pad(x[:, :-d] * tap, (0, 0, 0, 0, d, 0))  # x[t−d] contributes to t
        out = out + F.pad(x[:, d:] * tap, (0, 0, 0, 0, 0, d))  # x[t+d] contributes to t
    return out
