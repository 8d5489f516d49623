"""Camera tensors fed to the DiT: per-latent-frame 20-d conditions and chunked Plücker maps.

The LTX-2 VAE compresses time 8× with a causal first frame, so a video of F = 8k + 1 pixel frames has
T_lat = k + 1 latent frames; latent frame i covers pixel frames 8i − 7 … 8i (frame 0 alone for i = 0).
The two camera inputs of SANA-WM (docs/design/camera.md §4–§5) follow that mapping:

- ``camera_conditions`` (T_lat, 20): the pose of pixel frame 8i (the *last* frame of latent i's
  group) as a row-major 4×4 relative c2w, then that frame's latent-unit (fx, fy, cx, cy). Feeds the
  UCPE attention branch through :func:`sana_wm.camera.rays.ray_frames`.
- ``chunk_plucker`` (48, T_lat, h, w): for latent i the 8 pixel frames starting at max(0, 8i − 7) —
  so latent 0 uses frames 0–7 — each as a 6-channel Plücker map [d, t × d] on the latent grid;
  channel = 6·j + c for frame j of the chunk. Feeds the post-attention Plücker branch.

Poses follow :mod:`sana_wm.camera.convention` (OpenCV c2w, relative to frame 0); intrinsics are in
latent-grid units (pixels ÷ 32); grids use integer coordinates u ∈ 0..w−1, v ∈ 0..h−1 (no +0.5).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .convention import relative_to_first, validate_c2w
from .intrinsics import as_fxfycxcy, to_latent_units

__all__ = [
    "num_latent_frames",
    "snap_num_frames",
    "camera_conditions",
    "plucker_map",
    "chunk_plucker",
    "prepare_camera",
    "camera_tensors",
]


def _check_pos_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def num_latent_frames(num_frames: int, temporal_stride: int = 8) -> int:
    """Latent frames for ``num_frames`` pixel frames: (F − 1) // stride + 1, requiring F = stride·k + 1.

    Raises:
        ValueError: if ``num_frames`` is not a positive integer of the form 8k+1 (for stride 8).
    """
    n = _check_pos_int(num_frames, "num_frames")
    s = _check_pos_int(temporal_stride, "temporal_stride")
    if (n - 1) % s != 0:
        lower = n - (n - 1) % s
        raise ValueError(
            f"`num_frames` must be of the form {s}k+1 (the VAE compresses time {s}x with a causal first "
            f"frame); got {n}. Nearest valid values: {lower} or {lower + s}."
        )
    return (n - 1) // s + 1


def snap_num_frames(n: int, max_frames: int | None = None, temporal_stride: int = 8) -> int:
    """Snap a requested frame count to the nearest valid ``stride·k + 1``.

    ``n`` is first clipped to ``max_frames`` (e.g. the trajectory length), then rounded to the nearest
    valid count with ties going up; if that exceeds ``max_frames`` it is rounded down instead
    (as NVIDIA's CLI and the diffusers pipeline snap). The result is ≥ 1.

    Args:
        n: requested number of pixel frames (≥ 1).
        max_frames: optional upper bound (≥ 1), e.g. the number of poses available.
        temporal_stride: VAE temporal compression (8).

    Returns:
        The snapped frame count.
    """
    n = _check_pos_int(n, "n")
    s = _check_pos_int(temporal_stride, "temporal_stride")
    if max_frames is not None:
        n = min(n, _check_pos_int(max_frames, "max_frames"))
    if (n - 1) % s == 0:
        return n
    below = n - (n - 1) % s
    above = below + s
    snapped = below if (n - below) < (above - n) else above  # ties go up
    if max_frames is not None and snapped > max_frames:
        snapped = below
    return snapped


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` must be a numeric array or tensor; got {type(x).__name__}.") from err
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


def _check_pose_intr(c2w: torch.Tensor, intr: torch.Tensor, c2w_name: str, intr_name: str) -> None:
    if c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4) or c2w.shape[0] < 1:
        raise ValueError(f"`{c2w_name}` must have shape (F, 4, 4); got {tuple(c2w.shape)}.")
    if intr.ndim != 2 or intr.shape[1] != 4 or intr.shape[0] != c2w.shape[0]:
        raise ValueError(
            f"`{intr_name}` must have shape (F, 4) = ({c2w.shape[0]}, 4) matching `{c2w_name}`; got {tuple(intr.shape)}."
        )


def _check_enough_frames(num_frames: int, t_lat: int, stride: int, name: str) -> None:
    needed = stride * (t_lat - 1) + 1
    if num_frames < needed:
        raise ValueError(
            f"{t_lat} latent frames need at least {needed} pixel frames ({stride}·(T_lat−1)+1); "
            f"`{name}` has {num_frames}."
        )


def camera_conditions(
    c2w_rel: Any, intr_latent: Any, num_latent_frames: int, temporal_stride: int = 8
) -> torch.Tensor:
    """Per-latent-frame 20-d camera conditions.

    Row i = row-major flatten of ``c2w_rel[stride·i]`` (16 numbers) followed by
    ``intr_latent[stride·i]`` = (fx, fy, cx, cy).

    Args:
        c2w_rel: ``(F, 4, 4)`` poses already relative to frame 0 (tensor or array).
        intr_latent: ``(F, 4)`` intrinsics in latent-grid units.
        num_latent_frames: T_lat; needs F ≥ stride·(T_lat − 1) + 1.
        temporal_stride: VAE temporal compression (8).

    Returns:
        ``(T_lat, 20)`` tensor in the dtype/device of ``c2w_rel``.
    """
    c2w = _as_tensor(c2w_rel, "c2w_rel")
    intr = _as_tensor(intr_latent, "intr_latent").to(c2w)
    _check_pose_intr(c2w, intr, "c2w_rel", "intr_latent")
    t_lat = _check_pos_int(num_latent_frames, "num_latent_frames")
    s = _check_pos_int(temporal_stride, "temporal_stride")
    _check_enough_frames(c2w.shape[0], t_lat, s, "c2w_rel")
    idx = torch.arange(t_lat, device=c2w.device) * s  # pixel frame 8i = last frame of latent i's group
    return torch.cat([c2w[idx].reshape(t_lat, 16), intr[idx]], dim=-1)  # (T_lat, 20)


def plucker_map(c2w: torch.Tensor, intr: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker ray map [d, t × d] of pinhole cameras on an integer pixel grid.

    For pixel (u, v), u ∈ 0..W−1, v ∈ 0..H−1 (no +0.5): d = normalise(R · ((u−cx)/fx, (v−cy)/fy, 1)) in
    world coordinates, m = t × d with t the camera centre. Computed in the dtype of ``c2w``.

    Args:
        c2w: ``(..., 4, 4)`` camera-to-world poses.
        intr: ``(..., 4)`` (fx, fy, cx, cy) in the units of the grid; leading dims broadcast with ``c2w``.
        height, width: grid size H, W.

    Returns:
        ``(..., 6, H, W)`` tensor, channels [dx, dy, dz, mx, my, mz].
    """
    if not isinstance(c2w, torch.Tensor) or c2w.ndim < 2 or tuple(c2w.shape[-2:]) != (4, 4):
        raise ValueError(
            f"`c2w` must be a tensor of shape (..., 4, 4); got {getattr(c2w, 'shape', type(c2w))}."
        )
    if not isinstance(intr, torch.Tensor) or intr.ndim < 1 or intr.shape[-1] != 4:
        raise ValueError(
            f"`intr` must be a tensor of shape (..., 4); got {getattr(intr, 'shape', type(intr))}."
        )
    H = _check_pos_int(height, "height")
    W = _check_pos_int(width, "width")
    intr = intr.to(c2w)
    lead = torch.broadcast_shapes(c2w.shape[:-2], intr.shape[:-1])
    c2w = c2w.expand(*lead, 4, 4)
    intr = intr.expand(*lead, 4)
    v = torch.arange(H, dtype=c2w.dtype, device=c2w.device).view(H, 1)
    u = torch.arange(W, dtype=c2w.dtype, device=c2w.device).view(1, W)
    fx, fy, cx, cy = (intr[..., k, None, None] for k in range(4))  # each (..., 1, 1)
    x = ((u - cx) / fx).expand(*lead, H, W)
    y = ((v - cy) / fy).expand(*lead, H, W)
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (..., H, W, 3)
    R = c2w[..., :3, :3]
    d = torch.einsum("...ij,...hwj->...hwi", R, d_cam)
    d = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)  # ‖d‖ ≥ 1 here, no eps needed
    t = c2w[..., None, None, :3, 3].expand_as(d)
    m = torch.linalg.cross(t, d, dim=-1)
    return torch.cat([d, m], dim=-1).movedim(-1, -3)  # (..., 6, H, W)


def chunk_plucker(
    c2w_rel: Any,
    intr_latent: Any,
    num_latent_frames: int,
    latent_h: int,
    latent_w: int,
    temporal_stride: int = 8,
) -> torch.Tensor:
    """Plücker maps of the ``stride`` pixel frames feeding each latent frame, stacked on channels.

    Latent frame i uses pixel frames ``start … start + stride − 1`` with start = max(0, stride·i −
    stride + 1) (so latent 0 uses frames 0 … 7); indices past the last frame repeat the last pose and
    intrinsics.

    Args:
        c2w_rel: ``(F, 4, 4)`` relative poses.
        intr_latent: ``(F, 4)`` intrinsics in latent-grid units.
        num_latent_frames: T_lat; needs F ≥ stride·(T_lat − 1) + 1.
        latent_h, latent_w: latent grid size h, w.
        temporal_stride: VAE temporal compression (8).

    Returns:
        ``(6·stride, T_lat, h, w)`` tensor (48 channels for stride 8), channel = 6·j + c, in the dtype
        of ``c2w_rel``.
    """
    c2w = _as_tensor(c2w_rel, "c2w_rel")
    intr = _as_tensor(intr_latent, "intr_latent").to(c2w)
    _check_pose_intr(c2w, intr, "c2w_rel", "intr_latent")
    t_lat = _check_pos_int(num_latent_frames, "num_latent_frames")
    s = _check_pos_int(temporal_stride, "temporal_stride")
    h = _check_pos_int(latent_h, "latent_h")
    w = _check_pos_int(latent_w, "latent_w")
    num_frames = c2w.shape[0]
    _check_enough_frames(num_frames, t_lat, s, "c2w_rel")
    start = (torch.arange(t_lat, device=c2w.device) * s - (s - 1)).clamp_min(0)
    idx = (start[:, None] + torch.arange(s, device=c2w.device)).clamp_max(num_frames - 1)  # (T_lat, s)
    maps = plucker_map(c2w[idx], intr[idx], h, w)  # (T_lat, s, 6, h, w)
    return maps.reshape(t_lat, s * 6, h, w).transpose(0, 1)  # (6s, T_lat, h, w), channel 6j + c


def prepare_camera(
    c2w: Any,
    intrinsics_px: Any,
    pixel_hw: tuple[int, int],
    latent_hw: tuple[int, int],
    num_frames: int | None = None,
    temporal_stride: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build both DiT camera inputs from a raw trajectory (docs/design/camera.md §1–§5).

    Steps: take the first ``num_frames`` poses; check F = stride·k + 1, finiteness and rigidity of the
    poses and fx, fy > 0; then :func:`camera_tensors`.

    Args:
        c2w: ``(F₀, 4, 4)`` OpenCV camera-to-world poses (array or tensor), any world frame.
        intrinsics_px: anything :func:`as_fxfycxcy` accepts, in pixels of the model-resolution image
            (already adjusted for resize and crop, see :func:`sana_wm.camera.intrinsics.crop_intrinsics`).
        pixel_hw: (H, W) of the model-resolution image, e.g. (704, 1280).
        latent_hw: (h, w) of the latent grid, e.g. (22, 40).
        num_frames: frames to use (≤ F₀); default F₀.
        temporal_stride: VAE temporal compression (8).

    Returns:
        ``(camera_conditions, chunk_plucker)``: float32 tensors of shape ``(T_lat, 20)`` and
        ``(6·stride, T_lat, h, w)`` with T_lat = (F − 1) // stride + 1.
    """
    poses = _poses_f64(c2w)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or poses.shape[0] < 1:
        raise ValueError(f"`c2w` must have shape (F, 4, 4) with F >= 1; got {poses.shape}.")
    if num_frames is None:
        num_frames = poses.shape[0]
    n = _check_pos_int(num_frames, "num_frames")
    if n > poses.shape[0]:
        raise ValueError(f"`num_frames` = {n} exceeds the {poses.shape[0]} poses in `c2w`.")
    poses = poses[:n]
    num_latent_frames(n, temporal_stride)
    validate_c2w(poses, "c2w")
    intr_px = as_fxfycxcy(intrinsics_px, n, name="intrinsics_px")
    return camera_tensors(poses, intr_px, pixel_hw, latent_hw, temporal_stride)


def camera_tensors(
    c2w: Any,
    intrinsics_px: Any,
    pixel_hw: tuple[int, int],
    latent_hw: tuple[int, int],
    temporal_stride: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both DiT camera inputs from poses and intrinsics that are already checked.

    For callers that validated their inputs once up front (the inference pipeline); everyone else calls
    :func:`prepare_camera`, which checks first. Steps: make the poses relative to frame 0; convert the
    intrinsics from pixels of the ``pixel_hw`` crop to latent units; build :func:`camera_conditions`
    and :func:`chunk_plucker`. Geometry is computed in float64 and returned as float32 on the CPU.

    Args:
        c2w: ``(F, 4, 4)`` rigid OpenCV camera-to-world poses (see :func:`validate_c2w`), F = stride·k + 1.
        intrinsics_px: ``(F, 4)`` [fx, fy, cx, cy] with fx, fy > 0 (see :func:`as_fxfycxcy`), in pixels of
            the model-resolution image.
        pixel_hw, latent_hw, temporal_stride: as :func:`prepare_camera`.

    Returns:
        ``(camera_conditions, chunk_plucker)`` as :func:`prepare_camera`.
    """
    poses = _poses_f64(c2w)
    t_lat = num_latent_frames(poses.shape[0], temporal_stride)
    intr_px = np.asarray(intrinsics_px, dtype=np.float64)
    rel = torch.from_numpy(relative_to_first(poses))
    intr_lat = torch.from_numpy(to_latent_units(intr_px, pixel_hw, latent_hw))
    cond = camera_conditions(rel, intr_lat, t_lat, temporal_stride)
    plk = chunk_plucker(rel, intr_lat, t_lat, latent_hw[0], latent_hw[1], temporal_stride)
    return cond.float(), plk.float()


def _poses_f64(c2w: Any) -> np.ndarray:
    if isinstance(c2w, torch.Tensor):
        return c2w.detach().to("cpu", torch.float64).numpy()
    return np.asarray(c2w, dtype=np.float64)
