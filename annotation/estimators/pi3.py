"""Pi3 / Pi3X as a pose estimator (weights from a local folder; CC BY-NC 4.0, non-commercial)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotation.estimators.base import EstimationError, PoseResult, check_frames, known_K
from annotation.geometry import interpolate_poses
from annotation.models.pi3 import WEIGHTS_LICENCE, Pi3, load_pi3, predict

__all__ = ["Pi3Estimator", "IMPLEMENTATION_VERSION"]

#: bumped when this implementation's outputs change for the same weights
IMPLEMENTATION_VERSION = "1"


class Pi3Estimator:
    """Poses, intrinsics and (Pi3X) metric scale from Pi3 or Pi3X.

    Args:
        weights: folder with the official ``model.safetensors`` (+ ``config.json``), or the file itself.
        variant: 'pi3x' (metric scale) or 'pi3' (relative scale).
        device: 'cuda', 'cpu', … (default: CUDA when available).
        frame_budget, overlap: frames per forward pass and the overlap of consecutive chunks.
        stride: run the model on every ``stride``-th frame (and the last) and interpolate the poses of
            the others (slerp / linear); their confidence is 0. Intrinsics of skipped frames copy the
            nearest estimated frame.
        principal_point: 'centre' or 'fit' (see ``intrinsics_from_points``).
        multimodal: load Pi3X's prior branch, so that known intrinsics condition the model.
        pixel_limit: the model's input area (the reference 255 000; frames are resized to it, up or down).
        model: an already built model (tests); ``weights`` is then only recorded.

    Confidence: the mean sigmoid confidence of a frame's pixels.
    """

    licence = WEIGHTS_LICENCE

    def __init__(self, weights: str | Path | None, variant: str = "pi3x", device: str | None = None,
                 frame_budget: int = 64, overlap: int = 8, stride: int = 1, principal_point: str = "centre",
                 multimodal: bool = False, pixel_limit: int = 255_000, model: Pi3 | None = None):
        if stride < 1:
            raise ValueError(f"`stride` must be ≥ 1; got {stride}.")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None:
            if weights is None:
                raise ValueError(f"the {variant} estimator needs `weights`: a folder with the official "
                                 "model.safetensors (+ config.json); or choose the weight-free 'colmap' estimator.")
            model = load_pi3(weights, variant, multimodal=multimodal, device=self.device)
        if model.cfg.variant != variant:
            raise ValueError(f"the model given is {model.cfg.variant!r}, not {variant!r}.")
        self.model = model.to(self.device).eval()
        self.variant, self.weights = variant, None if weights is None else str(weights)
        self.frame_budget, self.overlap, self.stride = int(frame_budget), int(overlap), int(stride)
        self.principal_point, self.pixel_limit = principal_point, int(pixel_limit)
        self.name = variant
        self.version = f"{variant}-impl{IMPLEMENTATION_VERSION}"

    def estimate(self, frames: np.ndarray, fps: float, known_intrinsics: Any = None) -> PoseResult:
        """Cameras of ``frames`` (N, H, W, 3) uint8. With ``known_intrinsics`` the returned K is the given one;
        a multimodal Pi3X also takes them as its intrinsics prior, other models estimate the poses without."""
        frames = check_frames(frames)
        N = len(frames)
        K_known = known_K(known_intrinsics, N)
        keep = np.unique(np.r_[np.arange(0, N, self.stride), N - 1])
        prior = K_known[keep] if (K_known is not None and self.model.cfg.multimodal) else None
        pred = predict(self.model, frames[keep], frame_budget=self.frame_budget, overlap=self.overlap,
                       principal_point=self.principal_point, pixel_limit=self.pixel_limit, device=self.device,
                       known_K=prior)
        if not (np.isfinite(pred.c2w).all() and np.isfinite(pred.K).all()):
            raise EstimationError("estimator_failed", f"{self.name} produced non-finite poses or intrinsics.")
        c2w = interpolate_poses(pred.c2w, keep, N)
        nearest = np.abs(np.arange(N)[:, None] - keep[None]).argmin(1)
        K = pred.K[nearest] if K_known is None else K_known
        confidence = np.zeros(N)
        confidence[keep] = pred.confidence
        metric = self.variant == "pi3x"
        return PoseResult(
            c2w=c2w, K=K, confidence=confidence, scale=1.0, scale_kind="metric" if metric else "relative",
            estimator=self.name, version=self.version, licence=self.licence,
            info={"weights": self.weights, "metric_factor": pred.metric, "chunks": [list(c) for c in pred.chunks],
                  "working_hw": list(pred.working_hw), "stride": self.stride,
                  "intrinsics": ("given, as prior" if prior is not None else "given") if K_known is not None
                  else f"rays ({self.principal_point})"},
        )
