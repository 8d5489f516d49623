"""Keyboard-action DSL → camera trajectory (issue 5; docs/design/camera.md §8 derives it).

Syntax: comma-separated segments ``<keys>-<frames>`` (full-width ``，`` also separates; whitespace
is ignored; keys are case-insensitive and duplicates count once). ``none-N`` holds the pose for N
frames. Example: ``"w-30, wl-20, none-8"``.

Default scheme ``"release"`` (the first public release; the project's specification):

====  =========================  ====  ===========================
key   motion                     key   motion
====  =========================  ====  ===========================
w     forward (horizontal)       i     pitch up   (camera X axis)
s     back                       k     pitch down
a     strafe left                j     yaw left   (world Y axis)
d     strafe right               l     yaw right
====  =========================  ====  ===========================

with 0.05 units and 1.2° per frame, no smoothing, and a step that would take |pitch| past 85° is
dropped whole. Opt-in scheme ``"unified"`` (NVIDIA's later CLI): a/d yaw, j/l strafe,
0.025 units and 0.6° per frame, exponential velocity smoothing (snap on a fresh key press, ease with
τ = 0.45 s toward a non-zero target and 1.0 s toward zero at 16 fps), pitch clamped to ±60°.

Both roll out from the identity pose in the OpenCV convention of :mod:`sana_wm.camera.convention`
(+X right, +Y down, +Z forward): yaw pre-multiplies R_y (about world Y, positive turns right, i.e.
forward rotates toward +X), pitch post-multiplies R_x (about the camera X axis, positive looks up, i.e.
forward gains −Y). Translation stays in the world horizontal plane: no roll and no vertical motion can
be produced. N DSL frames give N + 1 poses (pose 0 is the identity).
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np

from .convention import pitch_matrix, yaw_matrix

__all__ = ["ACTION_KEYS", "ACTION_SCHEMES", "ACTION_KEYMAPS", "KeyMap", "parse_action", "action_to_c2w"]


class KeyMap(NamedTuple):
    """The key that drives each motion in one scheme (``left`` / ``right`` strafe; yaw and pitch turn)."""

    forward: str
    back: str
    left: str
    right: str
    yaw_left: str
    yaw_right: str
    pitch_up: str
    pitch_down: str


#: Keys per scheme. The rollouts below and the overlay that reads keys back from poses both use this table.
ACTION_KEYMAPS: dict[str, KeyMap] = {
    "release": KeyMap(forward="w", back="s", left="a", right="d", yaw_left="j", yaw_right="l", pitch_up="i",
                      pitch_down="k"),
    "unified": KeyMap(forward="w", back="s", left="j", right="l", yaw_left="a", yaw_right="d", pitch_up="i",
                      pitch_down="k"),
}
ACTION_KEYS: frozenset[str] = frozenset("wasdijkl")
ACTION_SCHEMES: tuple[str, ...] = tuple(ACTION_KEYMAPS)

# (translation per frame, rotation degrees per frame) when the caller passes None.
_DEFAULT_SPEEDS = {"release": (0.05, 1.2), "unified": (0.025, 0.6)}
_RELEASE_PITCH_LIMIT_DEG = 85.0
_UNIFIED_PITCH_LIMIT_DEG = 60.0
_UNIFIED_FPS = 16.0
_UNIFIED_TAU_PRESS = 0.45  # s, easing toward a non-zero target
_UNIFIED_TAU_COAST = 1.0  # s, easing toward zero after release
_HORIZONTAL_EPS = 1e-6  # the horizontal forward/right axes are divided by (‖·‖ + eps)

_COUNT_RE = re.compile(r"[0-9]+")


def parse_action(action: str) -> list[frozenset[str]]:
    """Expand an action string into one held-key set per DSL frame.

    Args:
        action: e.g. ``"w-10,wl-5,none-3"``.

    Returns:
        A list of length N (the total frame count) of frozensets over ``{w,a,s,d,i,j,k,l}``; ``none``
        segments give empty sets.

    Raises:
        ValueError: quoting the offending segment and its 0-based index for an empty segment, a
            missing ``-``, an empty key part, an unknown key, or a frame count that is not a positive
            integer.
    """
    if not isinstance(action, str):
        raise TypeError(f"`action` must be a string such as 'w-10,l-5'; got {type(action).__name__}.")
    if not "".join(action.split()):
        raise ValueError(
            "`action` is empty; expected comma-separated '<keys>-<frames>' segments, e.g. 'w-10,l-5'."
        )
    frames: list[frozenset[str]] = []
    for index, raw in enumerate(action.replace("，", ",").split(",")):
        seg = "".join(raw.split())
        where = f"action segment {index} {raw.strip()!r}"
        if not seg:
            raise ValueError(f"{where} is empty (stray comma?); expected '<keys>-<frames>'.")
        if "-" not in seg:
            raise ValueError(f"{where} has no '-'; expected '<keys>-<frames>', e.g. 'w-10' or 'none-5'.")
        keys_part, count = seg.rsplit("-", 1)
        if keys_part.endswith("-"):  # "w--5": a negative count, not a '-' key
            keys_part, count = keys_part[:-1], "-" + count
        if not _COUNT_RE.fullmatch(count) or int(count) <= 0:
            raise ValueError(f"{where} has frame count {count!r}; expected a positive integer.")
        if not keys_part:
            raise ValueError(f"{where} has an empty key part; use 'none-{int(count)}' to hold the pose.")
        keys_lower = keys_part.lower()
        if keys_lower == "none":
            held: frozenset[str] = frozenset()
        else:
            unknown = sorted(set(keys_lower) - ACTION_KEYS)
            if unknown:
                raise ValueError(
                    f"{where} has unknown key(s) {unknown}; allowed keys are w, a, s, d, i, j, k, l or 'none'."
                )
            held = frozenset(keys_lower)
        frames.extend([held] * int(count))
    return frames


def _horizontal(axis: np.ndarray) -> np.ndarray:
    """Project a world direction onto the horizontal (y = 0) plane and normalise with the spec's eps.

    Not :func:`sana_wm.camera.convention.ground_axes`: the rollout must divide by ‖h‖ + eps exactly as
    specified, one vector at a time, to reproduce the reference trajectories to the last bit."""
    h = np.array([axis[0], 0.0, axis[2]])
    n = float(np.linalg.norm(h))
    return h / (n + _HORIZONTAL_EPS) if n > 0 else h


def _resolve_speed(value: float | None, default: float, name: str) -> float:
    if value is None:
        return default
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a real number or None; got {value!r}.") from err
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"`{name}` must be finite and >= 0; got {value!r}.")
    return v


def _step_pose(R: np.ndarray, t: np.ndarray, yaw: float, pitch: float, fwd: float, strafe: float):
    """One integration step: R ← R_y(yaw)·R·R_x(pitch); t += fwd·forward_h + strafe·right_h (new R)."""
    R_new = yaw_matrix(yaw) @ R @ pitch_matrix(pitch)
    t_new = t + fwd * _horizontal(R_new[:, 2]) + strafe * _horizontal(R_new[:, 0])
    return R_new, t_new


def _pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    P = np.eye(4)
    P[:3, :3] = R
    P[:3, 3] = t
    return P


def _rollout_release(frames: list[frozenset[str]], v: float, omega: float) -> list[np.ndarray]:
    limit = math.radians(_RELEASE_PITCH_LIMIT_DEG)
    k = ACTION_KEYMAPS["release"]
    R, t, pitch = np.eye(3), np.zeros(3), 0.0
    poses = [_pose(R, t)]
    for held in frames:
        d_pitch = omega * (k.pitch_up in held) - omega * (k.pitch_down in held)
        if abs(pitch + d_pitch) > limit:
            d_pitch = 0.0  # the whole pitch step is rejected, not clamped
        pitch += d_pitch
        d_yaw = omega * (k.yaw_right in held) - omega * (k.yaw_left in held)
        fwd = v * ((k.forward in held) - (k.back in held))
        strafe = v * ((k.right in held) - (k.left in held))
        R, t = _step_pose(R, t, d_yaw, d_pitch, fwd, strafe)
        poses.append(_pose(R, t))
    return poses


def _rollout_unified(frames: list[frozenset[str]], v: float, omega: float) -> list[np.ndarray]:
    limit = math.radians(_UNIFIED_PITCH_LIMIT_DEG)
    dt = 1.0 / _UNIFIED_FPS
    alpha_press = 1.0 - math.exp(-dt / _UNIFIED_TAU_PRESS)
    alpha_coast = 1.0 - math.exp(-dt / _UNIFIED_TAU_COAST)
    k = ACTION_KEYMAPS["unified"]
    R, t, pitch = np.eye(3), np.zeros(3), 0.0
    vel = np.zeros(4)  # (forward, strafe right, yaw right, pitch up) per frame
    prev: frozenset[str] = frozenset()
    poses = [_pose(R, t)]
    for held in frames:
        target = np.array(
            [
                v * ((k.forward in held) - (k.back in held)),
                v * ((k.right in held) - (k.left in held)),
                omega * ((k.yaw_right in held) - (k.yaw_left in held)),
                omega * ((k.pitch_up in held) - (k.pitch_down in held)),
            ]
        )
        if held - prev:  # a fresh key press takes effect immediately
            vel = target.copy()
        else:
            alpha = np.where(np.abs(target) > 1e-12, alpha_press, alpha_coast)
            vel = vel + alpha * (target - vel)
        prev = held
        new_pitch = min(limit, max(-limit, pitch + vel[3]))  # saturates (partial step allowed)
        d_pitch, pitch = new_pitch - pitch, new_pitch
        R, t = _step_pose(R, t, float(vel[2]), d_pitch, float(vel[0]), float(vel[1]))
        poses.append(_pose(R, t))
    return poses


def action_to_c2w(
    action: str,
    translation_speed: float | None = None,
    rotation_speed_deg: float | None = None,
    scheme: str = "release",
) -> np.ndarray:
    """Roll out an OpenCV c2w trajectory from an action string.

    Args:
        action: DSL string, see :func:`parse_action`.
        translation_speed: units per frame; None → 0.05 (release) or 0.025 (unified).
        rotation_speed_deg: degrees per frame; None → 1.2 (release) or 0.6 (unified).
        scheme: ``"release"`` (default, the project's specification) or ``"unified"`` (opt-in).

    Returns:
        ``(N + 1, 4, 4)`` float32 camera-to-world poses for N DSL frames, pose 0 = identity. The
        rollout runs in float64.
    """
    if scheme not in _DEFAULT_SPEEDS:
        raise ValueError(f"`scheme` must be one of {list(ACTION_SCHEMES)}; got {scheme!r}.")
    default_v, default_deg = _DEFAULT_SPEEDS[scheme]
    v = _resolve_speed(translation_speed, default_v, "translation_speed")
    omega = math.radians(_resolve_speed(rotation_speed_deg, default_deg, "rotation_speed_deg"))
    frames = parse_action(action)
    rollout = _rollout_release if scheme == "release" else _rollout_unified
    return np.stack(rollout(frames, v, omega)).astype(np.float32)
