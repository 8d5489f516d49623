"""The project's single camera convention, and the rigid-transform helpers built on it.

Convention (every module in the repository uses exactly this; nothing else defines one):

- A pose is an **OpenCV camera-to-world (c2w)** homogeneous 4×4 matrix ``[[R, t], [0, 0, 0, 1]]``:
  ``R`` maps camera-frame directions to world directions and ``t`` is the camera centre in world
  coordinates.
- Camera axes: **+X right, +Y down, +Z forward** (the optical axis). A pixel (u, v) with intrinsics
  (fx, fy, cx, cy) looks along the camera-frame direction ``((u - cx) / fx, (v - cy) / fy, 1)``.
- After :func:`relative_to_first` the world frame *is* the first camera: pose 0 is exactly the
  identity and every other pose is expressed in that camera's frame.
- Translations are in metres (metric scale) wherever the source provides it; at training time a
  per-clip metric scale factor is applied with :func:`scale_translation`. At inference the
  trajectory is used as given (no normalisation).

Functions accept numpy arrays or torch tensors and return the same kind (validation converts to a
float64 numpy copy internally and never modifies the input). Shapes: ``(..., 4, 4)`` for single
transforms, ``(F, 4, 4)`` for a trajectory of F frames.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "invert_se3",
    "relative_to_first",
    "validate_c2w",
    "scale_translation",
    "rotation_angle",
    "yaw_matrix",
    "pitch_matrix",
    "roll_matrix",
    "look_angles",
    "ground_axes",
]


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _check_homogeneous_shape(T: Any, name: str) -> None:
    if not (_is_torch(T) or isinstance(T, np.ndarray)):
        raise TypeError(
            f"`{name}` must be a numpy array or torch tensor of shape (..., 4, 4); got {type(T).__name__}."
        )
    if T.ndim < 2 or tuple(T.shape[-2:]) != (4, 4):
        raise ValueError(f"`{name}` must have shape (..., 4, 4); got {tuple(T.shape)}.")


def invert_se3(T: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Closed-form inverse of rigid transforms: ``[[R, t], [0, 1]]⁻¹ = [[Rᵀ, -Rᵀt], [0, 1]]``.

    Assumes ``R`` is a rotation (use :func:`validate_c2w` first for untrusted input); the last row of
    the result is exactly ``[0, 0, 0, 1]`` whatever the input's last row holds.

    Args:
        T: ``(..., 4, 4)`` numpy array or torch tensor.

    Returns:
        ``(..., 4, 4)`` of the same kind, dtype and (for torch) device. Differentiable for torch.
    """
    _check_homogeneous_shape(T, "T")
    R = T[..., :3, :3]
    t = T[..., :3, 3:]  # (..., 3, 1)
    if _is_torch(T):
        Rt = R.transpose(-1, -2)
        top = torch.cat([Rt, -(Rt @ t)], dim=-1)  # (..., 3, 4)
        bottom = torch.zeros_like(T[..., 3:, :])  # (..., 1, 4)
        bottom[..., 0, 3] = 1.0
        return torch.cat([top, bottom], dim=-2)
    Rt = np.swapaxes(R, -1, -2)
    top = np.concatenate([Rt, -(Rt @ t)], axis=-1)
    bottom = np.zeros_like(T[..., 3:, :])
    bottom[..., 0, 3] = 1.0
    return np.concatenate([top, bottom], axis=-2)


def relative_to_first(c2w: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Re-express a trajectory in the frame of its first camera: ``P_i ← P_0⁻¹ · P_i``.

    Frame 0 is set to an exact identity (not computed as ``P_0⁻¹ P_0``), as the reference pipeline
    does, so the first camera carries no rounding noise.

    Args:
        c2w: ``(F, 4, 4)`` OpenCV camera-to-world poses, F ≥ 1.

    Returns:
        ``(F, 4, 4)`` relative poses, same kind, dtype and device as ``c2w``.
    """
    _check_homogeneous_shape(c2w, "c2w")
    if c2w.ndim != 3 or c2w.shape[0] < 1:
        raise ValueError(f"`c2w` must have shape (F, 4, 4) with F >= 1; got {tuple(c2w.shape)}.")
    first_inv = invert_se3(c2w[0])
    if _is_torch(c2w):
        eye = torch.eye(4, dtype=c2w.dtype, device=c2w.device)[None]
        return torch.cat([eye, first_inv @ c2w[1:]], dim=0)
    eye = np.eye(4, dtype=c2w.dtype)[None]
    return np.concatenate([eye, first_inv @ c2w[1:]], axis=0)


def _to_numpy_f64(x: Any, name: str) -> np.ndarray:
    if _is_torch(x):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"`{name}` must be a numeric array of shape (F, 4, 4); got {type(x).__name__}."
        ) from err


def validate_c2w(c2w: Any, name: str = "c2w", atol: float = 1e-3) -> None:
    """Raise ``ValueError`` unless ``c2w`` is a finite trajectory of rigid OpenCV c2w poses.

    Checks, in order: shape ``(F, 4, 4)`` with F ≥ 1; all values finite; last row ``[0, 0, 0, 1]``;
    ``RᵀR = I`` and ``det R = +1`` (a reflection or a scaled rotation is rejected), each within
    ``atol``. Messages name the argument, the offending frame index and the measured deviation.

    Args:
        c2w: ``(F, 4, 4)`` numpy array, torch tensor or nested sequence.
        name: the argument name to quote in error messages.
        atol: absolute tolerance for the last row and the rotation checks.

    Returns:
        None.
    """
    arr = _to_numpy_f64(c2w, name)
    if arr.ndim != 3 or arr.shape[1:] != (4, 4) or arr.shape[0] < 1:
        raise ValueError(
            f"`{name}` must have shape (F, 4, 4) with F >= 1 (camera-to-world poses); got {arr.shape}."
        )
    finite = np.isfinite(arr).all(axis=(1, 2))
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"`{name}` has non-finite values (NaN or inf) at frame {bad} "
            f"({int((~finite).sum())} of {arr.shape[0]} frames affected)."
        )
    row_err = np.abs(arr[:, 3, :] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    if (row_err > atol).any():
        bad = int(np.flatnonzero(row_err > atol)[0])
        raise ValueError(
            f"`{name}` frame {bad} has last row {arr[bad, 3].tolist()}; expected [0, 0, 0, 1] "
            f"(homogeneous rigid transform)."
        )
    R = arr[:, :3, :3]
    ortho_err = np.abs(np.swapaxes(R, 1, 2) @ R - np.eye(3)).max(axis=(1, 2))
    if (ortho_err > atol).any():
        bad = int(np.flatnonzero(ortho_err > atol)[0])
        raise ValueError(
            f"`{name}` frame {bad} has a non-rigid rotation block: max |RᵀR - I| = {ortho_err[bad]:.3g} "
            f"> atol {atol:g}. Expected an orthonormal rotation (no scale or shear); rescale "
            f"translations with scale_translation() instead of scaling R."
        )
    det = np.linalg.det(R)
    if (np.abs(det - 1.0) > atol).any():
        bad = int(np.flatnonzero(np.abs(det - 1.0) > atol)[0])
        raise ValueError(
            f"`{name}` frame {bad} has det(R) = {det[bad]:.6g}; expected +1 (a right-handed OpenCV "
            f"rotation, +X right, +Y down, +Z forward). det = -1 means a reflection, e.g. an "
            f"OpenGL/right-up-back pose that was not converted."
        )


def scale_translation(c2w: np.ndarray | torch.Tensor, scale: float) -> np.ndarray | torch.Tensor:
    """Multiply the translations of c2w poses by a metric scale factor (rotations untouched).

    Args:
        c2w: ``(..., 4, 4)`` poses.
        scale: finite positive scalar (e.g. metres per reconstruction unit).

    Returns:
        A new ``(..., 4, 4)`` array/tensor of the same kind and dtype; the input is not modified.
    """
    _check_homogeneous_shape(c2w, "c2w")
    try:
        s = float(scale)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`scale` must be a real scalar; got {scale!r}.") from err
    if not np.isfinite(s) or s <= 0.0:
        raise ValueError(f"`scale` must be a finite positive number; got {scale!r}.")
    out = c2w.clone() if _is_torch(c2w) else np.array(c2w, copy=True)
    out[..., :3, 3] = out[..., :3, 3] * s
    return out


# ---------------------------------------------------------------------------------------------------
# Turning the camera: the signs of yaw, pitch and roll, and the ground plane the camera walks on.
# The action DSL, the overlay that reads keys back from poses and the synthetic world all use these, so
# "turn right" and "look up" mean the same rotation everywhere. The world's +Y axis points down (the
# first camera's +Y), so the ground plane is y = 0 and yaw turns about world Y.
# ---------------------------------------------------------------------------------------------------


def rotation_angle(R_a: Any, R_b: Any) -> np.ndarray:
    """Geodesic angle in radians between rotations: the angle of M = R_aᵀ R_b.

    Computed as atan2(‖skew(M)‖ / 2, (tr M − 1) / 2), which equals the published
    ``arccos(clamp((tr(R_aᵀ R_b) − 1) / 2, −1, 1))`` but keeps full precision near 0 and π (the arccos alone
    turns a 1e-16 rounding of the trace into a 1e-8 rad angle).

    Args:
        R_a, R_b: ``(..., 3, 3)`` rotations (numpy or anything ``np.asarray`` takes), broadcastable.

    Returns:
        ``(...)`` float64 angles in [0, π].
    """
    R_a, R_b = np.asarray(R_a, dtype=np.float64), np.asarray(R_b, dtype=np.float64)
    M = np.swapaxes(R_a, -1, -2) @ R_b
    cos = (np.trace(M, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = np.stack([M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]], -1)
    return np.arctan2(np.linalg.norm(skew, axis=-1) / 2.0, cos)


def yaw_matrix(angle: float) -> np.ndarray:
    """``(3, 3)`` float64 rotation by ``angle`` radians about the world +Y axis.

    Positive yaw turns right: the forward axis +Z rotates toward +X, so a camera with rotation
    ``yaw_matrix(a)`` looks along ``(sin a, 0, cos a)``. Pre-multiply a camera rotation to turn it.
    """
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def pitch_matrix(angle: float) -> np.ndarray:
    """``(3, 3)`` float64 rotation by ``angle`` radians about the camera's +X axis.

    Positive pitch looks up: the forward axis +Z gains −Y (up, since +Y is down), giving
    ``(0, −sin a, cos a)``. Post-multiply a camera rotation to tilt it about its own X axis.
    """
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def roll_matrix(angle: float) -> np.ndarray:
    """``(3, 3)`` float64 rotation by ``angle`` radians about the optical axis +Z.

    Positive roll turns the camera's right axis +X toward +Y: its right side dips down. A camera
    rotation ``yaw_matrix(y) @ pitch_matrix(p) @ roll_matrix(r)`` has :func:`look_angles` ``(y, p)``
    for −π < y ≤ π and |p| < π/2.
    """
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def look_angles(c2w: Any) -> tuple[np.ndarray, np.ndarray]:
    """Yaw and pitch (radians) of each camera's optical axis f = R[:, 2], signed as :func:`yaw_matrix`
    and :func:`pitch_matrix`: yaw = atan2(f_x, f_z) (positive = turned right), pitch =
    atan2(−f_y, ‖(f_x, f_z)‖) (positive = looking up). Roll does not change them.

    Args:
        c2w: ``(..., 4, 4)`` or ``(..., 3, 3)`` camera-to-world poses or rotations.

    Returns:
        ``(yaw, pitch)``, each of shape ``(...)``, float64.
    """
    f = np.asarray(c2w, dtype=np.float64)[..., :3, 2]
    return np.arctan2(f[..., 0], f[..., 2]), np.arctan2(-f[..., 1], np.linalg.norm(f[..., [0, 2]], axis=-1))


def _ground_unit(v: np.ndarray) -> np.ndarray:
    h = v.copy()
    h[..., 1] = 0.0
    n = np.linalg.norm(h, axis=-1, keepdims=True)
    return np.where(n > 1e-12, h / np.maximum(n, 1e-12), 0.0)


def ground_axes(c2w: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each camera's forward (+Z) and right (+X) axes projected onto the ground plane y = 0 and normalised:
    the directions "forward" and "strafe right" move the camera in the action DSL.

    Args:
        c2w: ``(..., 4, 4)`` or ``(..., 3, 3)`` camera-to-world poses or rotations.

    Returns:
        ``(forward, right)``, each ``(..., 3)`` float64 unit vectors with y = 0 (zero where the axis is
        vertical).
    """
    R = np.asarray(c2w, dtype=np.float64)[..., :3, :3]
    return _ground_unit(R[..., :, 2]), _ground_unit(R[..., :, 0])
