"""Rectified-flow (flow-matching) maths as pure functions.

Convention (docs/design/diffusion.md §1): a noisy latent at noise level σ ∈ [0, 1] is

    x_σ = (1 − σ)·x₀ + σ·ε,      ε ~ N(0, I),

so σ = 0 is clean data and σ = 1 is pure noise. The network predicts the velocity
v = dx_σ/dσ = ε − x₀, and its timestep input is 1000·σ. Training uses a shifted σ,
σ′ = s·σ / (1 + (s − 1)·σ), which moves mass towards high noise for s > 1.

Latent videos are laid out (B, C, T, H, W): batch, channels, latent frames, height, width.
Noise levels may be per sample, shape (B,), or per latent frame, shape (B, T).
"""

from __future__ import annotations

import torch

__all__ = ["shift_sigma", "interpolate", "velocity_target", "flow_loss", "broadcast_sigma"]


def shift_sigma(sigma: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """Apply the flow shift σ′ = s·σ / (1 + (s − 1)·σ).

    Maps [0, 1] onto itself monotonically; s > 1 pushes levels towards 1 (more noise).

    Args:
        sigma: noise level(s) in [0, 1], a float or a tensor of any shape.
        shift: s > 0. s = 1 is the identity.

    Returns:
        Shifted level(s), same type/shape as ``sigma``.
    """
    if not shift > 0:
        raise ValueError(f"shift_sigma: `shift` must be > 0, got {shift!r}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def broadcast_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """Reshape a noise level so that it broadcasts over a latent video ``x`` (B, C, T, H, W).

    Accepted shapes of ``sigma``: a Python float or 0-d tensor (one level for everything),
    (B,) per sample, (B, T) per frame, or an already broadcastable (B, 1, T, 1, 1) / (B, 1, 1, 1, 1).

    Returns:
        A float, or a tensor of shape (B, 1, 1, 1, 1) or (B, 1, T, 1, 1).
    """
    if not isinstance(sigma, torch.Tensor) or sigma.ndim == 0:
        return sigma
    if x.ndim != 5:
        raise ValueError(f"expected a latent video of shape (B, C, T, H, W), got shape {tuple(x.shape)}")
    B, _, T = x.shape[:3]
    if sigma.ndim == 1 and sigma.shape[0] == B:
        return sigma.view(B, 1, 1, 1, 1)
    if sigma.ndim == 2 and sigma.shape == (B, T):
        return sigma.view(B, 1, T, 1, 1)
    if (
        sigma.ndim == 5
        and sigma.shape[0] == B
        and sigma.shape[1] == 1
        and sigma.shape[3:] == (1, 1)
        and (sigma.shape[2] in (1, T))
    ):
        return sigma
    raise ValueError(
        f"sigma of shape {tuple(sigma.shape)} does not match latent video {tuple(x.shape)}: expected a scalar, "
        f"({B},) per sample, ({B}, {T}) per frame, or ({B}, 1, {T}|1, 1, 1)"
    )


def interpolate(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Noisy latent x_σ = (1 − σ)·x₀ + σ·ε.

    Args:
        x0: clean latent, (B, C, T, H, W).
        noise: ε, same shape as ``x0``.
        sigma: scalar, (B,) per sample or (B, T) per frame (see :func:`broadcast_sigma`).

    Returns:
        x_σ, (B, C, T, H, W). The dtype follows torch type promotion of the inputs, so float32 σ
        with bf16 latents gives a float32 result (σ is not rounded to bf16).
    """
    if x0.shape != noise.shape:
        raise ValueError(
            f"interpolate: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape"
        )
    s = broadcast_sigma(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Velocity regression target v = ε − x₀ = d x_σ / dσ, same shape as the inputs."""
    if x0.shape != noise.shape:
        raise ValueError(
            f"velocity_target: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape"
        )
    return noise - x0


def flow_loss(
    pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error between predicted and target velocity, optionally masked per frame.

    Args:
        pred: predicted velocity, (B, C, T, H, W).
        target: target velocity, same shape.
        loss_mask: optional per-frame weights, (B, T) or (B, 1, T, 1, 1); 1 = counted, 0 = excluded
            (e.g. the clean conditioning frame 0 in image-to-video training).

    Returns:
        0-d float32 tensor.

    Normalisation: without a mask this is the plain mean over all elements (NVIDIA's ``mean_flat``
    followed by the batch mean, identical when every sample has the same size). With a mask it is
    Σ mask·(pred − target)² / Σ mask, both sums over the whole batch and all channels/pixels, i.e.
    the mean over the *unmasked* elements. NVIDIA's published loss code predates the mask, so whether it
    divides by all elements or by unmasked ones is not known; we divide by unmasked ones so that the loss
    scale does not depend on how many frames are conditioning (a 2-frame clip with one clean frame would
    otherwise get half the loss). If every element is masked the loss is 0 (not NaN), with a gradient of 0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"flow_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must match")
    # Squared error in fp32: bf16 squares of small residuals lose most of their mantissa.
    err = (pred.float() - target.float()).square()
    if loss_mask is None:
        return err.mean()
    w = broadcast_sigma(loss_mask.to(err.dtype), err)  # (B, 1, T, 1, 1)
    if not isinstance(w, torch.Tensor) or w.ndim != 5:
        raise ValueError(
            f"flow_loss: loss_mask must have shape (B, T) or (B, 1, T, 1, 1), got {tuple(loss_mask.shape)}"
        )
    w = w.expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(torch.finfo(err.dtype).tiny)
