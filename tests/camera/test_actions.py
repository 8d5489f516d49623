"""Tests for the action DSL (sana_wm.camera.actions): the release-scheme semantics, the opt-in unified
scheme (docs/design/camera.md §8), error messages, and equality with the diffusers port's `action_string_to_c2w`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sana_wm.camera import ACTION_KEYMAPS, action_to_c2w, look_angles, parse_action, validate_c2w

cam_utils = pytest.importorskip("diffusers.pipelines.sana_wm.cam_utils")


def forward_axis(pose: np.ndarray) -> np.ndarray:
    return pose[:3, 2]


def pitch_deg(pose: np.ndarray) -> float:
    """Positive = looking up (forward has −Y in OpenCV)."""
    return math.degrees(math.asin(-float(pose[1, 2])))


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------


def test_parse_action_expands_segments():
    frames = parse_action(" W-2，dW-1 , none-2,IIk-1")
    assert frames == [
        frozenset("w"),
        frozenset("w"),
        frozenset("dw"),
        frozenset(),
        frozenset(),
        frozenset("ik"),  # duplicates count once
    ]
    assert all(isinstance(f, frozenset) for f in frames)
    assert parse_action("NONE-3") == [frozenset()] * 3
    assert len(parse_action("w-007")) == 7


@pytest.mark.parametrize(
    "action,pattern",
    [
        ("", r"`action` is empty"),
        ("   ", r"`action` is empty"),
        ("w-3,x-2", r"segment 1 'x-2' has unknown key\(s\) \['x'\]"),
        ("w-3,wq-2", r"segment 1 'wq-2' has unknown key\(s\) \['q'\]"),
        ("w3", r"segment 0 'w3' has no '-'"),
        ("w-2,d", r"segment 1 'd' has no '-'"),
        ("w-0", r"segment 0 'w-0' has frame count '0'; expected a positive integer"),
        ("w-2,a--4", r"segment 1 'a--4' has frame count '-4'"),
        ("w-1.5", r"frame count '1.5'"),
        ("w-", r"segment 0 'w-' has frame count ''"),
        ("w-x", r"frame count 'x'"),
        ("w-2,-5", r"segment 1 '-5' has an empty key part; use 'none-5'"),
        ("w-3,,a-1", r"segment 1 '' is empty"),
        ("w-3,", r"segment 1 '' is empty"),
    ],
)
def test_parse_action_errors_quote_segment_and_index(action, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_action(action)


def test_parse_action_rejects_non_string():
    with pytest.raises(TypeError, match="must be a string"):
        parse_action(["w-1"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# release scheme
# ---------------------------------------------------------------------------------------------


def test_release_sign_conventions():
    P = action_to_c2w("l-10")
    assert P.shape == (11, 4, 4) and P.dtype == np.float32
    f = forward_axis(P[-1])
    assert f[0] > 0.2 and abs(f[1]) < 1e-7  # yaw right: forward gains +x, no pitch
    np.testing.assert_allclose(f, [math.sin(math.radians(12)), 0, math.cos(math.radians(12))], atol=1e-6)
    np.testing.assert_allclose(P[-1, :3, 3], 0.0, atol=0)  # rotation only

    f = forward_axis(action_to_c2w("i-10")[-1])
    assert f[1] < -0.2 and abs(f[0]) < 1e-7  # pitch up: forward gains −y
    assert forward_axis(action_to_c2w("j-10")[-1])[0] < -0.2
    assert forward_axis(action_to_c2w("k-10")[-1])[1] > 0.2

    for action, t in [
        ("d-10", (0.5, 0, 0)),
        ("a-10", (-0.5, 0, 0)),
        ("w-10", (0, 0, 0.5)),
        ("s-10", (0, 0, -0.5)),
    ]:
        P = action_to_c2w(action)
        np.testing.assert_allclose(P[-1, :3, 3], t, atol=1e-5)
        np.testing.assert_array_equal(P[-1, :3, :3], np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(action_to_c2w("none-4"), np.tile(np.eye(4, dtype=np.float32), (5, 1, 1)))


def test_release_pose_count_identity_start_and_rigidity():
    P = action_to_c2w("w-100,dw-60,w-100,aw-60")
    assert P.shape == (321, 4, 4)
    np.testing.assert_array_equal(P[0], np.eye(4))
    validate_c2w(P, atol=1e-5)
    assert np.abs(P[:, 1, 3]).max() == 0.0  # no vertical translation, ever
    P = action_to_c2w("iw-50,lw-50")
    assert np.abs(P[:, 1, 3]).max() < 1e-7  # even while pitched: motion stays horizontal
    # No roll: the camera x axis stays horizontal.
    assert np.abs(P[:, 1, 0]).max() < 1e-6


def test_release_pitch_limit_rejects_whole_steps():
    P = action_to_c2w("i-100")
    pitches = np.array([pitch_deg(p) for p in P])
    assert abs(pitches[-1] - 84.0) < 1e-3  # 70 steps of 1.2°; the 71st (85.2°) is rejected
    assert abs(pitches[70] - 84.0) < 1e-3 and (np.abs(np.diff(pitches[70:])) < 1e-9).all()
    # Rejection is per step: looking back down works immediately.
    P = action_to_c2w("i-100,k-1")
    assert abs(pitch_deg(P[-1]) - 82.8) < 1e-3
    # Never past 85° for any step size, and the same accept/reject decisions as the port.
    for deg in (0.7, 1.0, 3.3, 17.0):
        P = action_to_c2w("k-200,i-400", rotation_speed_deg=deg)
        assert max(abs(pitch_deg(p)) for p in P) <= 85.0 + 1e-4
        ref = cam_utils.action_string_to_c2w("k-200,i-400", rotation_speed_deg=deg)
        np.testing.assert_allclose(P, ref, rtol=0, atol=1e-6)


def test_release_speeds_are_configurable():
    P = action_to_c2w("w-4,l-3", translation_speed=0.25, rotation_speed_deg=10.0)
    np.testing.assert_allclose(P[4, :3, 3], [0, 0, 1.0], atol=1e-5)
    np.testing.assert_allclose(forward_axis(P[-1])[0], math.sin(math.radians(30)), atol=1e-6)
    with pytest.raises(ValueError, match="`translation_speed` must be finite and >= 0"):
        action_to_c2w("w-1", translation_speed=-0.1)
    with pytest.raises(ValueError, match="`rotation_speed_deg` must be finite"):
        action_to_c2w("w-1", rotation_speed_deg=float("nan"))


@pytest.mark.parametrize(
    "action",
    ["w-10", "d-7,a-3", "l-40,i-30,w-20", "IK-5, jw-30，kd-25,none-4", "i-30,lw-50", "wasd-6,ijkl-6,sl-40"],
)
def test_release_matches_port(action):
    ref = cam_utils.action_string_to_c2w(action)
    got = action_to_c2w(action)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    # The spec divides the horizontal axes by (‖·‖ + 1e-6), the port by ‖·‖: translations differ by
    # ≤ 1e-6 × distance travelled (≤ 5 units in these strings).
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert parse_action(action) == [frozenset(k) for k in cam_utils._parse_action_string(action)]


def test_release_long_trajectory_differs_from_port_only_by_the_spec_eps():
    action = "w-100,dw-60,w-100,aw-60"
    ref = cam_utils.action_string_to_c2w(action)
    got = action_to_c2w(action)
    np.testing.assert_allclose(got[:, :3, :3], ref[:, :3, :3], rtol=0, atol=1e-6)
    distance = np.linalg.norm(np.diff(ref[:, :3, 3], axis=0), axis=1).cumsum()
    err = np.linalg.norm(got[1:, :3, 3] - ref[1:, :3, 3], axis=1)
    assert (err <= 1.2e-6 * distance + 1e-6).all()


# ---------------------------------------------------------------------------------------------
# unified scheme (opt-in)
# ---------------------------------------------------------------------------------------------


def test_unified_scheme_mapping_and_defaults():
    P = action_to_c2w("w-10", scheme="unified")
    np.testing.assert_allclose(P[-1, :3, 3], [0, 0, 0.25], atol=1e-5)  # 0.025 per frame, snap on press
    f = forward_axis(action_to_c2w("d-10", scheme="unified")[-1])  # d = yaw right
    np.testing.assert_allclose(f[0], math.sin(math.radians(6.0)), atol=1e-6)
    np.testing.assert_allclose(action_to_c2w("j-10", scheme="unified")[-1, :3, 3], [-0.25, 0, 0], atol=1e-5)
    np.testing.assert_allclose(action_to_c2w("l-10", scheme="unified")[-1, :3, 3], [0.25, 0, 0], atol=1e-5)
    assert forward_axis(action_to_c2w("a-10", scheme="unified")[-1])[0] < 0
    # Explicit speeds override the scheme defaults.
    P = action_to_c2w("w-10", translation_speed=0.05, scheme="unified")
    np.testing.assert_allclose(P[-1, :3, 3], [0, 0, 0.5], atol=1e-5)


def test_unified_smoothing_coasts_and_eases():
    P = action_to_c2w("w-10,none-20", scheme="unified")
    steps = np.diff(P[:, 2, 3])
    np.testing.assert_allclose(steps[:10], 0.025, atol=1e-7)
    decay = math.exp(-(1 / 16) / 1.0)  # τ = 1.0 s toward a zero target
    np.testing.assert_allclose(steps[10:13], 0.025 * decay ** np.arange(1, 4), rtol=1e-5)
    assert (steps[10:] > 0).all()  # keeps gliding after release

    # Releasing one of two held keys is not a fresh press: the other component eases toward its target.
    P = action_to_c2w("wl-10,w-5", scheme="unified")
    strafe = np.diff(P[:, 0, 3])
    np.testing.assert_allclose(strafe[10], 0.025 * decay, rtol=1e-5)
    # Pressing a new key snaps all components to their targets.
    P = action_to_c2w("w-5,wl-1", scheme="unified")
    np.testing.assert_allclose(np.diff(P[:, 0, 3])[-1], 0.025, rtol=1e-5)


def test_unified_pitch_clamps_at_60_degrees():
    P = action_to_c2w("i-200", scheme="unified")
    pitches = np.array([pitch_deg(p) for p in P])
    assert pitches.max() <= 60.0 + 1e-4
    assert abs(pitches[-1] - 60.0) < 1e-4 and abs(pitches[100] - 60.0) < 1e-4


def test_unknown_scheme_rejected():
    with pytest.raises(ValueError, match=r"`scheme` must be one of \['release', 'unified'\]; got 'v2'"):
        action_to_c2w("w-1", scheme="v2")


@pytest.mark.parametrize("scheme", ["release", "unified"])
def test_each_scheme_moves_as_its_key_map_names(scheme):
    """One frame per key: the key map's name for the key is the motion the rollout makes."""
    k = ACTION_KEYMAPS[scheme]
    moves = {k.forward: (2, +1), k.back: (2, -1), k.right: (0, +1), k.left: (0, -1)}  # (axis of t, sign)
    turns = {k.yaw_right: (0, +1), k.yaw_left: (0, -1), k.pitch_up: (1, +1), k.pitch_down: (1, -1)}  # (yaw|pitch)
    assert sorted(moves | turns) == sorted("wasdijkl")
    for key, (axis, sign) in moves.items():
        t = action_to_c2w(f"{key}-1", scheme=scheme)[1, :3, 3]
        assert sign * t[axis] > 0 and np.count_nonzero(t) == 1, (key, t)
    for key, (which, sign) in turns.items():
        angles = look_angles(action_to_c2w(f"{key}-1", scheme=scheme)[1])
        assert sign * angles[which] > 0 and abs(angles[1 - which]) < 1e-7, (key, angles)
