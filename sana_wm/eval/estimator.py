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

__all__ = ["PoseEstimator", "PoseResultLike", "load_estimator"]


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
