"""Long clips in overlapping windows: estimate each window, stitch them by Sim(3) fits on the overlaps.

Any estimator works on a window (COLMAP, Pi3 / Pi3X): its poses come in a frame, orientation and (for a
relative scale) unit of its own. Windows are stitched in order. Window ``k`` is brought onto the
trajectory stitched so far by one similarity fitted on the frames both cover
(:func:`annotation.geometry.align_trajectories`: rotation from the overlapping orientations, scale and
translation from the overlapping camera centres), then supplies the frames from the middle of that
overlap on (the earlier window keeps the first half). The stitched trajectory is in the first window's
frame.

A window whose overlap disagrees with the stitched trajectory after the fit rejects the clip
(:class:`~annotation.estimators.EstimationError`, reason ``stitch_residual``): its RMS camera-centre misfit
relative to the RMS spread of the overlap's centres, or its largest rotation misfit, is over the limit.
An overlap whose camera centres do not spread (no translation to fit a scale on) rejects it as
``stitch_degenerate``.

Intrinsics: given intrinsics pass through unchanged. Estimated ones are combined into one K for the
clip, each entry the confidence-weighted median over every (window, frame) estimate (plain median when no
frame has confidence), so a frame seen by two windows counts twice and a window of interpolated frames
(confidence 0) does not pull it.

Scale: for a metric estimator (Pi3X) every window measured metres itself; window ``k``'s fit scale
``s_k`` says one stitched unit is ``1 / s_k`` of its metres, and the stitched trajectory is rescaled by
the median of those factors (window 0's is 1). A relative or user scale keeps window 0's units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from annotation.estimators.base import EstimationError, PoseResult, known_K
from annotation.geometry import align_trajectories, apply_sim3, rotation_angle_deg

__all__ = ["WindowConfig", "plan_windows", "estimate_windows", "stitch_windows"]


@dataclass
class WindowConfig:
    """Windows of a clip (``window.*`` overrides).

    Attributes:
        frames: window length; 0 = every clip is one window (the clip length is bounded by
            ``max_clip_frames``).
        overlap: frames shared by consecutive windows (≥ 3; the last window may share more, see
            :func:`plan_windows`).
        max_residual: largest RMS camera-centre misfit on an overlap after its Sim(3) fit, relative to the
            RMS spread of the overlap's centres about their mean. On COLMAP windows of synthetic clips
            (bench/RESULTS.md) two accurate windows (ATE ≈ 1 cm) met at 0.015, pairs with a misplaced window
            (ATE 4–37 cm) at 0.19–0.67.
        max_rotation_deg: largest rotation misfit of an overlapping frame after the fit.
    """

    frames: int = 0
    overlap: int = 16
    max_residual: float = 0.1
    max_rotation_deg: float = 2.0

    def check(self) -> None:
        if self.frames == 0:
            return
        if not 3 <= self.overlap < self.frames:
            raise ValueError(f"window.overlap must satisfy 3 ≤ overlap < window.frames; got overlap={self.overlap}, "
                             f"frames={self.frames} (window.frames=0 estimates every clip whole).")
        if not (self.max_residual > 0 and self.max_rotation_deg > 0):
            raise ValueError(f"window.max_residual and window.max_rotation_deg must be positive; got "
                             f"{self.max_residual} and {self.max_rotation_deg}.")


def plan_windows(num_frames: int, frames: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows of ``frames`` frames, each starting ``frames − overlap`` after the previous.

    A last window that would run past the clip is shifted back to end at the clip's end (full length,
    sharing more than ``overlap`` frames with its predecessor). A clip no longer than one window, or
    ``frames == 0``, is one window.
    """
    if num_frames < 1:
        raise ValueError(f"a clip needs ≥ 1 frame; got {num_frames}.")
    if frames == 0 or num_frames <= frames:
        return [(0, num_frames)]
    if not 0 <= overlap < frames:
        raise ValueError(f"need 0 ≤ overlap < frames; got overlap={overlap}, frames={frames}.")
    starts = [0]
    while starts[-1] + frames < num_frames:
        starts.append(min(starts[-1] + frames - overlap, num_frames - frames))
    return [(s, s + frames) for s in starts]


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Entry-wise weighted median of ``values`` (M, …) with weights (M,): the smallest value whose
    cumulative weight reaches half the total."""
    if not weights.sum() > 0:
        weights = np.ones_like(weights)
    order = np.argsort(values, axis=0, kind="stable")
    v = np.take_along_axis(values, order, axis=0)
    cum = np.cumsum(weights[order], axis=0)
    idx = (cum < 0.5 * cum[-1:]).sum(axis=0, keepdims=True)
    return np.take_along_axis(v, idx, axis=0)[0]


def _rms_spread(c2w: np.ndarray) -> float:
    """RMS distance of the camera centres from their mean."""
    c = c2w[:, :3, 3]
    return float(np.sqrt(((c - c.mean(0)) ** 2).sum(1).mean()))


def stitch_windows(results: list[PoseResult], spans: list[tuple[int, int]], cfg: WindowConfig,
                   given_K: np.ndarray | None = None) -> PoseResult:
    """One result for the clip from per-window results (module docstring); ``given_K`` (N, 3, 3) is used
    as the clip's intrinsics instead of combining the windows'."""
    if len(results) != len(spans) or not results:
        raise ValueError(f"need one result per window; got {len(results)} results for {len(spans)} windows.")
    for k in range(1, len(spans)):
        if not (spans[k - 1][0] < spans[k][0] <= spans[k - 1][1] - 3 and spans[k][1] > spans[k - 1][1]):
            raise ValueError(f"window {k} {list(spans[k])} must start after window {k - 1} {list(spans[k - 1])} "
                             "and share ≥ 3 frames with it, and end later.")
    if spans[0][0] != 0:
        raise ValueError(f"the first window must start at frame 0; got {list(spans[0])}.")
    N = spans[-1][1]
    c2w, conf = np.zeros((N, 4, 4)), np.zeros(N)
    first = results[0]
    c2w[: spans[0][1]], conf[: spans[0][1]] = first.c2w, first.confidence
    fits: list[dict[str, Any]] = [{"window": 0, "scale": 1.0, "residual": 0.0, "rotation_deg": 0.0}]
    done = spans[0][1]
    for k in range(1, len(results)):
        (s, e), res = spans[k], results[k]
        if len(res.c2w) != e - s:
            raise ValueError(f"window {k} {[s, e]} has {len(res.c2w)} poses; expected {e - s}.")
        shared = np.arange(s, done)
        ref, mine = c2w[shared], res.c2w[shared - s]
        spread = _rms_spread(ref)
        extent = _rms_spread(c2w[:done])
        if not (spread > 1e-6 * extent > 0 and _rms_spread(mine) > 1e-6 * _rms_spread(res.c2w)):
            raise EstimationError("stitch_degenerate", f"window {k} {[s, e]}: the camera barely moves over its "
                                  f"{len(shared)} overlapping frames, so their Sim(3) scale is undefined.")
        aligned, sim = align_trajectories(mine, ref)
        residual = float(np.sqrt(((aligned[:, :3, 3] - ref[:, :3, 3]) ** 2).sum(1).mean())) / spread
        rot = float(rotation_angle_deg(aligned[:, :3, :3], ref[:, :3, :3]).max())
        fits.append({"window": k, "scale": sim.scale, "residual": residual, "rotation_deg": rot})
        if residual > cfg.max_residual or rot > cfg.max_rotation_deg:
            raise EstimationError("stitch_residual", f"window {k} {[s, e]} disagrees with the stitched trajectory on "
                                  f"its {len(shared)} overlapping frames after a Sim(3) fit: centre misfit "
                                  f"{residual:.3g} of their spread (limit window.max_residual = {cfg.max_residual}),"
                                  f" rotation misfit {rot:.3g}° (limit window.max_rotation_deg = "
                                  f"{cfg.max_rotation_deg}).")
        cut = s + (done - s + 1) // 2  # the later window supplies the frames from the overlap's middle on
        c2w[cut:e] = apply_sim3(sim, res.c2w[cut - s:])
        conf[cut:e] = res.confidence[cut - s:]
        done = e
    info: dict[str, Any] = {"windows": [list(sp) for sp in spans], "stitch": fits,
                            "window_info": [r.info for r in results]}
    if first.scale_kind == "metric" and len(results) > 1:
        # window k's own metres: one stitched unit is 1 / s_k of them
        factor = float(np.median([1.0 / f["scale"] for f in fits]))
        c2w[:, :3, 3] *= factor
        info["metric_factor"] = factor
    if given_K is not None:
        K = np.asarray(given_K, np.float64)
        info["intrinsics"] = "given"
    else:
        Ks = np.concatenate([r.K for r in results])
        w = np.concatenate([r.confidence for r in results])
        K = np.broadcast_to(_weighted_median(Ks, w), (N, 3, 3)).copy()
        info["intrinsics"] = "confidence-weighted median over windows"
    return PoseResult(c2w=c2w, K=K, confidence=conf, scale=first.scale, scale_kind=first.scale_kind,
                      estimator=first.estimator, version=first.version, licence=first.licence, info=info)


def estimate_windows(estimator, frames: np.ndarray, fps: float, known_intrinsics: Any, cfg: WindowConfig) -> PoseResult:
    """Estimate ``frames`` (N, H, W, 3) in the windows of ``cfg`` and stitch them (one window: the
    estimator's own result, with the layout added to its info)."""
    N = len(frames)
    spans = plan_windows(N, cfg.frames, cfg.overlap)
    if len(spans) == 1:
        result = estimator.estimate(frames, fps, known_intrinsics=known_intrinsics)
        result.info = {**result.info, "windows": [[0, N]]}
        return result
    K_all = known_K(known_intrinsics, N)
    results = []
    for k, (s, e) in enumerate(spans):
        try:
            results.append(estimator.estimate(frames[s:e], fps,
                                              known_intrinsics=None if K_all is None else K_all[s:e]))
        except EstimationError as err:
            raise EstimationError(err.reason, f"window {k} {[s, e]}: {err}") from None
    return stitch_windows(results, spans, cfg, given_K=K_all)
