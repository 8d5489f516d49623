"""Stub pose estimators for the evaluation tests (the real ones live in the annotation package)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class StubPoseResult:
    c2w: np.ndarray


class ForwardTrackEstimator:
    """Returns a straight forward track (c_j = (0, 0, step·j), R = I) for the N given frames, whatever they show.

    ``raise_at_fps``: raise ``RuntimeError`` for clips at that frame rate (a failing estimator, per case).
    """

    def __init__(self, step: float = 0.1, raise_at_fps: float | None = None):
        self.step, self.raise_at_fps = float(step), raise_at_fps
        self.calls: list[tuple[int, float, Any]] = []

    def estimate(self, frames: np.ndarray, fps: float, known_intrinsics: Any = None) -> StubPoseResult:
        self.calls.append((len(frames), float(fps), known_intrinsics))
        if self.raise_at_fps is not None and float(fps) == float(self.raise_at_fps):
            raise RuntimeError(f"stub estimator: no poses at {fps} fps")
        c2w = np.tile(np.eye(4), (len(frames), 1, 1))
        c2w[:, 2, 3] = self.step * np.arange(len(frames))
        return StubPoseResult(c2w)


def forward_track(frames: int, step: float = 0.1) -> np.ndarray:
    """The trajectory :class:`ForwardTrackEstimator` returns, for writing matching benchmark cases."""
    return ForwardTrackEstimator(step).estimate(np.zeros((frames, 1, 1, 3), np.uint8), 1.0).c2w
