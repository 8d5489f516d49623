"""Per-token ray frames for the UCPE camera-attention branch (docs/design/camera.md §6).

Every latent token (frame f, row v, column u) gets a rigid transform ``P = ray←world`` built from the
20-d camera conditions of its frame (row-major relative c2w, then latent-unit fx, fy, cx, cy):

1. Focal lengths go through the reference model's pinhole-as-UCM round trip (ξ = 0): fx → horizontal
   FOV in degrees over ``W·p`` grid cells → fx′ = (W/2)·cos θ / max(sin θ, ε_dtype) with θ = FOV/2;
   the same for fy with ``H·p``. With patch size p = 1 it is the identity up to rounding in fp32,
   but in bf16 it moves fx (31.25 → 31.125), so it is reproduced op for op. cx, cy are divided by p.
2. Unit camera rays on the integer token grid (no +0.5): x = (u − cx)/fx′, y = (v − cy)/fy′,
   γ = √(1 + r²)/(1 + r²), d = (γx, γy, γ).
3. World ray z_r = normalise(R d); the camera's down axis c_y = R[:, 1]; x_r = normalise(c_y × z_r);
   y_r = normalise(z_r × x_r) (all normalisations divide by max(‖·‖, 1e-6)).
4. ``P = [[R_l2wᵀ, −R_l2wᵀ t], [0, 0, 0, 1]]`` with R_l2w = [x_r y_r z_r] (columns); rays with a NaN
   direction get the identity.

Everything runs in the dtype and on the device of ``camera_conditions`` with autocast disabled, so a
bf16 model that passes bf16 conditions gets the same bf16 geometry as the reference pipeline.
Vectorised over batch, frames and pixels; no Python loops.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .convention import invert_se3

__all__ = ["RayFrames", "ray_matrices", "ray_frames"]

# Normalisation floor of the reference implementation (F.normalize eps); part of the numerics.
_NORMALIZE_EPS = 1e-6


class RayFrames(NamedTuple):
    """Per-token ray frames, each ``(B, T·H·W, 4, 4)`` in frame-major, row, column token order.

    Attributes:
        P: ray←world transforms; the attention output groups are mapped back with ``o = P o′``.
        P_T: ``Pᵀ`` (a transposed view of ``P``), applied to queries.
        P_inv: closed-form ``P⁻¹``, applied to keys and values.
    """

    P: torch.Tensor
    P_T: torch.Tensor
    P_inv: torch.Tensor


def _patch_hw(patch_size: int | tuple[int, int]) -> tuple[int, int]:
    ps = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if len(ps) != 2 or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in ps):
        raise ValueError(f"`patch_size` must be a positive int or a (p_h, p_w) pair; got {patch_size!r}.")
    return ps  # type: ignore[return-value]


def _focal_round_trip(f: torch.Tensor, fov_extent: int, grid_extent: int) -> torch.Tensor:
    """focal → FOV (degrees) over ``fov_extent`` cells → focal over ``grid_extent`` cells, in f's dtype.

    The op sequence (and hence the bf16 rounding) follows the reference UCM helpers with ξ = 0, where
    the ξ terms (asin(0), + 0) are exact no-ops and are left out.
    """
    half_fov = torch.atan(1.0 / (2.0 * f / fov_extent))
    fov_deg = torch.rad2deg(2.0 * half_fov)
    theta = torch.deg2rad(0.5 * fov_deg)
    return (grid_extent * 0.5) * torch.cos(theta) / torch.sin(theta).clamp_min(torch.finfo(f.dtype).eps)


def _unit_camera_rays(
    fx: torch.Tensor, fy: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Unit pinhole rays (UCM with ξ = 0) on the integer grid; intrinsics (B, T) → rays (B, T, H, W, 3)."""
    u = torch.arange(width, dtype=fx.dtype, device=fx.device)
    v = torch.arange(height, dtype=fx.dtype, device=fx.device)
    x = (u.view(1, 1, 1, width) - cx[..., None, None]) / fx[..., None, None]  # (B, T, 1, W)
    y = (v.view(1, 1, height, 1) - cy[..., None, None]) / fy[..., None, None]  # (B, T, H, 1)
    x, y = torch.broadcast_tensors(x, y)  # (B, T, H, W)
    r2 = x * x + y * y
    gamma = torch.sqrt(1 + r2) / (1 + r2)  # = 1/√(1 + r²), written as the reference computes it
    return torch.stack([gamma * x, gamma * y, gamma], dim=-1)  # (B, T, H, W, 3)


def ray_matrices(
    camera_conditions: torch.Tensor, height: int, width: int, *, patch_size: int | tuple[int, int] = 1
) -> torch.Tensor:
    """Per-ray ``ray←world`` SE(3) transforms of the UCPE branch.

    Args:
        camera_conditions: ``(B, T, 20)`` floating tensor: row-major relative c2w (16) then latent-unit
            (fx, fy, cx, cy), as built by :func:`sana_wm.camera.conditions.camera_conditions`.
        height, width: token grid size H, W (latent grid ÷ spatial patch size).
        patch_size: spatial patch size p or (p_h, p_w) of the DiT (1 for the released model).

    Returns:
        ``(B, T, H, W, 4, 4)`` tensor in the dtype and on the device of ``camera_conditions``.

    Values are not checked (that would synchronise the device every forward); validate trajectories
    upstream with :func:`sana_wm.camera.conditions.prepare_camera`.
    """
    cc = camera_conditions
    if not isinstance(cc, torch.Tensor) or cc.ndim != 3 or cc.shape[-1] != 20:
        raise ValueError(
            f"`camera_conditions` must be a tensor of shape (B, T, 20) (16 c2w + fx, fy, cx, cy); "
            f"got {tuple(cc.shape) if isinstance(cc, torch.Tensor) else type(cc).__name__}."
        )
    if not cc.is_floating_point():
        raise ValueError(f"`camera_conditions` must be a floating tensor; got dtype {cc.dtype}.")
    for name, val in (("height", height), ("width", width)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"`{name}` must be a positive integer (token grid size); got {val!r}.")
    p_h, p_w = _patch_hw(patch_size)
    B, T, _ = cc.shape
    H, W = height, width

    # Geometry follows the input dtype; autocast would silently move einsum to bf16/fp16.
    with torch.autocast(device_type=cc.device.type, enabled=False):
        c2w = cc[..., :16].reshape(B, T, 4, 4)
        fx = _focal_round_trip(cc[..., 16], W * p_w, W)
        fy = _focal_round_trip(cc[..., 17], H * p_h, H)
        d_cam = _unit_camera_rays(fx, fy, cc[..., 18] / p_w, cc[..., 19] / p_h, H, W)

        R = c2w[..., :3, :3]  # (B, T, 3, 3)
        d_world = torch.einsum("btij,bthwj->bthwi", R, d_cam)  # (B, T, H, W, 3)
        z_r = F.normalize(d_world, dim=-1, eps=_NORMALIZE_EPS)
        c_y = R[..., :, 1][:, :, None, None, :].expand_as(z_r)  # camera +Y (down) in world coordinates
        x_r = F.normalize(torch.linalg.cross(c_y, z_r, dim=-1), dim=-1, eps=_NORMALIZE_EPS)
        y_r = F.normalize(torch.linalg.cross(z_r, x_r, dim=-1), dim=-1, eps=_NORMALIZE_EPS)
        R_w2l = torch.stack([x_r, y_r, z_r], dim=-2)  # rows = ray axes, i.e. R_l2wᵀ; (B, T, H, W, 3, 3)
        t = c2w[..., :3, 3][:, :, None, None, :].expand_as(z_r)  # camera centre; (B, T, H, W, 3)
        t_w2l = -torch.einsum("bthwij,bthwj->bthwi", R_w2l, t)

        bottom = torch.zeros(B, T, H, W, 1, 4, dtype=cc.dtype, device=cc.device)
        bottom[..., 0, 3] = 1.0
        P = torch.cat([torch.cat([R_w2l, t_w2l[..., None]], dim=-1), bottom], dim=-2)  # (B, T, H, W, 4, 4)
        bad = torch.isnan(d_world).any(dim=-1)[..., None, None]
        eye = torch.eye(4, dtype=cc.dtype, device=cc.device)
        return torch.where(bad, eye, P)


def ray_frames(
    camera_conditions: torch.Tensor, height: int, width: int, *, patch_size: int | tuple[int, int] = 1
) -> RayFrames:
    """``(P, Pᵀ, P⁻¹)`` per token, computed once per forward and shared by all attention blocks.

    Args:
        camera_conditions: ``(B, T, 20)``, see :func:`ray_matrices`.
        height, width: token grid size H, W.
        patch_size: spatial patch size of the DiT.

    Returns:
        :class:`RayFrames` with three ``(B, T·H·W, 4, 4)`` tensors in token order (frame, row, column).
    """
    P = ray_matrices(camera_conditions, height, width, patch_size=patch_size)
    B, T, H, W = P.shape[:4]
    P = P.reshape(B, T * H * W, 4, 4)  # (B, L, 4, 4), L = T·H·W frame-major
    with torch.autocast(device_type=P.device.type, enabled=False):
        P_inv = invert_se3(P)
    return RayFrames(P=P, P_T=P.transpose(-1, -2), P_inv=P_inv)
