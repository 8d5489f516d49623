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


class GroundTruthPipeline:
    """Stands in for ``SanaWMPipeline`` in a sweep: each case "generates" its own ground-truth video (the case is
    found by its requested trajectory), so the camera columns measure the pose estimator on real footage alone."""

    def __init__(self, bench_root):
        from sana_wm.eval.bench_set import load_bench_set

        self.cases = [c for c in load_bench_set(bench_root).cases if c.gt_video is not None]
        if not self.cases:
            raise ValueError(f"GroundTruthPipeline: no case with ground truth under {bench_root}")
        self.height, self.width = self.cases[0].gt_video.shape[1:3]

    def generate(self, image, prompt, c2w, intrinsics, num_frames, fps=16.0, **_):
        import torch

        from sana_wm.inference.pipeline import GenerationResult

        n = int(num_frames)
        c2w = np.asarray(c2w)[:n]
        matches = [c for c in self.cases if len(c.c2w) >= n and np.array_equal(c.c2w[:n], c2w)]
        if len(matches) != 1:
            raise ValueError(f"GroundTruthPipeline: {len(matches)} cases request this trajectory; expected 1")
        case = matches[0]
        return GenerationResult(video=case.gt_video[:n], latents=torch.zeros(1), stage1_latents=torch.zeros(1),
                                c2w=c2w, intrinsics=case.intrinsics[:n], num_frames=n, frame_offset=0,
                                refined=False, fps=float(fps))
