"""Camera paths through a synthetic room: random action-DSL rollouts and smooth 6-DoF paths.

Both stay inside the free space (away from walls and objects) and keep room ahead of the camera. Yaw, pitch and
roll follow :mod:`sana_wm.camera` (positive yaw turns right, positive pitch looks up), so the poses mean what
the DSL and the overlay mean. Runs in the dataset builder's parent process only (it imports ``sana_wm.camera``,
hence torch; render workers never import this module).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sana_wm.camera import ACTION_KEYMAPS, action_to_c2w, pitch_matrix, roll_matrix, yaw_matrix

from .scene import Scene

__all__ = ["random_action", "check_segments", "describe_action", "room_start", "dsl_trajectory", "smooth_trajectory"]

# Segment vocabulary of the random DSL strings (keys of the release scheme, docs/design/camera.md §8).
_DSL_SEGMENTS = ("w", "w", "wl", "wj", "l", "j", "a", "d", "s", "wa", "wd", "i", "k", "none", "dl", "aj")
_KEYS = ACTION_KEYMAPS["release"]
_KEY_PHRASES = {_KEYS.forward: "forward", _KEYS.back: "backward", _KEYS.left: "left", _KEYS.right: "right"}
_ROT_PHRASES = {_KEYS.yaw_left: "turning left", _KEYS.yaw_right: "turning right", _KEYS.pitch_up: "tilting up",
                _KEYS.pitch_down: "tilting down"}


def random_action(rng: np.random.Generator, num_steps: int, segments: tuple[str, ...] | None = None) -> str:
    """A random DSL string of 1–4 segments whose lengths sum to ``num_steps`` (= num_frames − 1), each segment's
    keys drawn from ``segments`` (default: every key group of the release scheme, forward twice as often)."""
    if num_steps < 1:
        raise ValueError(f"`num_steps` must be >= 1; got {num_steps}.")
    segments = _DSL_SEGMENTS if segments is None else check_segments(segments)
    n_seg = int(rng.integers(1, min(4, max(1, num_steps // 4)) + 1))
    cuts = np.sort(rng.choice(np.arange(1, num_steps), size=n_seg - 1, replace=False)) if n_seg > 1 else np.array([], int)
    lengths = np.diff(np.concatenate([[0], cuts, [num_steps]])).astype(int)
    segs = []
    for n in lengths:
        keys = str(rng.choice(segments))
        segs.append(f"{keys}-{n}")
    return ",".join(segs)


def check_segments(segments) -> tuple[str, ...]:
    """``segments`` (key groups such as ``("w", "wl", "none")``) as a tuple, or ValueError naming a group that is not
    made of the release scheme's keys."""
    segments = tuple(segments)
    keys = set("".join(_DSL_SEGMENTS)) - set("none")
    bad = [g for g in segments if g != "none" and (not g or not set(g) <= keys)]
    if not segments or bad:
        raise ValueError(f"DSL segments must be key groups of {''.join(sorted(keys))} or 'none'; got {list(segments)}")
    return segments


def describe_action(action: str) -> str:
    """English description of a DSL string, e.g. 'moves forward, then turns right'."""
    phrases = []
    for seg in action.split(","):
        keys, _ = seg.strip().rsplit("-", 1)
        if keys == "none":
            phrases.append("pauses")
            continue
        moves = [_KEY_PHRASES[k] for k in keys if k in _KEY_PHRASES]
        rots = [_ROT_PHRASES[k] for k in keys if k in _ROT_PHRASES]
        if moves:
            verb = "moves" if moves[0] in ("forward", "backward") else "strafes"
            text = f"{verb} {' and '.join(moves)}"
            if rots:
                text += " while " + " and ".join(rots)
        else:
            text = " and ".join(r.replace("turning", "turns").replace("tilting", "tilts") for r in rots)
        phrases.append(text)
    out = []
    for p in phrases:  # collapse repeats ("moves forward, then moves forward")
        if not out or out[-1] != p:
            out.append(p)
    return ", then ".join(out)


# Metres of room required ahead of every camera of a generated trajectory, relaxed step by step when
# a (long) clip cannot be fitted otherwise.
_CLEARANCE_LEVELS = (3.0, 2.0, 1.0, 0.0)


def _clearance_at(scene: Scene, pos: np.ndarray, yaw: float) -> float:
    T = np.eye(4)
    T[:3, :3] = yaw_matrix(yaw)
    T[:3, 3] = pos
    return float(scene.view_clearance(T[None])[0])


def room_start(rng: np.random.Generator, scene: Scene, tries: int = 200) -> np.ndarray:
    """A ``(4, 4)`` start pose that several DSL paths can share: a level camera as far from walls and objects as a
    few random draws find (margins 2 → 0.5 m, relaxed stepwise), looking at ≥ 3 m of room.

    Clips that share a room and this pose share their first frame, so only the camera path tells them apart.
    """
    lo, hi = np.asarray(scene.room_lo), np.asarray(scene.room_hi)
    for margin in (2.0, 1.5, 1.0, 0.5):
        for _ in range(tries // 4):
            T = np.eye(4)
            T[:3, :3] = yaw_matrix(rng.uniform(-np.pi, np.pi))
            T[:3, 3] = (rng.uniform(lo[0], hi[0]), rng.uniform(-0.15, 0.15), rng.uniform(lo[2], hi[2]))
            if scene.is_free(T[None, :3, 3], wall_margin=margin, object_margin=margin)[0] \
                    and scene.view_clearance(T[None])[0] >= 3.0:
                return T
    raise RuntimeError(f"no free start pose with 3 m of room ahead in a room of {lo}..{hi} after {tries} draws")


def dsl_trajectory(
    rng: np.random.Generator, scene: Scene, num_frames: int, max_tries: int = 40, start: np.ndarray | None = None,
    segments: tuple[str, ...] | None = None, translation_speed: float = 0.05,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random action-DSL trajectory placed inside the free space of ``scene``.

    The DSL rollout (identity start, ``sana_wm.camera.action_to_c2w``) is moved to a random start
    position and heading (or to ``start``, a ``(4, 4)`` pose, when given); if no placement keeps every camera
    centre free, the translation speed is halved (long clips) and, failing that, a new action string is drawn.
    Every camera must also have ≥ 3 m of room ahead (no wall filling the view); clips that cannot meet that relax
    it stepwise. ``segments``: the key groups of the random actions (see :func:`random_action`).
    ``translation_speed``: metres per frame before any halving (rotation: 1.2° per frame).

    Returns:
        ``(num_frames, 4, 4)`` float64 world c2w, and a dict {kind, action, translation_speed,
        rotation_speed_deg, description}.
    """
    lo, hi = np.asarray(scene.room_lo), np.asarray(scene.room_hi)
    per_level = max(1, max_tries // len(_CLEARANCE_LEVELS))

    def rollout(action: str, speed: float) -> np.ndarray:
        return action_to_c2w(action, translation_speed=speed, rotation_speed_deg=1.2).astype(np.float64)

    def fits(world: np.ndarray, min_clearance: float) -> bool:
        # keep clear of walls and objects, and look into the room rather than at a nearby wall
        return bool(scene.is_free(world[:, :3, 3]).all() and scene.view_clearance(world).min() >= min_clearance)

    def found(world, action, speed, min_clearance):
        return world, {"kind": "dsl", "action": action, "translation_speed": speed, "rotation_speed_deg": 1.2,
                       "min_view_clearance": min_clearance, "description": describe_action(action)}

    if start is not None:
        # One start for several clips: every speed-halving comes after all actions at the faster speed, so the
        # clips of a room move alike and differ in their actions.
        T0 = np.asarray(start, dtype=np.float64)
        for halving in range(5):
            speed = translation_speed / 2**halving
            for min_clearance in _CLEARANCE_LEVELS:
                for _ in range(per_level):
                    action = random_action(rng, num_frames - 1, segments)
                    world = T0[None] @ rollout(action, speed)
                    if fits(world, min_clearance):
                        return found(world, action, speed, min_clearance)
    else:
        for min_clearance in _CLEARANCE_LEVELS:  # relax "look into the room" for long, hard-to-fit clips
            for _ in range(per_level):
                action = random_action(rng, num_frames - 1, segments)
                speed = translation_speed
                for _halving in range(5):
                    rel = rollout(action, speed)
                    for _place in range(25):
                        position = (rng.uniform(lo[0], hi[0]), rng.uniform(-0.15, 0.15), rng.uniform(lo[2], hi[2]))
                        T0 = np.eye(4)
                        T0[:3, :3] = yaw_matrix(rng.uniform(-np.pi, np.pi))
                        T0[:3, 3] = position
                        world = T0[None] @ rel
                        if fits(world, min_clearance):
                            return found(world, action, speed, min_clearance)
                    speed /= 2
    raise RuntimeError(f"could not fit a {num_frames}-frame DSL trajectory into the room after {max_tries} actions.")


def _catmull_rom(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` samples of a uniform Catmull-Rom spline through ``points`` (K, D), endpoints included."""
    P = np.concatenate([points[:1], points, points[-1:]])  # clamp the ends
    k = len(points) - 1
    s = np.linspace(0.0, k, n)
    i = np.minimum(s.astype(int), k - 1)
    u = (s - i)[:, None]
    p0, p1, p2, p3 = P[i], P[i + 1], P[i + 2], P[i + 3]
    return 0.5 * (2 * p1 + (p2 - p0) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (3 * p1 - p0 - 3 * p2 + p3) * u**3)


def smooth_trajectory(
    rng: np.random.Generator, scene: Scene, num_frames: int, fps: float, max_tries: int = 200
) -> tuple[np.ndarray, dict[str, Any]]:
    """A smooth random 6-DoF path: waypoints ~2 s apart walked at 0.3–0.8 m/s, heading roughly along
    the motion with ±20° look-around (≤ 40° between waypoints), pitch within ±15°, roll within ±6°,
    interpolated by Catmull-Rom; ≥ 3 m of room ahead of every camera, relaxed stepwise for hard clips.

    Returns:
        ``(num_frames, 4, 4)`` float64 world c2w, and a dict {kind, description}.
    """
    lo, hi = np.asarray(scene.room_lo), np.asarray(scene.room_hi)
    duration = (num_frames - 1) / fps
    k = max(2, int(math.ceil(duration / 2.0)))
    step = duration / k  # seconds between waypoints
    per_level = max(1, max_tries // len(_CLEARANCE_LEVELS))
    levels = [c for c in _CLEARANCE_LEVELS for _ in range(per_level)] + [0.0] * (3 * per_level)  # extra tries at 0
    for min_clearance in levels:
        pos = [np.array([rng.uniform(lo[0], hi[0]), rng.uniform(-0.15, 0.15), rng.uniform(lo[2], hi[2])])]
        if not scene.is_free(pos[0][None], wall_margin=0.7, object_margin=0.65)[0]:
            continue
        heading = rng.uniform(-np.pi, np.pi)
        yaw = [heading + rng.uniform(-1, 1) * math.radians(20)]
        ok = True
        for _w in range(k):
            for _try in range(20):
                h = heading + rng.uniform(-1, 1) * math.radians(50) * (1 + _try / 10)  # widen if blocked
                dist = rng.uniform(0.3, 0.8) * step
                ahead = yaw_matrix(h)[:, 2]  # where a camera yawed by h looks
                nxt = pos[-1] + np.array([ahead[0] * dist, rng.uniform(-0.1, 0.1), ahead[2] * dist])
                nxt[1] = np.clip(nxt[1], -0.2, 0.2)
                # waypoints keep 0.2 m more margin than the path needs: the spline overshoots a little
                if scene.is_free(nxt[None], wall_margin=0.7, object_margin=0.65)[0]:
                    heading = h
                    break
            else:
                ok = False
                break
            pos.append(nxt)
            # Look around by up to ±20° but turn at most 40° between waypoints (≤ ~20°/s); among a few
            # draws keep the first with enough room ahead, else the one with the most.
            best = None
            for _c in range(8):
                cand = yaw[-1] + float(np.clip(heading + rng.uniform(-1, 1) * math.radians(20) - yaw[-1], -math.radians(40), math.radians(40)))
                clearance = _clearance_at(scene, nxt, cand)
                if best is None or clearance > best[1]:
                    best = (cand, clearance)
                if clearance >= min_clearance:
                    break
            yaw.append(best[0])
        if not ok:
            continue
        yaw_arr = np.unwrap(np.array(yaw))
        pitch = rng.uniform(-math.radians(15), math.radians(15), size=k + 1)
        roll = rng.uniform(-math.radians(6), math.radians(6), size=k + 1)
        path = _catmull_rom(np.concatenate([np.stack(pos), np.stack([yaw_arr, pitch, roll], axis=1)], axis=1), num_frames)
        if not scene.is_free(path[:, :3]).all():
            continue
        c2w = np.tile(np.eye(4), (num_frames, 1, 1))
        for f, (x, y, z, ya, pi, ro) in enumerate(path):
            c2w[f, :3, :3] = yaw_matrix(ya) @ pitch_matrix(pi) @ roll_matrix(ro)
            c2w[f, :3, 3] = (x, y, z)
        if scene.view_clearance(c2w).min() < min_clearance:
            continue
        turn = math.degrees(yaw_arr[-1] - yaw_arr[0])
        desc = "glides smoothly through the room, looking around"
        if abs(turn) > 30:
            desc += f" and turning {'right' if turn > 0 else 'left'}"
        return c2w, {"kind": "smooth", "min_view_clearance": min_clearance, "description": desc}
    raise RuntimeError(f"could not fit a smooth {num_frames}-frame trajectory into the room after {max_tries} tries.")
