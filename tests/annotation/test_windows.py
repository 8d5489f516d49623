"""Clips in overlapping windows: layout, exact Sim(3) stitching, rejections, and the pipeline record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from annotation.estimators import EstimationError, PoseResult
from annotation.geometry import Sim3, apply_sim3
from annotation.windows import WindowConfig, estimate_windows, plan_windows


def _rot(yaw, pitch, roll):
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return Ry @ Rx @ Rz


def _truth(n):
    """A curving 6-DoF path: a rising spiral, looking around."""
    i = np.arange(n, dtype=np.float64)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, 3] = np.stack([2.0 * np.cos(0.03 * i), 0.01 * i, 2.0 * np.sin(0.03 * i)], -1)
    for f in range(n):
        c2w[f, :3, :3] = _rot(0.04 * f, 0.3 * np.sin(0.07 * f), 0.1 * np.cos(0.05 * f))
    return c2w


def _gauge(rng, scale):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Sim3(scale, q * np.linalg.det(q), rng.normal(size=3) * 5)


class FakeEstimator:
    """Returns the true poses of the frames it is given (frame index in pixel [0, 0, 0]) moved by a known
    Sim(3) per call, with a per-call focal length; ``corrupt(k, c2w)`` may spoil call k's poses."""

    name, version, licence = "fake", "1", "none"
    spans: list[tuple[int, int]] | None = None  # where the frames carry no index (decoded video)

    def __init__(self, truth, gauges, focals, kind="relative", conf=None, corrupt=None):
        self.truth, self.gauges, self.focals, self.kind = truth, gauges, focals, kind
        self.conf, self.corrupt, self.calls = conf, corrupt, []

    def estimate(self, frames, fps, known_intrinsics=None):
        k = len(self.calls)
        s = int(frames[0, 0, 0, 0]) if frames.shape[1] == 1 else self.spans[k][0]
        n = len(frames)
        self.calls.append((s, s + n, known_intrinsics))
        c2w = apply_sim3(self.gauges[k], self.truth[s:s + n])
        if self.corrupt:
            c2w = self.corrupt(k, c2w)
        fx = self.focals[k]
        K = np.tile(np.array([[fx, 0, 63.5], [0, fx, 47.5], [0, 0, 1]]), (n, 1, 1))
        conf = np.ones(n) if self.conf is None else self.conf[k]
        return PoseResult(c2w, K, conf, 1.0, self.kind, self.name, self.version, self.licence, info={"call": k})


def _frames(n):
    frames = np.zeros((n, 1, 1, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(n)
    return frames


def test_window_layout_for_awkward_lengths():
    assert plan_windows(100, 32, 8) == [(0, 32), (24, 56), (48, 80), (68, 100)]  # last shifted back from 72
    assert plan_windows(57, 32, 8) == [(0, 32), (24, 56), (25, 57)]
    assert plan_windows(33, 32, 8) == [(0, 32), (1, 33)]
    assert plan_windows(80, 32, 8) == [(0, 32), (24, 56), (48, 80)]  # fits exactly
    assert plan_windows(241, 64, 16) == [(0, 64), (48, 112), (96, 160), (144, 208), (177, 241)]
    assert plan_windows(32, 32, 8) == [(0, 32)] and plan_windows(20, 32, 8) == [(0, 20)]
    assert plan_windows(500, 0, 16) == [(0, 500)]  # windows off
    with pytest.raises(ValueError, match=r"3 ≤ overlap < window.frames; got overlap=2, frames=32"):
        WindowConfig(frames=32, overlap=2).check()
    with pytest.raises(ValueError, match=r"got overlap=32, frames=32"):
        WindowConfig(frames=32, overlap=32).check()
    WindowConfig(frames=0, overlap=0).check()  # off: nothing to check


def test_windows_with_arbitrary_gauges_stitch_back_exactly():
    rng = np.random.default_rng(3)
    truth = _truth(100)
    gauges = [_gauge(rng, s) for s in (0.7, 2.5, 0.31, 1.9)]
    # window focal lengths 100, 130, 90, 120, frame confidences 0.1, 0.2, 1.0, 0.5: over the 4 × 32 frame
    # estimates the weights are 3.2 on 100, 6.4 on 130, 32 on 90, 16 on 120 (of 57.6), so the weighted median
    # is 90 (the unweighted one would be 100)
    conf = [np.full(32, c) for c in (0.1, 0.2, 1.0, 0.5)]
    est = FakeEstimator(truth, gauges, [100.0, 130.0, 90.0, 120.0], conf=conf)
    res = estimate_windows(est, _frames(100), 16.0, None, WindowConfig(frames=32, overlap=8))
    assert [c[:2] for c in est.calls] == [(0, 32), (24, 56), (48, 80), (68, 100)]
    # the stitched trajectory is window 0's gauge of the truth: the truth up to one global Sim(3)
    np.testing.assert_allclose(res.c2w, apply_sim3(gauges[0], truth), rtol=0, atol=1e-9)
    assert res.info["windows"] == [[0, 32], [24, 56], [48, 80], [68, 100]]
    fits = res.info["stitch"]
    assert [f["window"] for f in fits] == [0, 1, 2, 3]
    np.testing.assert_allclose([f["scale"] for f in fits], [1.0, 0.7 / 2.5, 0.7 / 0.31, 0.7 / 1.9], rtol=1e-12)
    assert max(f["residual"] for f in fits) < 1e-12 and max(f["rotation_deg"] for f in fits) < 1e-5
    np.testing.assert_array_equal(res.K, np.broadcast_to(np.array([[90.0, 0, 63.5], [0, 90.0, 47.5], [0, 0, 1]]),
                                                         (100, 3, 3)))
    assert res.info["intrinsics"] == "confidence-weighted median over windows"
    # overlaps split at their middle: frames 24–27 from window 0, 28–51 from window 1, 52–63 from window 2
    # (window 3 overlaps window 2 on 68–79 and takes 74 on)
    expected_conf = np.r_[np.full(28, 0.1), np.full(24, 0.2), np.full(22, 1.0), np.full(26, 0.5)]
    np.testing.assert_array_equal(res.confidence, expected_conf)
    assert res.scale_kind == "relative" and res.scale == 1.0 and [w["call"] for w in res.info["window_info"]] == [
        0, 1, 2, 3]


def test_metric_windows_take_the_median_of_their_scales():
    rng = np.random.default_rng(5)
    truth = _truth(100)
    gauges = [_gauge(rng, s) for s in (1.0, 1.1, 0.9, 1.05)]  # each window's own metric error
    est = FakeEstimator(truth, gauges, [100.0] * 4, kind="metric")
    res = estimate_windows(est, _frames(100), 16.0, None, WindowConfig(frames=32, overlap=8))
    assert res.info["metric_factor"] == pytest.approx(1.025, abs=1e-12)  # median of 1, 1.1, 0.9, 1.05
    expected = apply_sim3(gauges[0], truth)
    expected[:, :3, 3] *= 1.025
    np.testing.assert_allclose(res.c2w, expected, rtol=0, atol=1e-9)


def test_given_intrinsics_reach_every_window_and_pass_through():
    rng = np.random.default_rng(1)
    truth = _truth(57)
    est = FakeEstimator(truth, [_gauge(rng, 1.0) for _ in range(3)], [100.0, 130.0, 90.0])
    K = np.array([[80.0, 0, 60.0], [0, 81.0, 45.0], [0, 0, 1]])
    res = estimate_windows(est, _frames(57), 16.0, K, WindowConfig(frames=32, overlap=8))
    assert [c[:2] for c in est.calls] == [(0, 32), (24, 56), (25, 57)]
    for s, e, given in est.calls:
        np.testing.assert_array_equal(given, np.broadcast_to(K, (e - s, 3, 3)))
    np.testing.assert_array_equal(res.K, np.broadcast_to(K, (57, 3, 3)))
    assert res.info["intrinsics"] == "given"


def _spoil_window(target, how, count=4):
    def corrupt(k, c2w):
        if k != target:
            return c2w
        c2w = c2w.copy()
        if how == "translation":
            c2w[:count, :3, 3] += np.array([1.0, -2.0, 0.5])  # the first overlapping frames jump away
        else:
            c2w[:count, :3, :3] = _rot(0.0, np.radians(10.0), 0.0) @ c2w[:count, :3, :3]
        return c2w

    return corrupt


@pytest.mark.parametrize("how", ["translation", "rotation"])
def test_a_window_disagreeing_on_its_overlap_rejects_the_clip(how):
    rng = np.random.default_rng(2)
    truth = _truth(100)
    est = FakeEstimator(truth, [_gauge(rng, 1.5) for _ in range(4)], [100.0] * 4, corrupt=_spoil_window(2, how))
    with pytest.raises(EstimationError, match=r"window 2 \[48, 80\] disagrees .* on its 8 overlapping frames") as info:
        estimate_windows(est, _frames(100), 16.0, None, WindowConfig(frames=32, overlap=8))
    assert info.value.reason == "stitch_residual"


def test_stitching_refuses_windows_that_do_not_overlap():
    from annotation.windows import stitch_windows

    est = FakeEstimator(_truth(64), [Sim3(1.0, np.eye(3), np.zeros(3))] * 2, [100.0] * 2)
    results = [est.estimate(_frames(64)[s:e], 16.0) for s, e in ((0, 32), (30, 62))]
    with pytest.raises(ValueError, match=r"window 1 \[30, 62\] must start after window 0 \[0, 32\] and share ≥ 3"):
        stitch_windows(results, [(0, 32), (30, 62)], WindowConfig(frames=32, overlap=2))


def test_an_overlap_without_translation_is_degenerate():
    rng = np.random.default_rng(4)
    truth = _truth(60)
    truth[20:40, :3, 3] = truth[20, :3, 3]  # the camera only turns over frames 20–39 (window 1's overlap)
    est = FakeEstimator(truth, [_gauge(rng, 1.0) for _ in range(3)], [100.0] * 3)
    with pytest.raises(EstimationError, match=r"window 1 \[24, 56\]: the camera barely moves") as info:
        estimate_windows(est, _frames(60), 16.0, None, WindowConfig(frames=32, overlap=8))
    assert info.value.reason == "stitch_degenerate"


def test_a_failing_window_rejects_the_clip_with_its_reason():
    class Failing(FakeEstimator):
        def estimate(self, frames, fps, known_intrinsics=None):
            if len(self.calls) == 1:
                raise EstimationError("sfm_failed", "registered 3 of 32 frames")
            return super().estimate(frames, fps, known_intrinsics)

    est = Failing(_truth(60), [Sim3(1.0, np.eye(3), np.zeros(3))] * 2, [100.0] * 2)
    with pytest.raises(EstimationError, match=r"window 1 \[24, 56\]: registered 3 of 32") as info:
        estimate_windows(est, _frames(60), 16.0, None, WindowConfig(frames=32, overlap=8))
    assert info.value.reason == "sfm_failed"


@pytest.mark.parametrize("spoil", [False, True], ids=["consistent", "inconsistent"])
def test_pipeline_records_the_windows_and_counts_a_stitch_rejection(tmp_path, monkeypatch, spoil):
    import annotation.pipeline as pipeline
    from annotation.__main__ import main
    from data.video import encode_mp4

    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    # a slowly panning gradient: one shot, 33 frames
    x = np.arange(128 + 33)[None, :, None]
    frames = np.stack([np.broadcast_to((x[:, i:i + 128] * 1.5 % 256), (96, 128, 3)) for i in range(33)])
    (videos / "pan.mp4").write_bytes(encode_mp4(np.ascontiguousarray(frames.astype(np.uint8)), 16.0))
    rng = np.random.default_rng(6)
    est = FakeEstimator(_truth(33), [_gauge(rng, 0.5 + k) for k in range(3)],
                        [100.0] * 3, corrupt=_spoil_window(1, "translation", 2) if spoil else None)
    est.spans = plan_windows(33, 16, 4)
    monkeypatch.setattr(pipeline, "build_estimator", lambda *a, **k: est)
    assert main([str(videos), str(out), "window.frames=16", "window.overlap=4", "write_shards=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [c[:2] for c in est.calls] == [(0, 16), (12, 28), (17, 33)]
    if spoil:
        assert summary["kept"] == 0 and summary["rejected"] == {"stitch_residual": 1}
        line = json.loads((out / "rejected.jsonl").read_text().splitlines()[0])
        assert line["clip"] == "pan-s000-c00" and "window 1 [12, 28] disagrees" in line["detail"]
    else:
        assert summary["kept"] == 1 and summary["rejected"] == {}
        meta = json.loads((out / "clips" / "pan-s000-c00.json").read_text())
        assert meta["annotation"]["info"]["windows"] == [[0, 16], [12, 28], [17, 33]]
        assert summary["config"]["window"] == {"frames": 16, "overlap": 4, "max_residual": 0.1,
                                               "max_rotation_deg": 2.0}


@pytest.mark.slow  # ≈ 15 s here: the tiny model takes seconds a forward pass on this CPU
def test_pi3x_windows_run_end_to_end_with_one_clip_record():
    # random tiny weights: nothing to check about accuracy (the limits are off), only that a real estimator's
    # per-frame intrinsics, confidences and metric scale go through the windows into one record
    from annotation.estimators.pi3 import Pi3Estimator
    from annotation.models.pi3 import build_pi3

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    est = Pi3Estimator(None, "pi3x", device="cpu", frame_budget=16, overlap=4, pixel_limit=28 * 42,
                       model=build_pi3("tiny"))
    frames = np.random.default_rng(0).integers(0, 255, (13, 40, 60, 3), dtype=np.uint8)
    res = estimate_windows(est, frames, 8.0, None, WindowConfig(frames=8, overlap=3, max_residual=1e9,
                                                                max_rotation_deg=1e9))
    assert res.info["windows"] == [[0, 8], [5, 13]]
    assert res.c2w.shape == (13, 4, 4) and res.scale_kind == "metric" and res.estimator == "pi3x"
    assert (res.K == res.K[0]).all() and res.info["intrinsics"] == "confidence-weighted median over windows"
    assert len(res.info["window_info"]) == 2 and res.info["metric_factor"] > 0
