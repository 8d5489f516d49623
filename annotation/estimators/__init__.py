"""Pose estimators behind one interface: ``estimate(frames, fps, known_intrinsics=None) -> PoseResult``.

* ``'pi3x'`` / ``'pi3'``: the feed-forward models of :mod:`annotation.models.pi3` (weights CC BY-NC 4.0,
  non-commercial; read from a configured local folder).
* ``'colmap'``: weight-free structure from motion with pycolmap (relative scale); the default when no
  weights are configured.
"""

from __future__ import annotations

from typing import Any

from annotation.estimators.base import SCALE_KINDS, EstimationError, PoseEstimator, PoseResult

__all__ = ["PoseResult", "PoseEstimator", "EstimationError", "SCALE_KINDS", "ESTIMATORS", "build_estimator"]

ESTIMATORS = ("colmap", "pi3x", "pi3")


def build_estimator(name: str | None = None, weights: str | None = None, **options: Any) -> PoseEstimator:
    """The estimator ``name``; with ``name=None``, 'colmap' unless ``weights`` are given (then 'pi3x')."""
    if name is None:
        name = "pi3x" if weights else "colmap"
    if name == "colmap":
        if weights:
            raise ValueError("the 'colmap' estimator takes no weights; unset `weights` or choose 'pi3x' / 'pi3'.")
        from annotation.estimators.colmap import ColmapEstimator

        return ColmapEstimator(**options)
    if name in ("pi3x", "pi3"):
        from annotation.estimators.pi3 import Pi3Estimator

        return Pi3Estimator(weights, variant=name, **options)
    raise ValueError(f"unknown estimator {name!r}; expected one of {ESTIMATORS}.")
