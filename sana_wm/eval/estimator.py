"""The pose-estimator dependency of the camera metrics, as a protocol.

The annotation package's estimators (Pi3 for the ``sana_wm`` convention, the COLMAP backend for ``cami2v``)
implement ``estimate(frames, fps, known_intrinsics=None) -> PoseResult``; evaluation needs only the result's
``c2w`` (N, 4, 4), one OpenCV camera-to-world pose per given frame. Estimators are named in the eval config
as ``"package.module:factory"`` plus keyword arguments, so this package imports no estimator code.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

__all__ = ["PoseEstimator", "PoseResultLike", "camera_accuracy", "load_estimator"]


class PoseResultLike(Protocol):
    c2w: np.ndarray


class PoseEstimator(Protocol):
    def estimate(self, frames: np.ndarray, fps: float, known_intrinsics: Any = None) -> PoseResultLike: ...


def load_estimator(target: str, kwargs: dict[str, Any] | None = None) -> PoseEstimator:
    """Import ``"module:attr"`` and call it with ``kwargs``; the result must have an ``estimate`` method."""
    module_name, sep, attr = str(target).partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"estimator target must look like 'package.module:factory'; got {target!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"estimator target {target!r} cannot be imported: {err}") from err
    estimator = factory(**(kwargs or {}))
    if not callable(getattr(estimator, "estimate", None)):
        raise ValueError(f"estimator target {target!r} returned {type(estimator).__name__}, which has no estimate()")
    return estimator


def camera_accuracy(
    estimator: PoseEstimator,
    video: np.ndarray,
    c2w: np.ndarray,
    intrinsics: np.ndarray,
    fps: float,
    *,
    interval: int = 1,
    trials: int = 1,
    conventions: tuple[str, ...] = ("sana_wm", "cami2v"),
) -> dict[str, float]:
    """Re-estimate a generated video's cameras and score them against the requested ones.

    Every ``interval``-th frame (from 0) goes to the estimator, at ``fps / interval``, with the known per-frame
    intrinsics; the metric columns (:mod:`sana_wm.eval.camera_metrics`) are averaged over ``trials`` runs.

    Args:
        video: ``(F, H, W, 3)`` uint8 generated frames.
        c2w: ``(F, 4, 4)`` requested poses aligned with ``video`` (``GenerationResult.c2w``).
        intrinsics: ``(F, 4)`` [fx, fy, cx, cy] in pixels of ``video`` (``GenerationResult.intrinsics``).

    Raises:
        whatever the estimator raises (callers report it per case).
    """
    from sana_wm.eval.camera_metrics import camera_metrics

    if interval < 1 or trials < 1:
        raise ValueError(f"interval and trials must be >= 1; got interval={interval}, trials={trials}")
    idx = np.arange(0, len(video), interval)
    runs = []
    for _ in range(trials):
        poses = estimator.estimate(video[idx], fps / interval, known_intrinsics=np.asarray(intrinsics)[idx])
        runs.append(camera_metrics(np.asarray(c2w)[idx], np.asarray(poses.c2w), conventions=conventions))
    return {name: float(np.mean([r[name] for r in runs])) for name in runs[0]}
