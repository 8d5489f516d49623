"""Pinhole intrinsics: input normalisation, resize-and-centre-crop bookkeeping, latent units.

Intrinsics are carried as ``[fx, fy, cx, cy]`` vectors in pixels of some image (the convention of
:mod:`sana_wm.camera.convention`: u to the right, v down, integer pixel coordinates at pixel centres
with no +0.5 offset). The pipeline is:

1. :func:`as_fxfycxcy` — accept ``(4,)``, ``(3, 3)``, ``(F, 4)`` or ``(F, 3, 3)`` in input-image pixels
   and return ``(F, 4)``;
2. :func:`resize_crop_geometry` + :func:`crop_intrinsics` — follow the aspect-preserving resize and
   centre crop that brings the image to the model resolution (704 × 1280 for the released model);
3. :func:`to_latent_units` — rescale to the latent grid (÷32 for the LTX-2 VAE: 22 × 40 latents).

``crop_intrinsics`` and ``to_latent_units`` work on numpy arrays or torch tensors of shape
``(..., 4)`` and return the same kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "CropGeometry",
    "as_fxfycxcy",
    "intrinsics_matrix",
    "pinhole_intrinsics",
    "fov_deg",
    "resize_crop_geometry",
    "crop_intrinsics",
    "to_latent_units",
]


def _k_to_vec(K: np.ndarray, name: str) -> np.ndarray:
    """``(..., 3, 3)`` K matrices → ``(..., 4)`` [fx, fy, cx, cy]; the skew term K[0, 1] is ignored."""
    Ks = K.reshape(-1, 3, 3)
    lower = np.stack([Ks[:, 1, 0], Ks[:, 2, 0], Ks[:, 2, 1], Ks[:, 2, 2] - 1.0], axis=-1)
    bad = (np.abs(lower) > 1e-4).any(axis=-1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = f" at frame {i}" if K.ndim == 3 else ""
        raise ValueError(
            f"`{name}` is not a pinhole K matrix{where}: expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]]; "
            f"got {Ks[i].tolist()}."
        )
    return np.stack([K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]], axis=-1)


def as_fxfycxcy(intrinsics: Any, num_frames: int, name: str = "intrinsics") -> np.ndarray:
    """Normalise user intrinsics to one ``[fx, fy, cx, cy]`` row per frame.

    Accepted shapes: ``(4,)`` = (fx, fy, cx, cy); ``(3, 3)`` = K; ``(F, 4)``; ``(F, 3, 3)``. A single
    vector/K, or a per-frame array of length 1, is broadcast to all frames; a per-frame array longer
    than ``num_frames`` is truncated; any other length is an error (no resampling is done).

    Args:
        intrinsics: array-like or torch tensor in pixels.
        num_frames: number of frames F ≥ 1 to produce.
        name: the argument name quoted in error messages.

    Returns:
        ``(num_frames, 4)`` float64 numpy array ``[fx, fy, cx, cy]``.

    Raises:
        ValueError: on an unsupported shape or length, non-finite values, or fx/fy ≤ 0.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"`num_frames` must be a positive integer; got {num_frames!r}.")
    if isinstance(intrinsics, torch.Tensor):
        arr = intrinsics.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            arr = np.asarray(intrinsics, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` must be a numeric array; got {type(intrinsics).__name__}.") from err
    shape = arr.shape
    if shape == (4,):
        vec = arr[None]
    elif shape == (3, 3):
        vec = _k_to_vec(arr, name)[None]
    elif arr.ndim == 2 and shape[1] == 4:
        vec = arr
    elif arr.ndim == 3 and shape[1:] == (3, 3):
        vec = _k_to_vec(arr, name)
    else:
        raise ValueError(
            f"`{name}` must have shape (4,) [fx, fy, cx, cy], (3, 3) K, (F, 4) or (F, 3, 3); got {shape}."
        )
    if vec.shape[0] == 1:
        vec = np.repeat(vec, num_frames, axis=0)
    elif vec.shape[0] >= num_frames:
        vec = vec[:num_frames]
    else:
        raise ValueError(
            f"`{name}` has shape {shape}: {vec.shape[0]} per-frame entries for {num_frames} frames. "
            f"Pass one entry (broadcast) or at least {num_frames} (extra frames are dropped)."
        )
    finite = np.isfinite(vec).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"`{name}` has non-finite values at frame {bad}: {vec[bad].tolist()}.")
    nonpos = (vec[:, 0] <= 0) | (vec[:, 1] <= 0)
    if nonpos.any():
        bad = int(np.flatnonzero(nonpos)[0])
        raise ValueError(
            f"`{name}` frame {bad} has fx = {float(vec[bad, 0])}, fy = {float(vec[bad, 1])}; focal lengths must be > 0 (pixels)."
        )
    return np.ascontiguousarray(vec)


def intrinsics_matrix(fxfycxcy: Any) -> np.ndarray:
    """``(..., 4)`` [fx, fy, cx, cy] → ``(..., 3, 3)`` pinhole K ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.

    The inverse of what :func:`as_fxfycxcy` reads from a K. Returns a numpy array in the input's floating
    dtype (float64 for integer input).
    """
    f = fxfycxcy.detach().cpu().numpy() if isinstance(fxfycxcy, torch.Tensor) else np.asarray(fxfycxcy)
    if f.ndim < 1 or f.shape[-1] != 4:
        raise ValueError(f"`fxfycxcy` must have shape (..., 4) [fx, fy, cx, cy]; got {f.shape}.")
    K = np.zeros((*f.shape[:-1], 3, 3), dtype=f.dtype if np.issubdtype(f.dtype, np.floating) else np.float64)
    K[..., 0, 0], K[..., 1, 1] = f[..., 0], f[..., 1]
    K[..., 0, 2], K[..., 1, 2] = f[..., 2], f[..., 3]
    K[..., 2, 2] = 1.0
    return K


def pinhole_intrinsics(height: int, width: int, fov_x_deg: float) -> np.ndarray:
    """``(3, 3)`` float64 K with square pixels, horizontal field of view ``fov_x_deg`` and the principal point
    at the image centre ((W − 1)/2, (H − 1)/2) of the integer pixel grid (pixel centres at integers)."""
    f = (width / 2.0) / math.tan(math.radians(fov_x_deg) / 2.0)
    return intrinsics_matrix(np.array([f, f, (width - 1) / 2.0, (height - 1) / 2.0]))


def fov_deg(K: Any, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(horizontal, vertical) field of view in degrees of ``(..., 3, 3)`` intrinsics for ``height × width`` frames:
    2·atan(W / 2fx) and 2·atan(H / 2fy), the inverse of :func:`pinhole_intrinsics`."""
    K = np.asarray(K, dtype=np.float64)
    return (np.degrees(2 * np.arctan(width / (2 * K[..., 0, 0]))),
            np.degrees(2 * np.arctan(height / (2 * K[..., 1, 1]))))


@dataclass(frozen=True)
class CropGeometry:
    """Aspect-preserving resize to ``(resized_h, resized_w)`` followed by a centre crop.

    The crop window is ``[top, top + target_h) × [left, left + target_w)`` of the resized image;
    ``scale_x = resized_w / src_w`` and ``scale_y = resized_h / src_h`` (they differ slightly because the
    resized size is rounded to integers).
    """

    resized_h: int
    resized_w: int
    top: int
    left: int
    scale_x: float
    scale_y: float


def resize_crop_geometry(src_h: int, src_w: int, target_h: int, target_w: int) -> CropGeometry:
    """Geometry of the resize-then-centre-crop that maps a ``src_h × src_w`` image to ``target_h × target_w``.

    scale = max(target_h / src_h, target_w / src_w); the resized size is
    ``max(target, round(src · scale))`` per axis (Python's round, as the reference pipeline); the crop
    offsets are ``⌊(resized - target) / 2⌋``.
    """
    for label, v in (("src_h", src_h), ("src_w", src_w), ("target_h", target_h), ("target_w", target_w)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"`{label}` must be a positive integer (pixels); got {v!r}.")
    scale = max(target_h / src_h, target_w / src_w)
    resized_w = max(int(target_w), int(round(src_w * scale)))
    resized_h = max(int(target_h), int(round(src_h * scale)))
    return CropGeometry(
        resized_h=resized_h,
        resized_w=resized_w,
        top=(resized_h - int(target_h)) // 2,
        left=(resized_w - int(target_w)) // 2,
        scale_x=resized_w / src_w,
        scale_y=resized_h / src_h,
    )


def _stack_last(parts: list, like: Any) -> Any:
    return torch.stack(parts, dim=-1) if isinstance(like, torch.Tensor) else np.stack(parts, axis=-1)


def _check_vec4(x: Any, name: str) -> None:
    if not isinstance(x, (np.ndarray, torch.Tensor)) or x.ndim < 1 or x.shape[-1] != 4:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(
            f"`{name}` must be a numpy array or tensor of shape (..., 4) [fx, fy, cx, cy]; got {shape}."
        )


def crop_intrinsics(fxfycxcy: np.ndarray | torch.Tensor, geom: CropGeometry) -> np.ndarray | torch.Tensor:
    """Intrinsics of the resized-and-cropped image: fx·sx, fy·sy, cx·sx − left, cy·sy − top.

    Args:
        fxfycxcy: ``(..., 4)`` intrinsics in source-image pixels.
        geom: from :func:`resize_crop_geometry`.

    Returns:
        ``(..., 4)`` intrinsics in target-image pixels, same kind as the input.
    """
    _check_vec4(fxfycxcy, "fxfycxcy")
    f = fxfycxcy
    parts = [
        f[..., 0] * geom.scale_x,
        f[..., 1] * geom.scale_y,
        f[..., 2] * geom.scale_x - geom.left,
        f[..., 3] * geom.scale_y - geom.top,
    ]
    return _stack_last(parts, f)


def to_latent_units(
    fxfycxcy: np.ndarray | torch.Tensor, pixel_hw: tuple[int, int], latent_hw: tuple[int, int]
) -> np.ndarray | torch.Tensor:
    """Rescale pixel intrinsics to the latent grid: fx, cx × latent_w / pixel_w; fy, cy × latent_h / pixel_h.

    Args:
        fxfycxcy: ``(..., 4)`` intrinsics in pixels of a ``pixel_hw`` image.
        pixel_hw: (H, W) of the image in pixels, e.g. (704, 1280).
        latent_hw: (h, w) of the latent grid, e.g. (22, 40).

    Returns:
        ``(..., 4)`` intrinsics in latent-grid units, same kind as the input.
    """
    _check_vec4(fxfycxcy, "fxfycxcy")
    for label, hw in (("pixel_hw", pixel_hw), ("latent_hw", latent_hw)):
        if len(hw) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in hw
        ):
            raise ValueError(f"`{label}` must be a pair of positive integers (height, width); got {hw!r}.")
    sx = latent_hw[1] / float(pixel_hw[1])
    sy = latent_hw[0] / float(pixel_hw[0])
    f = fxfycxcy
    return _stack_last([f[..., 0] * sx, f[..., 1] * sy, f[..., 2] * sx, f[..., 3] * sy], f)
