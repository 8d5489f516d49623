"""Samplers for the flow-matching ODE dx/dσ = v(x, σ), looping over a ``denoise`` callable.

A sampler never sees the network. It calls ``denoise(x, timestep) -> v`` with
    x:        (B, C, T, H, W) current latent, in the dtype of the initial noise;
    timestep: (B, T) float32 per-frame timestep on the 0–1000 scale (1000·σ; the DiT truncates it);
and expects the velocity v ≈ ε − x₀ with the shape of x.

Image conditioning (docs/design/diffusion.md §5): when ``condition_latent`` (B, C, K, H, W) is given,
the first K latent frames (K = 1 for the first image) are overwritten with it before the first
call, get timestep 0 at every call and are never updated, so they come back bit-identical.

Samplers:
- :func:`flow_euler`: the released ``LTXFlowEuler`` (x ← x + (σ_next − σ)·v per frame).
- :func:`dpm_solver_pp`: DPM-Solver++ multistep, order 2, in the data-prediction form
  x̂₀ = x − σ·v (NVIDIA's ``flow_dpm-solver`` option; not in the diffusers port).
- :class:`CFGDenoiser`: classifier-free guidance around a batched model call (docs/design/diffusion.md §6).

Precision: the latent state is kept in the dtype of ``noise`` (the port keeps bf16 latents in a bf16
pipeline and re-rounds after every step); each update is computed in float32 (float64 if the state
is float64). Pass float32 noise for a float32 state.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .timesteps import NUM_TRAIN_TIMESTEPS

__all__ = [
    "Denoiser",
    "flow_euler",
    "dpm_solver_pp",
    "guidance_combine",
    "CFGDenoiser",
]

#: ``denoise(x (B, C, T, H, W), timestep (B, T) float32 on 0..1000) -> velocity (B, C, T, H, W)``
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Shared set-up
# --------------------------------------------------------------------------------------------------


def _check_inputs(
    name: str, noise: torch.Tensor, sigmas: torch.Tensor, condition_latent: torch.Tensor | None
) -> tuple[torch.Tensor, int]:
    """Validate shapes and return (float64 CPU σ grid, number K of conditioning frames)."""
    if noise.ndim != 5:
        raise ValueError(f"{name}: noise must have shape (B, C, T, H, W), got {tuple(noise.shape)}")
    sig = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if sig.ndim != 1 or sig.numel() < 2:
        raise ValueError(
            f"{name}: sigmas must be a 1-D grid with >= 2 entries (n steps + terminal), got {tuple(sig.shape)}"
        )
    if not bool((sig[1:] < sig[:-1]).all()) or sig[0] > 1 or sig[-1] < 0:
        raise ValueError(f"{name}: sigmas must decrease strictly within [0, 1], got {sig.tolist()}")
    k = 0
    if condition_latent is not None:
        B, C, T, H, W = noise.shape
        cl = condition_latent
        if (
            cl.ndim != 5
            or cl.shape[0] != B
            or cl.shape[1] != C
            or cl.shape[3:] != (H, W)
            or not 1 <= cl.shape[2] < T
        ):
            raise ValueError(
                f"{name}: condition_latent must have shape ({B}, {C}, K, {H}, {W}) with 1 <= K < T={T}, "
                f"got {tuple(cl.shape)}"
            )
        k = cl.shape[2]
    return sig, k


def _init_state(noise: torch.Tensor, condition_latent: torch.Tensor | None, k: int) -> torch.Tensor:
    x = noise.clone()
    if k:
        x[:, :, :k] = condition_latent.to(x.dtype)
    return x


def _frame_timesteps(sigma: float, x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T) float32 timesteps 1000·σ, with 0 on the first k (conditioning) frames.

    1000·σ is formed in float32 from float32 σ, exactly as the diffusers scheduler forms its
    ``timesteps``, so the value the DiT truncates is bit-identical to the port's.
    """
    t = torch.tensor(sigma, dtype=torch.float32) * NUM_TRAIN_TIMESTEPS
    ts = t.to(x.device).expand(x.shape[0], x.shape[2]).clone()
    ts[:, :k] = 0.0
    return ts


def _call(denoise: Denoiser, x: torch.Tensor, ts: torch.Tensor, name: str) -> torch.Tensor:
    v = denoise(x, ts)
    if v.shape != x.shape:
        raise ValueError(f"{name}: denoise returned shape {tuple(v.shape)}, expected {tuple(x.shape)}")
    return v


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """Update precision: float32, or float64 when the state itself is float64."""
    return torch.promote_types(x.dtype, torch.float32)


def _restore(x_new: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """Cast the update back to the state dtype and copy the conditioning frames over unchanged."""
    x_new = x_new.to(x.dtype)
    if k:
        x_new[:, :, :k] = x[:, :, :k]
    return x_new


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


# --------------------------------------------------------------------------------------------------
# Euler
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def flow_euler(
    denoise: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    condition_latent: torch.Tensor | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """LTX-style per-frame Euler sampler (the released ``flow_euler_ltx``).

    For i = 0..n−1: v = denoise(x, t_i) with t_i = 1000·σ_i on every frame (0 on conditioning frames),
    then x ← x + (σ_{i+1} − σ_i)·v on the non-conditioning frames.

    Args:
        denoise: velocity callable, see module docstring.
        noise: initial latent ε, (B, C, T, H, W). Its dtype is the state dtype.
        sigmas: (n + 1,) decreasing σ grid ending in 0, e.g. :func:`~sana_wm.diffusion.timesteps.inference_sigmas`.
        condition_latent: optional (B, C, K, H, W) clean latent of the first K frames (K = 1: first image).
        progress: show a tqdm bar.

    Returns:
        The final latent, (B, C, T, H, W), dtype of ``noise``; frames < K equal ``condition_latent``.
    """
    sig, k = _check_inputs("flow_euler", noise, sigmas, condition_latent)
    x = _init_state(noise, condition_latent, k)
    for i in _progress(range(sig.numel() - 1), progress, "flow_euler"):
        s, s_next = sig[i].item(), sig[i + 1].item()
        v = _call(denoise, x, _frame_timesteps(s, x, k), "flow_euler")
        w = _work_dtype(x)
        x = _restore(x.to(w) + (s_next - s) * v.to(w), x, k)
    return x


# --------------------------------------------------------------------------------------------------
# DPM-Solver++ (2M)
# --------------------------------------------------------------------------------------------------


def _lambda(sigma: float) -> float:
    """Half log-SNR λ = log(α/σ) with α = 1 − σ; −inf at σ = 1, +inf at σ = 0."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log1p(-sigma) - math.log(sigma)


@torch.no_grad()
def dpm_solver_pp(
    denoise: Denoiser,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    condition_latent: torch.Tensor | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """DPM-Solver++ multistep, order 2 ("2M"), for the flow x_σ = (1 − σ)·x₀ + σ·ε.

    Data prediction x̂₀ = x − σ·v. With α = 1 − σ, λ = log(α/σ) and h = λ_next − λ, one step is

        x_next = (σ_next/σ)·x + (α_next − α·σ_next/σ)·D,

    which is the exact solution of the ODE when D is the true x₀ (the form of Lu et al. 2022,
    eq. 5 with α_next(1 − e^{−h}) written out so that σ = 1 and σ_next = 0 stay finite).
    D = x̂₀ for the first step (first order) and D = (1 + 1/(2r))·x̂₀ − 1/(2r)·x̂₀_prev with
    r = h_prev/h afterwards. The step into σ_next = 0 is first order (h is infinite there), so it
    returns x̂₀ of the last model call; a step whose previous step started at σ = 1 (h_prev infinite,
    r = ∞) also reduces to first order.

    Arguments, conditioning, dtype and return value are as for :func:`flow_euler`; the same n
    model calls are made.
    """
    sig, k = _check_inputs("dpm_solver_pp", noise, sigmas, condition_latent)
    x = _init_state(noise, condition_latent, k)
    x0_prev: torch.Tensor | None = None
    h_prev = math.nan
    for i in _progress(range(sig.numel() - 1), progress, "dpm_solver_pp"):
        s, s_next = sig[i].item(), sig[i + 1].item()
        v = _call(denoise, x, _frame_timesteps(s, x, k), "dpm_solver_pp")
        w = _work_dtype(x)
        x32 = x.to(w)
        x0 = x32 - s * v.to(w)  # x̂₀ (B, C, T, H, W), float32 (float64 for a float64 state)
        h = _lambda(s_next) - _lambda(s)
        if x0_prev is None or not math.isfinite(h) or not math.isfinite(h_prev):
            d = x0
        else:
            r = h_prev / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        alpha, alpha_next = 1.0 - s, 1.0 - s_next
        x = _restore((s_next / s) * x32 + (alpha_next - alpha * s_next / s) * d, x, k)
        x0_prev, h_prev = x0, h
    return x


# --------------------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------------------


def guidance_combine(v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """v = v_u + s·(v_c − v_u): s = 1 is the conditional prediction, s = 0 the unconditional one."""
    return v_uncond + scale * (v_cond - v_uncond)


class CFGDenoiser:
    """Classifier-free guidance wrapper that turns a batched model call into a ``denoise(x, t)``.

    Text guidance calls ``model_fn(x, timestep, **kwargs)`` once per step with the batch doubled as [uncond, cond]
    (the released order) and returns v_u + s·(v_c − v_u); with ``scale == 1`` it makes a single conditional call on
    the undoubled batch.

    Camera guidance (``camera_scale`` ≠ 1, off in the release) adds a branch in which the keys of ``camera_uncond``
    replace those of ``shared`` — the camera tensors of a camera that stands still — and pushes the prediction away
    from it: v = v_c + (s − 1)·(v_c − v_u) + (s_cam − 1)·(v_c − v_cam∅). Each term is one condition's classifier-free
    guidance around the fully conditional prediction, so with one scale at 1 the other term is the usual
    v_∅ + s·(v_c − v_∅). The branches run as one batch: [uncond, cond, camera-uncond], the ones in use.

    Args:
        model_fn: ``(x (B', C, T, H, W), timestep (B', T), **kwargs) -> velocity (B', C, T, H, W)``.
        scale: text guidance scale s (5.0 for the released model).
        cond: keyword tensors of the conditional branch, batch B on dim 0 (e.g. text embeddings
            (B, L, D) and mask (B, L)).
        uncond: keyword tensors of the unconditional branch, same keys and shapes as ``cond``.
        shared: keyword arguments identical in all branches (e.g. camera tensors). Tensors whose
            dim 0 is B are repeated per branch; anything else (non-tensors, tensors without a batch dim)
            is passed as is.
        camera_scale: camera guidance scale s_cam (1 = off).
        camera_uncond: tensors that replace ``shared``'s of the same keys (same shapes) in the camera-unconditional
            branch; needed when ``camera_scale`` ≠ 1.

    Example:
        >>> den = CFGDenoiser(dit, 5.0, cond={"y": y, "mask": m}, uncond={"y": y0, "mask": m0},
        ...                   shared={"camera": cam})
        >>> latent = flow_euler(den, noise, inference_sigmas(60, 9.8), condition_latent=z0)
    """

    def __init__(
        self,
        model_fn: Callable[..., torch.Tensor],
        scale: float,
        *,
        cond: Mapping[str, Any] | None = None,
        uncond: Mapping[str, Any] | None = None,
        shared: Mapping[str, Any] | None = None,
        camera_scale: float = 1.0,
        camera_uncond: Mapping[str, Any] | None = None,
    ) -> None:
        cond, uncond, shared = dict(cond or {}), dict(uncond or {}), dict(shared or {})
        camera_uncond = dict(camera_uncond or {})
        if scale != 1.0 and set(cond) != set(uncond):
            raise ValueError(
                f"CFGDenoiser: cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}"
            )
        overlap = (set(cond) | set(uncond)) & set(shared)
        if overlap:
            raise ValueError(f"CFGDenoiser: keys {sorted(overlap)} appear both in cond/uncond and in shared")
        if scale != 1.0:
            for key, c in cond.items():
                _check_branch_pair("cond", "uncond", key, c, uncond[key])
        if not (isinstance(camera_scale, numbers.Real) and math.isfinite(camera_scale)):
            raise ValueError(f"CFGDenoiser: camera_scale must be a finite number; got {camera_scale!r}")
        if camera_scale != 1.0:
            if not camera_uncond:
                raise ValueError("CFGDenoiser: camera_scale != 1 needs camera_uncond (the still camera's tensors)")
            missing = set(camera_uncond) - set(shared)
            if missing:
                raise ValueError(f"CFGDenoiser: camera_uncond keys {sorted(missing)} are not keys of shared "
                                 f"{sorted(shared)}")
            for key, u in camera_uncond.items():
                _check_branch_pair("shared", "camera_uncond", key, shared[key], u)
        self.model_fn = model_fn
        self.scale = float(scale)
        self.camera_scale = float(camera_scale)
        self.cond, self.uncond, self.shared, self.camera_uncond = cond, uncond, shared, camera_uncond

    @property
    def uses_guidance(self) -> bool:
        """True when more than the conditional branch runs (a guidance scale ≠ 1)."""
        return self.scale != 1.0 or self.camera_scale != 1.0

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """x (B, C, T, H, W), timestep (B, T) → guided velocity (B, C, T, H, W)."""
        if not self.uses_guidance:
            return self.model_fn(x, timestep, **self.cond, **self.shared)
        B = x.shape[0]
        text, camera = self.scale != 1.0, self.camera_scale != 1.0
        # the branches, in batch order: [uncond (text), cond, camera-uncond], each a {key: value} of the text keys
        # and of the shared keys
        branches: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []
        if text:
            branches.append((self.uncond, self.shared))
        branches.append((self.cond, self.shared))
        if camera:
            branches.append((self.cond, {**self.shared, **self.camera_uncond}))
        n = len(branches)
        kwargs: dict[str, Any] = {}
        for key in self.cond:
            kwargs[key] = _batched([b[0][key] for b in branches], B)
        for key in self.shared:
            kwargs[key] = _batched([b[1][key] for b in branches], B)
        v = self.model_fn(torch.cat([x] * n, dim=0), torch.cat([timestep] * n, dim=0), **kwargs).chunk(n, dim=0)
        if text and not camera:
            return guidance_combine(v[0], v[1], self.scale)
        if camera and not text:
            return guidance_combine(v[1], v[0], self.camera_scale)  # v_cam∅ + s_cam·(v_c − v_cam∅)
        v_u, v_c, v_cam = v
        return v_c + (self.scale - 1.0) * (v_c - v_u) + (self.camera_scale - 1.0) * (v_c - v_cam)


def _check_branch_pair(name_c: str, name_u: str, key: str, c: Any, u: Any) -> None:
    """A keyword whose value differs between two branches must be a tensor of one shape in both."""
    if not (isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor) and u.shape == c.shape):
        raise ValueError(
            f"CFGDenoiser: {name_c}[{key!r}] and {name_u}[{key!r}] must be tensors of the same shape, got "
            f"{getattr(c, 'shape', type(c).__name__)} and {getattr(u, 'shape', type(u).__name__)}"
        )


def _batched(values: list[Any], B: int) -> Any:
    """One keyword argument for the stacked branches: batch tensors (dim 0 = B) concatenated in branch order;
    anything else passed as is (it must then be the same object in every branch)."""
    first = values[0]
    if isinstance(first, torch.Tensor) and first.ndim > 0 and first.shape[0] == B:
        return torch.cat(values, dim=0)
    if any(v is not first for v in values[1:]):
        raise ValueError(f"CFGDenoiser: a keyword that differs between branches must be a tensor with the batch "
                         f"({B}) on dim 0; got {getattr(first, 'shape', type(first).__name__)}")
    return first
