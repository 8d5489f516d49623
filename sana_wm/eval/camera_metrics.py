"""Camera-accuracy metrics of a generated video's re-estimated trajectory against the requested one.

Two published conventions give different numbers for the same pair of trajectories, so both are computed
and every column name carries the convention, the unit and the reduction over frames:

``sana_wm`` (SANA-WM's evaluation)
    Both trajectories are made relative to their first frame (``P_j ← P_0⁻¹ P_j``). The estimate is then
    aligned to the ground truth on world-to-camera extrinsics ``[R | t]`` (a rotation, a scale and a
    translation fitted on the camera frames — not an Umeyama fit on camera centres):

    - ``M = mean_j R_gt,jᵀ R_est,j = U S Vᵀ`` and ``R_A = V Uᵀ`` (no reflection correction, as published);
    - ``a_j = R_est,jᵀ t_est,j``, ``b_j = R_est,jᵀ t_gt,j``;
      ``s = Σ (a_j − ā)·(b_j − b̄) / Σ ‖a_j − ā‖²``, ``T_A = b̄ − s ā``;
    - ``R′_j = R_est,j R_A``, ``t′_j = s t_est,j + R_est,j T_A``, inverted back to camera-to-world.

    RotErr (degrees), TransErr (camera centres, ground-truth units) and CamMC (Frobenius norm of the 3 × 4
    camera-to-world blocks) are **means over frames**, frame 0 included.

``cami2v`` (CamI2V / CameraCtrl evaluation)
    Both trajectories relative to their first frame; each trajectory's camera-to-world translations are
    divided by that trajectory's own largest translation norm (+1e-9); no other alignment. RotErr
    (**radians**), TransErr and CamMC are **sums over frames**.

Columns: ``rot_err_deg_mean[sana_wm]``, ``trans_err_mean[sana_wm]``, ``cammc_mean[sana_wm]``,
``align_scale[sana_wm]`` (the fitted ``s``), ``rot_err_rad_sum[cami2v]``, ``trans_err_sum[cami2v]``,
``cammc_sum[cami2v]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sana_wm.camera import invert_se3, relative_to_first, rotation_angle, validate_c2w

__all__ = [
    "CONVENTIONS",
    "METRIC_COLUMNS",
    "align_extrinsics",
    "camera_metrics",
    "cami2v_metrics",
    "sana_wm_metrics",
]

CONVENTIONS = ("sana_wm", "cami2v")
METRIC_COLUMNS = {
    "sana_wm": (
        "rot_err_deg_mean[sana_wm]",
        "trans_err_mean[sana_wm]",
        "cammc_mean[sana_wm]",
        "align_scale[sana_wm]",
    ),
    "cami2v": ("rot_err_rad_sum[cami2v]", "trans_err_sum[cami2v]", "cammc_sum[cami2v]"),
}
# Guards the scale fit of a trajectory whose camera centres do not move (Σ‖a − ā‖² = 0).
_SCALE_EPS = 1e-12


def _as_trajectories(c2w_gt: Any, c2w_est: Any) -> tuple[np.ndarray, np.ndarray]:
    validate_c2w(c2w_gt, "c2w_gt")
    validate_c2w(c2w_est, "c2w_est")
    gt = np.asarray(c2w_gt.detach().cpu() if hasattr(c2w_gt, "detach") else c2w_gt, dtype=np.float64)
    est = np.asarray(c2w_est.detach().cpu() if hasattr(c2w_est, "detach") else c2w_est, dtype=np.float64)
    if gt.shape != est.shape:
        raise ValueError(
            f"c2w_gt and c2w_est must have the same (F, 4, 4) shape (one estimated pose per ground-truth "
            f"frame); got {gt.shape} and {est.shape}."
        )
    return gt, est


def align_extrinsics(c2w_gt: np.ndarray, c2w_est: np.ndarray) -> tuple[np.ndarray, float]:
    """Align ``c2w_est`` to ``c2w_gt`` on world-to-camera extrinsics (the ``sana_wm`` rule, module docstring).

    Args:
        c2w_gt, c2w_est: ``(F, 4, 4)`` float64 camera-to-world trajectories (already relativised).

    Returns:
        (aligned ``(F, 4, 4)`` camera-to-world estimate, fitted scale ``s``).
    """
    w2c_gt, w2c_est = invert_se3(c2w_gt), invert_se3(c2w_est)
    R_gt, t_gt = w2c_gt[:, :3, :3], w2c_gt[:, :3, 3]
    R_est, t_est = w2c_est[:, :3, :3], w2c_est[:, :3, 3]
    M = (np.swapaxes(R_gt, 1, 2) @ R_est).mean(axis=0)
    U, _, Vt = np.linalg.svd(M)
    R_A = Vt.T @ U.T
    R_est_T = np.swapaxes(R_est, 1, 2)
    a = np.einsum("fij,fj->fi", R_est_T, t_est)
    b = np.einsum("fij,fj->fi", R_est_T, t_gt)
    da, db = a - a.mean(axis=0), b - b.mean(axis=0)
    s = float((da * db).sum() / max(float((da * da).sum()), _SCALE_EPS))
    T_A = b.mean(axis=0) - s * a.mean(axis=0)
    aligned = np.tile(np.eye(4), (len(c2w_est), 1, 1))
    aligned[:, :3, :3] = R_est @ R_A
    aligned[:, :3, 3] = s * t_est + np.einsum("fij,j->fi", R_est, T_A)
    return invert_se3(aligned), s


def sana_wm_metrics(c2w_gt: Any, c2w_est: Any) -> dict[str, float]:
    """``sana_wm`` convention: relativise, align extrinsics, means over frames, degrees."""
    gt, est = _as_trajectories(c2w_gt, c2w_est)
    gt, est = relative_to_first(gt), relative_to_first(est)
    aligned, s = align_extrinsics(gt, est)
    rot = np.degrees(rotation_angle(gt[:, :3, :3], aligned[:, :3, :3]))
    trans = np.linalg.norm(gt[:, :3, 3] - aligned[:, :3, 3], axis=-1)
    cammc = np.linalg.norm((gt[:, :3, :] - aligned[:, :3, :]).reshape(len(gt), -1), axis=-1)
    names = METRIC_COLUMNS["sana_wm"]
    return {names[0]: float(rot.mean()), names[1]: float(trans.mean()), names[2]: float(cammc.mean()),
            names[3]: s}


def _self_normalised(c2w: np.ndarray) -> np.ndarray:
    out = c2w.copy()
    out[:, :3, 3] /= np.linalg.norm(c2w[:, :3, 3], axis=-1).max() + 1e-9
    return out


def cami2v_metrics(c2w_gt: Any, c2w_est: Any) -> dict[str, float]:
    """``cami2v`` convention: relativise, self-normalise translations by max norm, sums over frames, radians."""
    gt, est = _as_trajectories(c2w_gt, c2w_est)
    gt, est = _self_normalised(relative_to_first(gt)), _self_normalised(relative_to_first(est))
    rot = rotation_angle(gt[:, :3, :3], est[:, :3, :3])
    trans = np.linalg.norm(gt[:, :3, 3] - est[:, :3, 3], axis=-1)
    cammc = np.linalg.norm((gt[:, :3, :] - est[:, :3, :]).reshape(len(gt), -1), axis=-1)
    names = METRIC_COLUMNS["cami2v"]
    return {names[0]: float(rot.sum()), names[1]: float(trans.sum()), names[2]: float(cammc.sum())}


def camera_metrics(
    c2w_gt: Any, c2w_est: Any, conventions: tuple[str, ...] | list[str] = CONVENTIONS
) -> dict[str, float]:
    """Every requested convention's columns for one trajectory pair (see the module docstring).

    Args:
        c2w_gt: ``(F, 4, 4)`` requested OpenCV camera-to-world poses at the estimated frames.
        c2w_est: ``(F, 4, 4)`` poses re-estimated from the generated video, same frames.
        conventions: any of ``CONVENTIONS``.

    Returns:
        column name → value.
    """
    out: dict[str, float] = {}
    for conv in conventions:
        if conv == "sana_wm":
            out.update(sana_wm_metrics(c2w_gt, c2w_est))
        elif conv == "cami2v":
            out.update(cami2v_metrics(c2w_gt, c2w_est))
        else:
            raise ValueError(f"unknown camera-metric convention {conv!r}; expected one of {CONVENTIONS}.")
    return out
