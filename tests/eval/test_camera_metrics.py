"""Golden tests for sana_wm.eval.camera_metrics (both conventions; closed forms derived by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sana_wm.camera import rotation_angle, yaw_matrix
from sana_wm.eval.camera_metrics import (
    METRIC_COLUMNS,
    align_extrinsics,
    camera_metrics,
    cami2v_metrics,
    sana_wm_metrics,
)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _random_trajectory(rng: np.random.Generator, frames: int = 12) -> np.ndarray:
    c2w = np.tile(np.eye(4), (frames, 1, 1))
    for j in range(frames):
        c2w[j, :3, :3] = _random_rotation(rng)
        c2w[j, :3, 3] = rng.normal(size=3)
    return c2w


def _sim3(c2w: np.ndarray, Q: np.ndarray, scale: float, shift: np.ndarray) -> np.ndarray:
    """Move the whole scene by x ↦ scale·Q·x + shift: rotations Q·R, centres scale·Q·c + shift."""
    out = c2w.copy()
    out[:, :3, :3] = Q @ c2w[:, :3, :3]
    out[:, :3, 3] = scale * c2w[:, :3, 3] @ Q.T + shift
    return out


def _forward_track(frames: int, step: float) -> np.ndarray:
    c2w = np.tile(np.eye(4), (frames, 1, 1))
    c2w[:, 2, 3] = step * np.arange(frames)
    return c2w


def test_trajectory_against_itself_under_random_sim3_is_zero_in_both_conventions():
    rng = np.random.default_rng(3)
    gt = _random_trajectory(rng)
    est = _sim3(gt, _random_rotation(rng), 2.7, rng.normal(size=3) * 5)
    out = camera_metrics(gt, est)
    # arccos near 1 resolves angles only to ~√ε ≈ 1e-8 rad, hence the 1e-5 bound (degrees included).
    for name in METRIC_COLUMNS["sana_wm"][:3] + METRIC_COLUMNS["cami2v"]:
        assert out[name] == pytest.approx(0.0, abs=1e-5), name
    assert out["align_scale[sana_wm]"] == pytest.approx(1 / 2.7, rel=1e-9)


def test_ten_percent_scale_error_is_absorbed_by_both_conventions():
    """A global 10 % translation scale error: the extrinsics fit returns s = 1/1.1, self-normalisation cancels it."""
    gt = _random_trajectory(np.random.default_rng(5))
    est = gt.copy()
    est[:, :3, 3] *= 1.1
    out = camera_metrics(gt, est)
    assert out["align_scale[sana_wm]"] == pytest.approx(1 / 1.1, rel=1e-12)
    for name in METRIC_COLUMNS["sana_wm"][:3] + METRIC_COLUMNS["cami2v"]:
        assert out[name] == pytest.approx(0.0, abs=1e-5), name


def _yaw_case(frames: int = 9, step: float = 0.5, deg: float = 5.0):
    gt = _forward_track(frames, step)
    est = gt.copy()
    est[1:, :3, :3] = yaw_matrix(math.radians(deg))  # every frame after the reference carries a 5° yaw
    return gt, est


def test_five_degree_yaw_cami2v_closed_form():
    """No alignment: each of the F − 1 perturbed frames adds θ (rad) and ‖I − R_y(θ)‖_F = 2√2·sin(θ/2)."""
    frames, theta = 9, math.radians(5.0)
    gt, est = _yaw_case(frames)
    out = cami2v_metrics(gt, est)
    assert out["rot_err_rad_sum[cami2v]"] == pytest.approx((frames - 1) * theta, rel=1e-9)
    assert out["rot_err_rad_sum[cami2v]"] == pytest.approx(0.6981317, rel=1e-6)
    assert out["trans_err_sum[cami2v]"] == pytest.approx(0.0, abs=1e-12)  # centres untouched
    assert out["cammc_sum[cami2v]"] == pytest.approx(8 * 2 * math.sqrt(2) * math.sin(theta / 2), rel=1e-9)
    assert out["cammc_sum[cami2v]"] == pytest.approx(0.98699407, rel=1e-7)


def test_five_degree_yaw_sana_wm_closed_form():
    """Forward track c_j = (0, 0, j·d), R_gt = I; the estimate has R_y(θ) on frames 1…F−1, same centres.

    Hand derivation (world-to-camera): M = (I + (F−1) R_y(θ)ᵀ) / F is a scaled yaw, so R_A = R_y(φ) with
    φ = atan2((F−1) sin θ, 1 + (F−1) cos θ): frame 0 is off by φ, the others by θ − φ. a_j = −c_j,
    b_j = −R_y(θ) c_j, hence s = cos θ and T_A = (−j̄ d sin θ, 0, 0); aligned centres
    c′_j = R_y(−φ) (j̄ d sin θ, 0, j d cos θ).
    """
    frames, step, theta = 9, 0.5, math.radians(5.0)
    gt, est = _yaw_case(frames, step)
    phi = math.atan2((frames - 1) * math.sin(theta), 1 + (frames - 1) * math.cos(theta))
    angles = np.array([phi] + [theta - phi] * (frames - 1))
    j = np.arange(frames)
    jbar = j.mean()
    centres = np.stack([np.full(frames, jbar * step * math.sin(theta)), np.zeros(frames),
                        j * step * math.cos(theta)], axis=1) @ yaw_matrix(-phi).T
    trans = np.linalg.norm(gt[:, :3, 3] - centres, axis=1)
    cammc = np.sqrt((2 * math.sqrt(2) * np.sin(angles / 2)) ** 2 + trans**2)

    out = sana_wm_metrics(gt, est)
    assert out["align_scale[sana_wm]"] == pytest.approx(math.cos(theta), rel=1e-12)
    assert out["rot_err_deg_mean[sana_wm]"] == pytest.approx(math.degrees(angles.mean()), rel=1e-9)
    assert out["trans_err_mean[sana_wm]"] == pytest.approx(trans.mean(), rel=1e-9)
    assert out["cammc_mean[sana_wm]"] == pytest.approx(cammc.mean(), rel=1e-9)
    # The same numbers, pinned (F = 9, d = 0.5, θ = 5°).
    assert out["rot_err_deg_mean[sana_wm]"] == pytest.approx(PINNED_SANA_WM_YAW[0], rel=1e-6)
    assert out["trans_err_mean[sana_wm]"] == pytest.approx(PINNED_SANA_WM_YAW[1], rel=1e-6)
    assert out["cammc_mean[sana_wm]"] == pytest.approx(PINNED_SANA_WM_YAW[2], rel=1e-6)


PINNED_SANA_WM_YAW = (0.98727513, 0.08829217, 0.09349315)


def test_alignment_is_not_an_umeyama_fit_on_centres():
    """Pure rotation error leaves the centres exact, yet the extrinsics fit moves them (s = cos θ ≠ 1)."""
    gt, est = _yaw_case()
    aligned, s = align_extrinsics(gt, est)
    assert s < 1.0
    assert np.abs(aligned[:, :3, 3] - gt[:, :3, 3]).max() > 1e-3


def test_columns_name_unit_and_reduction_and_never_mix():
    out = camera_metrics(*_yaw_case())
    assert set(out) == set(METRIC_COLUMNS["sana_wm"]) | set(METRIC_COLUMNS["cami2v"])
    for name in METRIC_COLUMNS["sana_wm"]:
        assert name.endswith("[sana_wm]") and "_sum" not in name and "rad" not in name
    for name in METRIC_COLUMNS["cami2v"]:
        assert name.endswith("[cami2v]") and "_sum" in name and "deg" not in name
    # 5° per frame: the degree-mean column holds degrees (the alignment absorbs most of the yaw), the
    # radian-sum column radians summed over the 8 perturbed frames.
    assert out["rot_err_deg_mean[sana_wm]"] == pytest.approx(PINNED_SANA_WM_YAW[0], rel=1e-6)
    assert out["rot_err_rad_sum[cami2v]"] == pytest.approx(8 * math.radians(5.0))


def test_bad_input_names_the_argument():
    gt = _forward_track(5, 1.0)
    with pytest.raises(ValueError, match="same"):
        camera_metrics(gt, gt[:4])
    bad = gt.copy()
    bad[2, 0, 0] = 2.0
    with pytest.raises(ValueError, match="c2w_est"):
        camera_metrics(gt, bad)
    with pytest.raises(ValueError, match="unknown camera-metric convention 'x'"):
        camera_metrics(gt, gt, conventions=("x",))


def test_rotation_angle_of_a_known_yaw_and_its_clamp():
    assert rotation_angle(np.eye(3), yaw_matrix(math.radians(5.0))) == pytest.approx(math.radians(5.0), rel=1e-12)
    assert rotation_angle(np.eye(3), yaw_matrix(math.pi)) == pytest.approx(math.pi)
    assert rotation_angle(np.eye(3), np.eye(3) * (1 + 1e-12)) == 0.0  # cos slightly above 1 is clamped
