"""Quality filters for annotated clips: scores and rejection reasons from poses, intrinsics and confidence."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotation.estimators.base import PoseResult
from annotation.geometry import rotation_angle_deg

__all__ = ["QualityConfig", "assess", "horizontal_fov_deg"]


@dataclass
class QualityConfig:
    """Thresholds (see :func:`assess`).

    Attributes:
        fov_min_deg, fov_max_deg: allowed horizontal field of view.
        min_frames: shortest clip kept.
        min_confidence: lowest mean per-frame confidence kept.
        max_rot_step_deg: largest rotation between consecutive frames.
        jump_factor: a translation step larger than this × the median step (and than ``jump_min``, in
            metres when the scale is known, else in the estimator's units) is a jump.
        jump_min: see ``jump_factor``.
        min_motion_m: with a metric or user scale, a clip whose path is shorter than this and that turns
            less than ``min_rotation_deg`` is static.
        min_rotation_deg: see ``min_motion_m``.
        max_speed_mps: with a metric or user scale, a faster mean speed is rejected.
    """

    fov_min_deg: float = 25.0
    fov_max_deg: float = 120.0
    min_frames: int = 17
    min_confidence: float = 0.2
    max_rot_step_deg: float = 15.0
    jump_factor: float = 8.0
    jump_min: float = 0.05
    min_motion_m: float = 0.05
    min_rotation_deg: float = 2.0
    max_speed_mps: float = 30.0


def horizontal_fov_deg(K: np.ndarray, width: int) -> np.ndarray:
    """Horizontal field of view in degrees of (…, 3, 3) intrinsics for frames ``width`` pixels wide."""
    from sana_wm.camera import fov_deg

    return fov_deg(K, 1, width)[0]


def assess(result: PoseResult, width: int, fps: float, cfg: QualityConfig) -> tuple[dict[str, Any], list[str]]:
    """Scores of a clip and the reasons to reject it (empty = keep).

    Reasons: ``too_short``, ``fov`` (horizontal FOV of any frame outside the range), ``low_confidence``,
    ``pose_jump`` (a rotation step over ``max_rot_step_deg`` or a translation step over
    ``jump_factor`` × the median step), ``static`` and ``too_fast`` (only with a known scale).
    """
    c2w, K = result.c2w, result.K
    n = len(c2w)
    fov = horizontal_fov_deg(K, width)
    steps = np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1) * result.scale
    rot_steps = rotation_angle_deg(c2w[:-1, :3, :3], c2w[1:, :3, :3]) if n > 1 else np.zeros(0)
    path = float(steps.sum())
    total_rot = float(rotation_angle_deg(c2w[0, :3, :3], c2w[-1, :3, :3])) if n > 1 else 0.0
    median_step = float(np.median(steps)) if len(steps) else 0.0
    scores = {
        "frames": n,
        "hfov_deg": [round(float(fov.min()), 3), round(float(fov.max()), 3)],
        "mean_confidence": round(float(result.confidence.mean()), 4),
        "max_rot_step_deg": round(float(rot_steps.max()) if len(rot_steps) else 0.0, 4),
        "max_step_over_median": round(float(steps.max() / median_step) if median_step > 0 else 0.0, 3),
        "path_length": round(path, 6),
        "rotation_deg": round(total_rot, 4),
        "speed": round(path / max((n - 1) / fps, 1e-9), 6) if n > 1 else 0.0,
        "scale_kind": result.scale_kind,
    }
    reasons = []
    if n < cfg.min_frames:
        reasons.append("too_short")
    if fov.min() < cfg.fov_min_deg or fov.max() > cfg.fov_max_deg or not np.isfinite(fov).all():
        reasons.append("fov")
    if result.confidence.mean() < cfg.min_confidence:
        reasons.append("low_confidence")
    jump_min = cfg.jump_min
    if len(rot_steps) and (rot_steps.max() > cfg.max_rot_step_deg or (
            median_step > 0 and (steps > max(cfg.jump_factor * median_step, jump_min)).any())):
        reasons.append("pose_jump")
    if result.scale_kind != "relative" and n > 1:
        if path < cfg.min_motion_m and total_rot < cfg.min_rotation_deg:
            reasons.append("static")
        if scores["speed"] > cfg.max_speed_mps:
            reasons.append("too_fast")
    if not math.isfinite(path):
        reasons.append("invalid")
    return scores, reasons
