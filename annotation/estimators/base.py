"""The estimator interface: ``estimate(frames, fps, known_intrinsics=None) -> PoseResult``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["PoseResult", "PoseEstimator", "EstimationError", "SCALE_KINDS", "check_frames", "known_K"]

#: 'metric': translations in metres; 'relative': arbitrary units (scale 1.0, unknown);
#: 'user': arbitrary units times a scale the user gave.
SCALE_KINDS = ("metric", "relative", "user")


class EstimationError(RuntimeError):
    """An estimator could not produce poses for a clip; ``reason`` is a short code for summaries."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class PoseResult:
    """Per-frame cameras of one clip.

    Attributes:
        c2w: (N, 4, 4) float64 camera-to-world, OpenCV (+X right, +Y down, +Z forward).
        K: (N, 3, 3) float64 intrinsics in integer-index pixels of the input frames (pixel centres at
            integer coordinates, as ``sana_wm.camera``).
        confidence: (N,) in [0, 1]; the estimator's per-frame confidence (see each estimator).
        scale: metres per unit of ``c2w`` translation (1.0 for 'metric'; 1.0 = unknown for 'relative').
        scale_kind: one of :data:`SCALE_KINDS`.
        estimator, version, licence: what produced the result and the licence of its weights.
        info: estimator-specific details (chunks, mapper, registered frames, metric factor …).
    """

    c2w: np.ndarray
    K: np.ndarray
    confidence: np.ndarray
    scale: float
    scale_kind: str
    estimator: str
    version: str
    licence: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.c2w = np.asarray(self.c2w, np.float64)
        self.K = np.asarray(self.K, np.float64)
        self.confidence = np.asarray(self.confidence, np.float64)
        n = len(self.c2w)
        if self.c2w.shape != (n, 4, 4) or n < 1:
            raise ValueError(f"PoseResult.c2w must be (N, 4, 4) with N ≥ 1; got {self.c2w.shape}.")
        if self.K.shape != (n, 3, 3):
            raise ValueError(f"PoseResult.K must be ({n}, 3, 3); got {self.K.shape}.")
        if self.confidence.shape != (n,):
            raise ValueError(f"PoseResult.confidence must be ({n},); got {self.confidence.shape}.")
        if not (np.isfinite(self.c2w).all() and np.isfinite(self.K).all()):
            raise ValueError("PoseResult has non-finite poses or intrinsics.")
        if self.scale_kind not in SCALE_KINDS:
            raise ValueError(f"PoseResult.scale_kind must be one of {SCALE_KINDS}; got {self.scale_kind!r}.")
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise ValueError(f"PoseResult.scale must be a positive number; got {self.scale!r}.")

    def record(self) -> dict[str, Any]:
        """The json-able provenance block stored with every annotated clip."""
        return {
            "estimator": self.estimator,
            "version": self.version,
            "licence": self.licence,
            "scale": float(self.scale),
            "scale_kind": self.scale_kind,
            "info": self.info,
        }


class PoseEstimator(Protocol):
    name: str
    version: str
    licence: str

    def estimate(self, frames: np.ndarray, fps: float, known_intrinsics: Any = None) -> PoseResult: ...


def check_frames(frames: Any) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 1:
        raise ValueError(f"`frames` must be (N, H, W, 3) uint8 RGB with N ≥ 1; got {frames.shape} {frames.dtype}.")
    return frames


def known_K(known_intrinsics: Any, num_frames: int) -> np.ndarray | None:
    """User intrinsics → (N, 3, 3) pinhole matrices, or None.

    Accepted: [fx, fy, cx, cy], a 3×3 K, or one of either per frame, in integer-index pixels of the frames —
    read by ``sana_wm.camera``, the one owner of the camera convention (it loads no model code).
    """
    if known_intrinsics is None:
        return None
    from sana_wm.camera import as_fxfycxcy, intrinsics_matrix

    return intrinsics_matrix(as_fxfycxcy(known_intrinsics, num_frames, name="known_intrinsics"))
