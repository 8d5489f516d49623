"""Trajectory geometry for annotation: Sim(3) fits, applying them to poses, and accuracy metrics.

Poses follow the project convention (``sana_wm.camera``): OpenCV camera-to-world 4×4 matrices. A
similarity ``(s, R, t)`` maps a point ``x`` to ``s·R·x + t``; applied to a camera-to-world pose it
rotates the camera (``R·R_c``) and moves its centre (``s·R·c + t``).

All functions take and return float64 numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Sim3",
    "umeyama_sim3",
    "apply_sim3",
    "align_trajectories",
    "rotation_angle_deg",
    "trajectory_errors",
    "interpolate_poses",
]


@dataclass(frozen=True)
class Sim3:
    """x ↦ scale · R · x + t."""

    scale: float
    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,)

    def points(self, x: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(x, np.float64) @ self.R.T + self.t


def umeyama_sim3(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
                 with_scale: bool = True) -> Sim3:
    """Least-squares similarity with ``dst ≈ s·R·src + t`` (Umeyama 1991), optionally weighted.

    Args:
        src, dst: ``(M, 3)`` corresponding points.
        weights: ``(M,)`` non-negative weights (default: all 1).
        with_scale: fit ``s`` (else ``s = 1``, a rigid fit).

    Raises:
        ValueError: on mismatched shapes, fewer than 3 weighted points, or a degenerate (single-point) source.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"`src` and `dst` must both be (M, 3); got {src.shape} and {dst.shape}.")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if w.shape != (len(src),) or (w < 0).any():
        raise ValueError(f"`weights` must be ({len(src)},) and non-negative; got shape {w.shape}.")
    if (w > 0).sum() < 3:
        raise ValueError(f"a Sim(3) fit needs at least 3 weighted points; got {int((w > 0).sum())}.")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    var_s = float(w @ (xs**2).sum(1))
    if var_s < 1e-18:
        raise ValueError("the source points of a Sim(3) fit all coincide; scale and rotation are undefined.")
    cov = (xd * w[:, None]).T @ xs  # Σ w · d sᵀ
    U, S, Vt = np.linalg.svd(cov)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0])
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / var_s) if with_scale else 1.0
    return Sim3(s, R, mu_d - s * R @ mu_s)


def apply_sim3(sim: Sim3, c2w: np.ndarray) -> np.ndarray:
    """Move ``(N, 4, 4)`` camera-to-world poses by a similarity: R ← R_s·R, c ← s·R_s·c + t."""
    c2w = np.asarray(c2w, np.float64)
    out = c2w.copy()
    out[..., :3, :3] = sim.R @ c2w[..., :3, :3]
    out[..., :3, 3] = sim.points(c2w[..., :3, 3])
    return out


def align_trajectories(est: np.ndarray, gt: np.ndarray, with_scale: bool = True) -> tuple[np.ndarray, Sim3]:
    """Align estimated camera-to-world poses to ground truth by one similarity.

    The rotation is fitted to the cameras' orientations (argmax Σ tr(R_gt,j · (R·R_est,j)ᵀ), by SVD), then
    scale and translation to the camera centres by least squares. A fit of the centres alone (Umeyama)
    leaves the rotation about the path undetermined for the nearly straight paths of short clips.

    Returns:
        the aligned ``(N, 4, 4)`` poses and the similarity used.
    """
    est = np.asarray(est, np.float64)
    gt = np.asarray(gt, np.float64)
    if est.shape != gt.shape or est.ndim != 3 or est.shape[1:] != (4, 4) or len(est) < 1:
        raise ValueError(f"`est` and `gt` must both be (N, 4, 4) with N ≥ 1; got {est.shape} and {gt.shape}.")
    M = np.einsum("nij,nkj->ik", gt[:, :3, :3], est[:, :3, :3])  # Σ R_gt R_estᵀ
    U, _, Vt = np.linalg.svd(M)
    R = U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt)) or 1.0]) @ Vt
    rc = est[:, :3, 3] @ R.T
    c_gt = gt[:, :3, 3]
    d_est, d_gt = rc - rc.mean(0), c_gt - c_gt.mean(0)
    denom = float((d_est**2).sum())
    s = float((d_est * d_gt).sum() / denom) if (with_scale and denom > 1e-18) else 1.0
    sim = Sim3(s, R, c_gt.mean(0) - s * rc.mean(0))
    return apply_sim3(sim, est), sim


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) between rotations ``(..., 3, 3)``: ``sana_wm.camera.rotation_angle`` in degrees."""
    from sana_wm.camera import rotation_angle

    return np.degrees(rotation_angle(Ra, Rb))


def trajectory_errors(est: np.ndarray, gt: np.ndarray, with_scale: bool = True) -> dict[str, float]:
    """Accuracy of an estimated trajectory against ground truth, after a Sim(3) alignment of the centres.

    Returns a dict with ``ate_rmse`` (RMS camera-centre error, ground-truth units), ``ate_max``,
    ``rot_mean_deg`` / ``rot_max_deg`` (absolute rotation error after alignment), ``rel_rot_mean_deg``
    (error of frame-to-frame relative rotations, alignment-free), the fitted ``scale`` and
    ``path_length`` (ground-truth centre path length, to put the ATE in proportion).
    """
    aligned, sim = align_trajectories(est, gt, with_scale)
    gt = np.asarray(gt, np.float64)
    err = np.linalg.norm(aligned[:, :3, 3] - gt[:, :3, 3], axis=1)
    rot = rotation_angle_deg(aligned[:, :3, :3], gt[:, :3, :3])
    rel_e = np.swapaxes(est[:-1, :3, :3], -1, -2) @ est[1:, :3, :3]
    rel_g = np.swapaxes(gt[:-1, :3, :3], -1, -2) @ gt[1:, :3, :3]
    rel = rotation_angle_deg(rel_e, rel_g) if len(gt) > 1 else np.zeros(1)
    return {
        "ate_rmse": float(np.sqrt((err**2).mean())),
        "ate_max": float(err.max()),
        "rot_mean_deg": float(rot.mean()),
        "rot_max_deg": float(rot.max()),
        "rel_rot_mean_deg": float(rel.mean()),
        "scale": float(sim.scale),
        "path_length": float(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1).sum()),
    }


def _rot_to_quat(R: np.ndarray) -> np.ndarray:
    """(…, 3, 3) rotations → (…, 4) unit quaternions (w, x, y, z), w ≥ 0."""
    m = R.reshape(-1, 3, 3)
    q = np.empty((len(m), 4))
    for i, r in enumerate(m):
        # Shepperd's method: divide by the largest of the four candidate components
        cand = np.array([1 + np.trace(r), 1 + r[0, 0] - r[1, 1] - r[2, 2], 1 - r[0, 0] + r[1, 1] - r[2, 2],
                         1 - r[0, 0] - r[1, 1] + r[2, 2]])
        k = int(np.argmax(cand))
        s = 2.0 * np.sqrt(max(cand[k], 1e-300))
        if k == 0:
            q[i] = [s / 4, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
        elif k == 1:
            q[i] = [(r[2, 1] - r[1, 2]) / s, s / 4, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
        elif k == 2:
            q[i] = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, s / 4, (r[1, 2] + r[2, 1]) / s]
        else:
            q[i] = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, s / 4]
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).reshape(*R.shape[:-2], 4)


def _quat_to_rot(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def interpolate_poses(c2w: np.ndarray, known: np.ndarray, num_frames: int) -> np.ndarray:
    """Poses for frames ``0 … num_frames−1`` from poses ``c2w`` (M, 4, 4) known at sorted frame indices
    ``known`` (M,): rotations by slerp and centres linearly between neighbours, held constant before the
    first and after the last known frame."""
    c2w = np.asarray(c2w, np.float64)
    known = np.asarray(known, np.int64)
    if len(known) < 1 or len(known) != len(c2w) or (np.diff(known) <= 0).any():
        raise ValueError(f"`known` must be strictly increasing frame indices, one per pose; got {known.tolist()}.")
    out = np.tile(np.eye(4), (num_frames, 1, 1))
    q = _rot_to_quat(c2w[:, :3, :3])
    for f in range(num_frames):
        j = int(np.searchsorted(known, f))
        if j < len(known) and known[j] == f:
            out[f] = c2w[j]
            continue
        if j == 0 or j == len(known):
            out[f] = c2w[min(j, len(known) - 1)]
            continue
        a, b = j - 1, j
        u = (f - known[a]) / (known[b] - known[a])
        qa, qb = q[a], q[b] * (1.0 if q[a] @ q[b] >= 0 else -1.0)
        theta = np.arccos(np.clip(qa @ qb, -1.0, 1.0))
        if theta < 1e-9:
            qf = qa
        else:
            qf = (np.sin((1 - u) * theta) * qa + np.sin(u * theta) * qb) / np.sin(theta)
        out[f, :3, :3] = _quat_to_rot(qf)
        out[f, :3, 3] = (1 - u) * c2w[a, :3, 3] + u * c2w[b, :3, 3]
    return out
