"""Tests for sana_wm.camera.convention: SE(3) inverse, relativisation, validation, metric scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sana_wm.camera import (
    ground_axes,
    invert_se3,
    look_angles,
    pitch_matrix,
    relative_to_first,
    roll_matrix,
    scale_translation,
    validate_c2w,
    yaw_matrix,
)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3, 3) uniformly random proper rotations (from unit quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    ).reshape(n, 3, 3)  # fmt: skip


def random_c2w(n: int, seed: int = 0, t_scale: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    P = np.tile(np.eye(4), (n, 1, 1))
    P[:, :3, :3] = random_rotations(n, rng)
    P[:, :3, 3] = rng.normal(size=(n, 3)) * t_scale
    return P


def test_invert_se3_numpy_and_torch():
    P = random_c2w(7, seed=1)
    inv = invert_se3(P)
    assert isinstance(inv, np.ndarray) and inv.shape == (7, 4, 4)
    np.testing.assert_allclose(inv @ P, np.broadcast_to(np.eye(4), P.shape), atol=1e-12)
    np.testing.assert_allclose(inv, np.linalg.inv(P), atol=1e-12)

    Pt = torch.from_numpy(P).float().requires_grad_(True)
    inv_t = invert_se3(Pt)
    assert inv_t.dtype == torch.float32 and inv_t.shape == (7, 4, 4)
    torch.testing.assert_close(inv_t, torch.from_numpy(np.linalg.inv(P)).float(), atol=1e-5, rtol=0)
    inv_t.sum().backward()  # differentiable (used inside the DiT forward)
    assert Pt.grad is not None and torch.isfinite(Pt.grad).all()
    # Batch dims beyond one are supported.
    assert invert_se3(P.reshape(7, 1, 4, 4)).shape == (7, 1, 4, 4)


def test_invert_se3_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 4\).*\(3, 3\)"):
        invert_se3(np.eye(3))


@pytest.mark.parametrize("as_torch", [False, True])
def test_relative_to_first(as_torch):
    P = random_c2w(5, seed=2)
    inp = torch.from_numpy(P) if as_torch else P
    rel = relative_to_first(inp)
    assert type(rel) is type(inp) and rel.shape == (5, 4, 4)
    rel = rel.numpy() if as_torch else rel
    assert (rel[0] == np.eye(4)).all()  # exact identity, not P0⁻¹P0
    # P_i = P_0 · rel_i  ⇔  rel_i = P_0⁻¹ P_i
    np.testing.assert_allclose(P[0] @ rel, P, atol=1e-12)
    # Relative motion between frames is preserved.
    np.testing.assert_allclose(np.linalg.inv(rel[1]) @ rel[3], np.linalg.inv(P[1]) @ P[3], atol=1e-12)


def test_relative_to_first_keeps_dtype_and_rejects_bad_shape():
    P = random_c2w(3).astype(np.float32)
    assert relative_to_first(P).dtype == np.float32
    with pytest.raises(ValueError, match=r"\(F, 4, 4\)"):
        relative_to_first(np.eye(4))


def test_validate_c2w_accepts_rigid_trajectories():
    validate_c2w(random_c2w(9))
    validate_c2w(torch.from_numpy(random_c2w(2)).float())
    validate_c2w(random_c2w(1).tolist())


def test_validate_c2w_errors_name_argument_frame_and_problem():
    with pytest.raises(ValueError, match=r"`poses` must have shape \(F, 4, 4\).*\(4, 4\)"):
        validate_c2w(np.eye(4), name="poses")
    with pytest.raises(ValueError, match=r"\(3, 3, 4\)"):
        validate_c2w(np.zeros((3, 3, 4)))

    P = random_c2w(6)
    P[4, 1, 3] = np.nan
    with pytest.raises(ValueError, match=r"`c2w` has non-finite values.*frame 4"):
        validate_c2w(P)

    P = random_c2w(6)
    P[2, :3, :3] *= 1.1  # scaled rotation
    with pytest.raises(ValueError, match=r"`c2w` frame 2 has a non-rigid rotation"):
        validate_c2w(P)

    P = random_c2w(6)
    P[3, :3, 0] *= -1  # reflection: orthonormal but det = -1
    with pytest.raises(ValueError, match=r"frame 3 has det\(R\) = -1"):
        validate_c2w(P)

    P = random_c2w(6)
    P[5, 3, 0] = 0.5
    with pytest.raises(ValueError, match=r"frame 5 has last row .*expected \[0, 0, 0, 1\]"):
        validate_c2w(P)

    # Within atol is accepted, beyond it is not.
    P = random_c2w(2)
    P[1, :3, :3] *= 1 + 1e-5
    validate_c2w(P)
    with pytest.raises(ValueError):
        validate_c2w(P, atol=1e-7)


@pytest.mark.parametrize("as_torch", [False, True])
def test_scale_translation(as_torch):
    P = random_c2w(4)
    inp = torch.from_numpy(P) if as_torch else P
    out = scale_translation(inp, 2.5)
    out = out.numpy() if as_torch else out
    np.testing.assert_allclose(out[:, :3, 3], 2.5 * P[:, :3, 3])
    np.testing.assert_array_equal(out[:, :3, :3], P[:, :3, :3])
    np.testing.assert_array_equal(out[:, 3], P[:, 3])
    np.testing.assert_array_equal(P, random_c2w(4))  # input untouched
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="`scale` must be a finite positive number"):
            scale_translation(P, bad)


def test_yaw_pitch_roll_signs():
    """Positive yaw turns right (forward gains +X), positive pitch looks up (forward gains −Y, +Y is down),
    positive roll dips the right axis (+X gains +Y); all are proper rotations."""
    a = 0.3
    np.testing.assert_array_equal(yaw_matrix(a)[:, 2], [np.sin(a), 0.0, np.cos(a)])
    np.testing.assert_array_equal(pitch_matrix(a)[:, 2], [0.0, -np.sin(a), np.cos(a)])
    np.testing.assert_array_equal(roll_matrix(a)[:, 0], [np.cos(a), np.sin(a), 0.0])
    np.testing.assert_array_equal(roll_matrix(a)[:, 2], [0.0, 0.0, 1.0])  # roll keeps the optical axis
    np.testing.assert_array_equal(yaw_matrix(a)[:, 1], [0.0, 1.0, 0.0])  # yaw keeps world up/down
    P = np.tile(np.eye(4), (3, 1, 1))
    P[:, :3, :3] = [yaw_matrix(a), pitch_matrix(-a), roll_matrix(2 * a)]
    validate_c2w(P, atol=1e-12)
    np.testing.assert_allclose(yaw_matrix(a) @ yaw_matrix(-a), np.eye(3), atol=1e-15)


def test_look_angles_invert_yaw_then_pitch_and_ignore_roll():
    rng = np.random.default_rng(0)
    yaw = rng.uniform(-3.1, 3.1, 20)
    pitch = rng.uniform(-1.5, 1.5, 20)
    roll = rng.uniform(-3.1, 3.1, 20)
    P = np.tile(np.eye(4), (20, 1, 1))
    P[:, :3, :3] = [yaw_matrix(y) @ pitch_matrix(p) @ roll_matrix(r) for y, p, r in zip(yaw, pitch, roll, strict=True)]
    P[:, :3, 3] = rng.normal(size=(20, 3))
    got_yaw, got_pitch = look_angles(P)
    assert got_yaw.shape == got_pitch.shape == (20,)
    np.testing.assert_allclose(got_yaw, yaw, atol=1e-12)
    np.testing.assert_allclose(got_pitch, pitch, atol=1e-12)
    y0, p0 = look_angles(P[3, :3, :3])  # a single rotation
    assert y0.shape == () and abs(float(y0) - yaw[3]) < 1e-12 and abs(float(p0) - pitch[3]) < 1e-12


def test_ground_axes_are_the_horizontal_forward_and_right():
    y, p = 0.7, -0.4
    fwd, right = ground_axes(yaw_matrix(y) @ pitch_matrix(p))
    np.testing.assert_allclose(fwd, [np.sin(y), 0.0, np.cos(y)], atol=1e-15)  # pitch does not tilt the walk
    np.testing.assert_allclose(right, [np.cos(y), 0.0, -np.sin(y)], atol=1e-15)
    P = np.tile(np.eye(4), (2, 1, 1))
    P[1, :3, :3] = pitch_matrix(np.pi / 2)  # looking straight up: no horizontal forward
    fwd, right = ground_axes(P)
    assert fwd.shape == right.shape == (2, 3)
    np.testing.assert_array_equal(fwd, [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(right, [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
