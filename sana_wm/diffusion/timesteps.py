"""Noise-level (σ) schedules: training-time sampling and the inference grid.

Training (docs/design/diffusion.md §2): a discrete table σ_i = i/1000, i = 0..999, shifted as a whole with
s = 9.95; the index is drawn as i = ⌊1000·u⌋ with u = sigmoid(N(mean, std)) ("logit-normal").
The model sees timestep 1000·σ′ (a float; the model truncates it).

Inference (docs/design/diffusion.md §4): the σ grid of diffusers'
``FlowMatchEulerDiscreteScheduler(shift=s).set_timesteps(n)``, reproduced here without diffusers,
including its quirk that the low end is shifted twice (σ_min = shift(shift(0.001)) after the
linspace) and the appended terminal 0.
"""

from __future__ import annotations

import math

import torch

from .flow import shift_sigma

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "sample_training_sigmas",
    "apply_image_condition",
    "inference_sigmas",
    "sigma_to_timestep",
]

#: Size of the discrete training table and scale of the model's timestep input (t = 1000·σ).
NUM_TRAIN_TIMESTEPS = 1000

_SCHEMES = ("logit_normal", "uniform")


def sigma_to_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """Model timestep for a noise level: t = 1000·σ (float; the DiT truncates it to an integer)."""
    return sigma * NUM_TRAIN_TIMESTEPS


def sample_training_sigmas(
    batch_size: int,
    num_frames: int,
    *,
    shift: float = 9.95,
    scheme: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    per_frame: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw training noise levels σ′ (the released recipe: s = 9.95, logit-normal).

    u ~ sigmoid(N(mean, std)) for ``scheme="logit_normal"`` (or U[0, 1) for ``"uniform"``);
    i = clamp(⌊1000·u⌋, 0, 999); σ = i/1000; σ′ = shift(σ).

    Args:
        batch_size: B ≥ 1.
        num_frames: number of latent frames T ≥ 1.
        shift: flow shift s (9.95 in the released stage-1 recipe).
        scheme: ``"logit_normal"`` or ``"uniform"``.
        mean, std: parameters of the normal before the sigmoid (logit-normal only).
        per_frame: False → one σ per sample repeated over all frames (the "ti2v" task);
            True → an independent σ per frame (diffusion-forcing style).
        generator: optional RNG; the draw happens on the generator's device (CPU if None).
        device: device of the returned tensor.

    Returns:
        σ′ of shape (B, T), float32, values in [0, 1). Multiply by 1000 for the model timestep.
    """
    if batch_size < 1 or num_frames < 1:
        raise ValueError(
            f"sample_training_sigmas: batch_size and num_frames must be >= 1, got {batch_size}, {num_frames}"
        )
    if scheme not in _SCHEMES:
        raise ValueError(f"sample_training_sigmas: scheme must be one of {_SCHEMES}, got {scheme!r}")
    if scheme == "logit_normal" and not std > 0:
        raise ValueError(f"sample_training_sigmas: std must be > 0, got {std!r}")
    draw_device = generator.device if generator is not None else torch.device("cpu")
    n = num_frames if per_frame else 1
    if scheme == "logit_normal":
        u = torch.sigmoid(
            torch.randn(batch_size, n, generator=generator, device=draw_device, dtype=torch.float64) * std
            + mean
        )
    else:
        u = torch.rand(batch_size, n, generator=generator, device=draw_device, dtype=torch.float64)
    # ⌊1000·u⌋; u can round to exactly 1.0 after the sigmoid, hence the clamp to the table's last index.
    idx = torch.floor(u * NUM_TRAIN_TIMESTEPS).clamp_(0, NUM_TRAIN_TIMESTEPS - 1)
    sigma = shift_sigma(idx / NUM_TRAIN_TIMESTEPS, shift)
    sigma = sigma.to(device=device if device is not None else draw_device, dtype=torch.float32)
    return sigma.expand(batch_size, num_frames).contiguous()


def apply_image_condition(
    sigmas: torch.Tensor, prob: float = 0.9, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-to-video training condition (NVIDIA's ``ltx_image_condition_prob``, 0.9 released).

    With probability ``prob`` per sample, latent frame 0 is kept clean (σ = 0, so timestep 0) and
    excluded from the loss; otherwise the sample is trained as plain video generation.

    Args:
        sigmas: (B, T) noise levels, e.g. from :func:`sample_training_sigmas`. Not modified.
        prob: probability in [0, 1] that a sample is image-conditioned.
        generator: optional RNG (Bernoulli draw on its device, CPU if None).

    Returns:
        (sigmas, loss_mask): a new (B, T) σ tensor with frame 0 zeroed on conditioned samples, and a
        float (B, T) mask of the same dtype with 0 on those frames and 1 elsewhere.
    """
    if sigmas.ndim != 2:
        raise ValueError(f"apply_image_condition: sigmas must have shape (B, T), got {tuple(sigmas.shape)}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"apply_image_condition: prob must be in [0, 1], got {prob!r}")
    draw_device = generator.device if generator is not None else torch.device("cpu")
    cond = (torch.rand(sigmas.shape[0], generator=generator, device=draw_device) < prob).to(sigmas.device)
    sigmas = sigmas.clone()
    sigmas[:, 0] = torch.where(cond, torch.zeros_like(sigmas[:, 0]), sigmas[:, 0])
    loss_mask = torch.ones_like(sigmas)
    loss_mask[:, 0] = (~cond).to(sigmas.dtype)
    return sigmas, loss_mask


def inference_sigmas(
    num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> torch.Tensor:
    """The σ grid of diffusers ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps)``.

    That scheduler (with its defaults: no dynamic shifting, no Karras/exponential/beta spacing):
      1. builds a float32 training table σ_j = shift(j/N), j = 1..N (N = ``num_train_timesteps``), whose
         ends are σ_max = shift(1) = 1 and σ_min = shift(1/N);
      2. takes ``num_steps`` points linearly spaced from N·σ_max to N·σ_min (float64, numpy linspace),
         divides by N and applies the shift *again* — so the low end is shift(shift(1/N)), 0.0877 for
         s = 9.8 and 60 steps instead of ≈ 0.0097;
      3. appends a terminal 0.
    The end points are computed in float32 exactly like the table, the rest in float64 with
    numpy's linspace formula, so ``result.float()`` equals the scheduler's ``sigmas`` bit for bit.

    Args:
        num_steps: number of sampling steps n ≥ 1.
        shift: flow shift s > 0 (9.8 for the released stage-1 model, 1.0 for the refiner).
        num_train_timesteps: N, 1000 for every model here.

    Returns:
        float64 tensor of shape (n + 1,), strictly decreasing from 1.0 to the trailing 0.0.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"inference_sigmas: num_steps must be an integer >= 1, got {num_steps!r}")
    if not shift > 0 or not math.isfinite(shift):
        raise ValueError(f"inference_sigmas: shift must be a finite number > 0, got {shift!r}")
    # Step 1 in float32, in the scheduler's operation order (the table is float32 there).
    ends = torch.tensor([float(num_train_timesteps), 1.0], dtype=torch.float32) / num_train_timesteps
    ends = shift * ends / (1 + (shift - 1) * ends)
    t_max = ends[0].item() * num_train_timesteps
    t_min = ends[1].item() * num_train_timesteps
    # Step 2: numpy.linspace(t_max, t_min, n) = start + i·(delta/(n-1)), last point set to stop.
    if num_steps == 1:
        t = torch.tensor([t_max], dtype=torch.float64)
    else:
        step = (t_min - t_max) / (num_steps - 1)
        t = torch.arange(num_steps, dtype=torch.float64) * step + t_max
        t[-1] = t_min
    sigmas = t / num_train_timesteps
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return torch.cat([sigmas, sigmas.new_zeros(1)])
