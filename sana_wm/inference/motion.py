"""Does a generated video move the way it was commanded? Camera motion re-estimated from the pixels.

Used by the CPU demo's camera-following score and usable on any video with an action-DSL command. Two image-space
cues, both from phase correlation (global translation by the normalised cross-power spectrum) of consecutive
frames, summed over a segment of the command:

* **turn** — the whole frame's horizontal shift. A camera yawing right (``sana_wm.camera``: positive yaw turns
  right) sees the scene slide left, so the expected sign of the shift is minus the commanded yaw's.
* **move forward / back** — radial expansion: the right half's horizontal shift minus the left half's, plus the
  bottom half's vertical shift minus the top half's, divided by the half-sizes (a relative scale change). Walking
  forward spreads the image out (positive), walking back pulls it in. A pure turn shifts both halves alike and
  cancels out.

A check passes when the cue has the commanded sign *and* a magnitude above a small floor (a frozen video fails
rather than scoring a coin flip). Pixels are (F, H, W, 3) uint8 RGB, as :class:`GenerationResult.video`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sana_wm.camera import ACTION_KEYMAPS, parse_action

__all__ = ["phase_shift", "segment_motion", "command_segments", "MotionCheck", "camera_following",
           "following_rate"]

#: Smallest |shift| in pixels summed over a segment that counts as a turn.
MIN_TURN_PX = 1.0
#: Smallest relative expansion summed over a segment that counts as moving forward / back.
MIN_EXPANSION = 0.01
#: Gain of the low-pass of :func:`phase_shift` at the block grid's fundamental frequency (1 / block period).
BLOCK_LOWPASS_GAIN = 0.01


def _gray(frame: np.ndarray) -> np.ndarray:
    return np.asarray(frame, np.float64) @ np.array([0.299, 0.587, 0.114])


def _check_block(block_px: int | None) -> None:
    if block_px is not None and (isinstance(block_px, bool) or not isinstance(block_px, int) or block_px < 2):
        raise ValueError(f"block_px must be None or an integer >= 2 (the codec's spatial compression); got {block_px!r}")


def phase_shift(a: np.ndarray, b: np.ndarray, block_px: int | None = None) -> tuple[float, float]:
    """(dy, dx) in pixels by which the content of grayscale image ``b`` is displaced relative to ``a``.

    Phase correlation with a Hann window and a parabolic sub-pixel peak; shifts beyond half the size wrap.

    ``block_px``: the period of a block grid to ignore (a patch codec's spatial compression). Phase correlation
    whitens the spectrum, so the many high frequencies of a block grid — edges at the same places in every frame —
    outvote the scene and the peak lands on a multiple of the period whatever the motion. With ``block_px`` the
    whitened cross-power is weighted by a Gaussian low-pass whose response at the grid's fundamental frequency
    1/``block_px`` is :data:`BLOCK_LOWPASS_GAIN`, so only structure coarser than the blocks votes (the peak of a
    true translation stays where it is; it only widens).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"phase_shift: need two 2-D images of one shape; got {a.shape} and {b.shape}")
    _check_block(block_px)
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa = np.fft.fft2((a - a.mean()) * win)
    fb = np.fft.fft2((b - b.mean()) * win)
    cross = fb * np.conj(fa)
    cross = cross / (np.abs(cross) + 1e-9)
    if block_px is not None:
        fy, fx = np.fft.fftfreq(a.shape[0])[:, None], np.fft.fftfreq(a.shape[1])[None, :]
        cross = cross * BLOCK_LOWPASS_GAIN ** ((fy**2 + fx**2) * block_px**2)
    r = np.fft.ifft2(cross).real
    iy, ix = np.unravel_index(int(np.argmax(r)), r.shape)

    def refine(i: int, n: int, axis_vals) -> float:
        lo, mid, hi = axis_vals((i - 1) % n), axis_vals(i), axis_vals((i + 1) % n)
        den = lo - 2 * mid + hi
        off = 0.5 * (lo - hi) / den if abs(den) > 1e-12 else 0.0
        v = i + float(np.clip(off, -0.5, 0.5))
        return v - n if v > n / 2 else v

    dy = refine(iy, r.shape[0], lambda j: r[j, ix])
    dx = refine(ix, r.shape[1], lambda j: r[iy, j])
    return dy, dx


def segment_motion(frames: np.ndarray, start: int, end: int, block_px: int | None = None) -> tuple[float, float]:
    """(horizontal shift in pixels, relative expansion) of ``frames[start..end]``, summed over consecutive pairs
    (``block_px``: see :func:`phase_shift`)."""
    if not 0 <= start < end < len(frames):
        raise ValueError(f"segment_motion: need 0 <= start < end < {len(frames)}; got {start}, {end}")
    H, W = frames.shape[1:3]
    shift = expansion = 0.0
    prev = _gray(frames[start])
    for i in range(start + 1, end + 1):
        cur = _gray(frames[i])
        shift += phase_shift(prev, cur, block_px)[1]
        left = phase_shift(prev[:, : W // 2], cur[:, : W // 2], block_px)[1]
        right = phase_shift(prev[:, W // 2 :], cur[:, W // 2 :], block_px)[1]
        top = phase_shift(prev[: H // 2], cur[: H // 2], block_px)[0]
        bottom = phase_shift(prev[H // 2 :], cur[H // 2 :], block_px)[0]
        expansion += (right - left) / (W / 2) + (bottom - top) / (H / 2)
        prev = cur
    return shift, expansion


def command_segments(action: str, scheme: str = "release") -> list[tuple[int, int, int, int]]:
    """Segments of an action-DSL string as (first frame, last frame, yaw sign, forward sign).

    Yaw sign +1 = turn right, −1 = turn left, 0 = none; forward sign +1 = forward, −1 = back, 0 = none. Frame
    indices follow :func:`sana_wm.camera.action_to_c2w` (frame 0 is the start pose, each step adds one frame).
    """
    if scheme not in ACTION_KEYMAPS:
        raise ValueError(f"unknown action scheme {scheme!r}; expected one of {sorted(ACTION_KEYMAPS)}")
    k = ACTION_KEYMAPS[scheme]
    held = parse_action(action)  # the DSL's own rules (key case, spaces, full-width commas, unknown keys)
    out, frame = [], 0
    for seg in action.replace("，", ",").split(","):
        n = len(parse_action(seg))
        keys = held[frame]
        yaw = (k.yaw_right in keys) - (k.yaw_left in keys)
        fwd = (k.forward in keys) - (k.back in keys)
        out.append((frame, frame + n, int(yaw), int(fwd)))
        frame += n
    return out


@dataclass(frozen=True)
class MotionCheck:
    """One commanded motion of one segment and what the video did.

    kind: 'turn' or 'move'. expected: +1 / −1 (turn right / left; forward / back). measured: the cue (pixels for a
    turn, relative expansion for a move), already signed so that a positive value agrees with ``expected`` = +1.
    ok: the sign agrees and the magnitude passes the floor.
    """

    action: str
    segment: int
    kind: str
    expected: int
    measured: float
    ok: bool


def camera_following(frames: np.ndarray, action: str, scheme: str = "release",
                     frame_offset: int = 0, block_px: int | None = None) -> list[MotionCheck]:
    """One :class:`MotionCheck` per turn and per forward/back move commanded by ``action`` (segments that run past
    the video's last frame are cut to it; segments left with no frame pair are skipped).

    ``frame_offset``: the command frame that ``frames[0]`` shows (``GenerationResult.frame_offset``: 1 after the
    refiner dropped the sink frame); segments are shifted by it and cut at frame 0.
    ``block_px``: the decoder's block period to ignore (the codec's spatial compression; see :func:`phase_shift`).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"camera_following: frames must be (F, H, W, 3); got {frames.shape}")
    if frame_offset < 0:
        raise ValueError(f"camera_following: frame_offset must be >= 0; got {frame_offset}")
    _check_block(block_px)
    checks = []
    for i, (a, b, yaw, fwd) in enumerate(command_segments(action, scheme)):
        a, b = max(a - frame_offset, 0), min(b - frame_offset, len(frames) - 1)
        if b <= a or (yaw == 0 and fwd == 0):
            continue
        shift, expansion = segment_motion(frames, a, b, block_px)
        if yaw:
            turn = -shift  # the scene slides opposite to the turn
            checks.append(MotionCheck(action, i, "turn", yaw, float(turn), bool(np.sign(turn) == yaw and abs(turn) >= MIN_TURN_PX)))
        if fwd:
            checks.append(MotionCheck(action, i, "move", fwd, float(expansion),
                                      bool(np.sign(expansion) == fwd and abs(expansion) >= MIN_EXPANSION)))
    return checks


def following_rate(checks: list[MotionCheck]) -> dict:
    """{"rate": fraction of checks passed, "passed", "checks", "by_kind": {kind: rate}, "details": [...]}."""
    kinds = sorted({c.kind for c in checks})
    return {
        "rate": float(np.mean([c.ok for c in checks])) if checks else float("nan"),
        "passed": int(sum(c.ok for c in checks)),
        "checks": len(checks),
        "by_kind": {k: float(np.mean([c.ok for c in checks if c.kind == k])) for k in kinds},
        "details": [asdict(c) for c in checks],
    }
