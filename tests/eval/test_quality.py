"""Known-answer tests for sana_wm.eval.quality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sana_wm.eval.quality import (
    PSNR_CAP_DB,
    Skipped,
    fid,
    frechet_distance,
    fvd,
    load_i3d,
    load_inception,
    psnr,
    revisit_metrics,
    revisit_pairs,
    ssim,
    temporal_windows,
)


def _video(frames=4, h=24, w=32, seed=0, lo=0, hi=256):
    return np.random.default_rng(seed).integers(lo, hi, size=(frames, h, w, 3), dtype=np.uint8)


def test_identical_videos_hit_the_psnr_cap_and_ssim_one():
    v = _video()
    assert psnr(v, v).tolist() == [PSNR_CAP_DB] * 4
    np.testing.assert_allclose(ssim(v, v), 1.0, atol=1e-12)


def test_constant_offset_psnr_is_closed_form():
    v = _video(lo=10, hi=240)
    for offset in (1, 5, 10):
        np.testing.assert_allclose(psnr(v, v + np.uint8(offset)), 20 * math.log10(255 / offset), rtol=1e-12)
    assert psnr(v, v + np.uint8(5))[0] == pytest.approx(34.15140352195873, rel=1e-12)


def test_ssim_of_a_constant_offset_on_flat_frames_is_the_luminance_term():
    """Flat frames: σ = 0, so SSIM = (2μₐμ_b + C1) / (μₐ² + μ_b² + C1) exactly."""
    a = np.full((1, 16, 16, 3), 100, np.uint8)
    b = np.full((1, 16, 16, 3), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 120 + c1) / (100**2 + 120**2 + c1)
    assert ssim(a, b)[0] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.98361092, abs=1e-8)


def test_ssim_matches_a_window_by_window_loop():
    """Brute force over the 2 × 3 window positions of a 12 × 13 frame, per channel, population statistics."""
    a, b = _video(1, h=12, w=13, seed=4), _video(1, h=12, w=13, seed=5)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for ch in range(3):
        for i in range(2):
            for j in range(3):
                x = a[0, i : i + 11, j : j + 11, ch].astype(float)
                y = b[0, i : i + 11, j : j + 11, ch].astype(float)
                cov = ((x - x.mean()) * (y - y.mean())).mean()
                vals.append((2 * x.mean() * y.mean() + c1) * (2 * cov + c2)
                            / ((x.mean() ** 2 + y.mean() ** 2 + c1) * (x.var() + y.var() + c2)))
    assert ssim(a, b)[0] == pytest.approx(np.mean(vals), rel=1e-10)


def test_ssim_sample_covariance_variant_differs_on_texture():
    a, b = _video(1, seed=1), _video(1, seed=2)
    assert ssim(a, b)[0] != pytest.approx(ssim(a, b, sample_covariance=True)[0], rel=1e-6)


def test_bad_frames_are_rejected_with_the_shape():
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\) uint8"):
        psnr(np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="same shape"):
        psnr(_video(2), _video(3))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(_video(1, h=8, w=8), _video(1, h=8, w=8))


def test_temporal_windows_split_by_seconds():
    per = {"psnr_db": np.arange(25, dtype=float)}
    out = temporal_windows(per, fps=2.0, window_s=5.0)  # 10 frames per window: 0-9, 10-19, 20-24
    assert out == {"psnr_db_mean[t=0-5s]": 4.5, "psnr_db_mean[t=5-10s]": 14.5, "psnr_db_mean[t=10-15s]": 22.0}
    with pytest.raises(ValueError, match="fps"):
        temporal_windows(per, fps=0.0)


def _out_and_back(frames=33):
    """The camera goes forward 16 frames and comes back: frame k revisits frame 32 − k."""
    c2w = np.tile(np.eye(4), (frames, 1, 1))
    z = np.concatenate([np.arange(17), np.arange(15, -1, -1)]) * 0.1
    c2w[:, 2, 3] = z
    return c2w


def test_revisit_pairs_find_the_return_leg():
    pairs = revisit_pairs(_out_and_back(), min_gap=8, max_dist=0.01)
    assert pairs == [(0, 32), (1, 31), (2, 30), (3, 29), (4, 28)]
    assert revisit_pairs(_out_and_back(), min_gap=40) == []


def test_revisit_metrics_on_a_video_that_repeats():
    video = _video(33, seed=3)
    video[32 - np.arange(5)] = video[np.arange(5)]  # the revisit frames are exact copies
    out = revisit_metrics(video, _out_and_back(), min_gap=8, max_dist=0.01)
    assert out == {"revisit_pairs": 5.0, "revisit_psnr_db_mean": 100.0, "revisit_ssim_mean": pytest.approx(1.0)}


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 6))
    cov = np.cov(a, rowvar=False)
    assert frechet_distance(a.mean(0), cov, a.mean(0), cov) == pytest.approx(0.0, abs=1e-9)
    # Diagonal covariances: ‖Δμ‖² + Σ (√s₁ − √s₂)².
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(5.0 + 1.0 + 0.0 + 4.0)


class _MeanColourI3D(torch.nn.Module):
    """Stands in for I3D: the 3 channel means of the clip (same calling convention)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True):
        return x.mean(dim=(2, 3, 4))


def test_fvd_from_a_local_torchscript_and_skips(tmp_path):
    path = tmp_path / "i3d.pt"
    torch.jit.script(_MeanColourI3D()).save(str(path))
    extractor = load_i3d(path)
    vids = [_video(16, seed=s) for s in range(3)]
    assert fvd(vids, vids, extractor) == pytest.approx(0.0, abs=1e-9)
    shifted = [np.clip(v.astype(int) + 51, 0, 255).astype(np.uint8) for v in vids]
    assert fvd(vids, shifted, extractor) > 0.01
    assert isinstance(load_i3d(None), Skipped)
    assert "does not exist" in load_i3d(tmp_path / "none.pt").reason
    assert "needs >= 2 videos" in fvd(vids[:1], vids, extractor).reason
    assert "shorter than clip_frames=16" in fvd([_video(8)] * 2, vids, extractor).reason


def test_frechet_distance_of_non_commuting_gaussians_is_the_closed_form():
    """2 × 2: Tr((Σ₁Σ₂)^½) = √(Tr(Σ₁Σ₂) + 2√(det Σ₁ det Σ₂)) (the eigenvalues of Σ₁Σ₂ are real, ≥ 0)."""
    s1 = np.array([[2.0, 0.5], [0.5, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    want = 8.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-12)
    # Σ₁ = I in 5-D: Tr(Σ₂^½) from Σ₂'s eigenvalues; and the distance is symmetric.
    a = np.random.default_rng(3).normal(size=(5, 5))
    s2 = a @ a.T + 0.1 * np.eye(5)
    want = 5.0 + np.trace(s2) - 2 * np.sqrt(np.linalg.eigvalsh(s2)).sum()
    assert frechet_distance(np.zeros(5), np.eye(5), np.zeros(5), s2) == pytest.approx(want, rel=1e-10)
    assert frechet_distance(np.zeros(5), s2, np.zeros(5), np.eye(5)) == pytest.approx(want, rel=1e-10)


class _MeanColourInception(torch.nn.Module):
    """Stands in for the Inception TorchScript: per-image channel means, same calling convention (uint8 NCHW)."""

    def forward(self, x: torch.Tensor, return_features: bool = False):
        assert x.dtype == torch.uint8 and x.shape[1] == 3 and return_features
        return x.double().mean(dim=(2, 3))


def test_fid_from_a_local_torchscript_on_frames_and_skips(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.script(_MeanColourInception()).save(str(path))
    extractor = load_inception(path)
    vids = [_video(4, seed=s) for s in range(3)]
    assert fid(vids, vids, extractor, batch=5) == pytest.approx(0.0, abs=1e-9)
    shifted = [np.clip(v.astype(int) + 30, 0, 255).astype(np.uint8) for v in vids]
    got = fid(vids, shifted, extractor)
    feats = lambda vs: np.concatenate([v.reshape(len(v), -1, 3).mean(1) for v in vs])
    a, b = feats(vids), feats(shifted)
    assert got == pytest.approx(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                                                 np.cov(b, rowvar=False)), rel=1e-9)
    assert got > 100
    assert load_inception(None).reason == "no local Inception TorchScript configured (metrics.fid_inception_torchscript)"
    assert "does not exist" in load_inception(tmp_path / "none.pt").reason
    assert fid([vids[0][:1]], vids, extractor).reason == "needs >= 2 frames per side; got 1 real and 12 generated"
