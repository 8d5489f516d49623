"""WASD + joystick overlay drawn from a camera trajectory (numpy + PIL).

The controls are *derived from the poses*, not from the action string, so the overlay also works for ``--camera``
files. For frame k the motion is the step from pose k to pose k + 1 (the last frame repeats the previous step):

* translation Δt = t_{k+1} − t_k is split along the new camera's ground-plane forward and right axes
  (:func:`sana_wm.camera.ground_axes`, the axes the DSL moves along): forward > thr lights W,
  < −thr lights S; right > thr lights D, < −thr lights A;
* yaw ψ and pitch θ of the optical axis (:func:`sana_wm.camera.look_angles`, signed as the DSL turns): Δψ > thr
  lights L (yaw right), < −thr J; Δθ > thr lights I (pitch up), < −thr K.

Thresholds are relative to the trajectory's own motion (30 % of the 95th percentile of the per-frame magnitude, with a
small absolute floor), so a DSL rollout reproduces its held keys exactly and small jitter in a real trajectory stays
dark. Keys come from the scheme's :data:`sana_wm.camera.ACTION_KEYMAPS` entry (``unified``: J/L strafe, A/D yaw).

Drawing: a WASD key cluster bottom-left (translation) and a joystick bottom-right whose knob shows the look rate
(yaw → x, pitch up → up), ringed by the rotation keys; held keys are lit. Each distinct control state is rendered
once and alpha-blended into the bottom band of the frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sana_wm.camera import ACTION_KEYMAPS, ground_axes, look_angles

__all__ = ["Controls", "derive_controls", "draw_overlay"]

_REL_THRESHOLD = 0.3
_TRANSLATION_FLOOR = 1e-6
_ROTATION_FLOOR = math.radians(0.01)


@dataclass(frozen=True)
class Controls:
    """Per-frame controls of a trajectory of F poses.

    keys: F frozensets of held keys. move: (F, 2) float32 (strafe right, forward), in [−1, 1] relative to the
    trajectory's typical speed. look: (F, 2) float32 (yaw right, pitch up), same normalisation. scheme: key labels.
    """

    keys: list[frozenset[str]]
    move: np.ndarray
    look: np.ndarray
    scheme: str = "release"

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, item: slice) -> Controls:
        if not isinstance(item, slice):
            raise TypeError("Controls supports slicing only, e.g. controls[1:]")
        return Controls(self.keys[item], self.move[item], self.look[item], self.scheme)


def _scale(values: np.ndarray, floor: float) -> float:
    mags = np.abs(values[np.abs(values) > floor])
    return float(np.percentile(mags, 95)) if mags.size else 0.0


def derive_controls(c2w: np.ndarray, scheme: str = "release") -> Controls:
    """Held keys and stick positions for every pose of a c2w trajectory (see module docstring).

    Args:
        c2w: (F, 4, 4) OpenCV camera-to-world poses (F ≥ 1).
        scheme: ``"release"`` or ``"unified"`` key labels.

    Returns:
        :class:`Controls` with F entries.
    """
    if scheme not in ACTION_KEYMAPS:
        raise ValueError(f"scheme must be one of {sorted(ACTION_KEYMAPS)}; got {scheme!r}")
    P = np.asarray(c2w, dtype=np.float64)
    if P.ndim != 3 or P.shape[1:] != (4, 4) or P.shape[0] < 1:
        raise ValueError(f"c2w must have shape (F, 4, 4); got {P.shape}")
    F = P.shape[0]
    if F == 1:
        return Controls([frozenset()], np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32), scheme)
    t = P[:, :3, 3]
    heading, elevation = look_angles(P)
    forward_axis, right_axis = ground_axes(P[1:])  # the axes of the pose each step arrives at
    dt = t[1:] - t[:-1]  # (F-1, 3)
    fwd = np.einsum("fi,fi->f", dt, forward_axis)
    right = np.einsum("fi,fi->f", dt, right_axis)
    d_yaw = (heading[1:] - heading[:-1] + math.pi) % (2 * math.pi) - math.pi
    d_pitch = elevation[1:] - elevation[:-1]

    s_t = _scale(np.concatenate([fwd, right]), _TRANSLATION_FLOOR)
    s_r = _scale(np.concatenate([d_yaw, d_pitch]), _ROTATION_FLOOR)
    thr_t = max(_TRANSLATION_FLOOR, _REL_THRESHOLD * s_t)
    thr_r = max(_ROTATION_FLOOR, _REL_THRESHOLD * s_r)
    k = ACTION_KEYMAPS[scheme]
    keys = []
    for i in range(F - 1):
        held = set()
        if fwd[i] > thr_t:
            held.add(k.forward)
        elif fwd[i] < -thr_t:
            held.add(k.back)
        if right[i] > thr_t:
            held.add(k.right)
        elif right[i] < -thr_t:
            held.add(k.left)
        if d_yaw[i] > thr_r:
            held.add(k.yaw_right)
        elif d_yaw[i] < -thr_r:
            held.add(k.yaw_left)
        if d_pitch[i] > thr_r:
            held.add(k.pitch_up)
        elif d_pitch[i] < -thr_r:
            held.add(k.pitch_down)
        keys.append(frozenset(held))
    keys.append(keys[-1])  # the last pose has no next step: show the previous one

    def norm(x: np.ndarray, s: float) -> np.ndarray:
        return np.clip(x / s, -1.0, 1.0) if s > 0 else np.zeros_like(x)

    move = np.stack([norm(right, s_t), norm(fwd, s_t)], axis=1)
    look = np.stack([norm(d_yaw, s_r), norm(d_pitch, s_r)], axis=1)
    move = np.concatenate([move, move[-1:]]).astype(np.float32)
    look = np.concatenate([look, look[-1:]]).astype(np.float32)
    return Controls(keys, move, look, scheme)


# ---------------------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------------------

_LIT = (255, 196, 40, 235)
_UNLIT = (30, 30, 30, 150)
_EDGE = (255, 255, 255, 200)
_TEXT_LIT = (20, 20, 20, 255)
_TEXT_UNLIT = (235, 235, 235, 255)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(6, size))
    except TypeError:  # Pillow < 10.1 has a fixed-size default font
        return ImageFont.load_default()


def _layout(H: int, W: int) -> dict:
    """Pixel geometry of the overlay for an H × W frame: key unit u and the two widgets' anchors."""
    u = max(6, int(round(min(H, W) / 10)))
    margin = max(2, u // 3)
    band_top = max(0, H - 3 * u - 2 * margin)
    return {
        "u": u,
        "margin": margin,
        "band_top": band_top,
        "cluster": (margin, H - 2 * u - margin),  # top-left of the W key row's left neighbour cell
        "stick": (W - margin - int(1.5 * u), H - margin - int(1.5 * u)),  # joystick centre
        "stick_r": int(1.05 * u),
    }


def _render(H: int, W: int, held: frozenset[str], look: tuple[float, float], scheme: str) -> np.ndarray:
    """RGBA float32 (band_h, W, 4) patch of the overlay band for one control state (alpha in [0, 1])."""
    from PIL import Image, ImageDraw

    g = _layout(H, W)
    u, top = g["u"], g["band_top"]
    img = Image.new("RGBA", (W, H - top), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    font = _font(int(0.55 * u))
    k = ACTION_KEYMAPS[scheme]
    x0, y0 = g["cluster"][0], g["cluster"][1] - top
    pad = max(1, u // 12)
    cells = {k.forward: (1, 0), k.left: (0, 1), k.back: (1, 1), k.right: (2, 1)}
    for key, (cx, cy) in cells.items():
        box = (x0 + cx * u + pad, y0 + cy * u + pad, x0 + (cx + 1) * u - pad, y0 + (cy + 1) * u - pad)
        lit = key in held
        draw.rounded_rectangle(box, radius=max(1, u // 6), fill=_LIT if lit else _UNLIT, outline=_EDGE,
                               width=max(1, u // 24))
        draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), key.upper(), font=font,
                  fill=_TEXT_LIT if lit else _TEXT_UNLIT, anchor="mm")

    sx, sy = g["stick"][0], g["stick"][1] - top
    r = g["stick_r"]
    draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=_UNLIT, outline=_EDGE, width=max(1, u // 24))
    kr = max(2, int(0.35 * u))
    travel = r - kr
    kx, ky = sx + look[0] * travel, sy - look[1] * travel  # pitch up moves the knob up
    active = bool({k.yaw_left, k.yaw_right, k.pitch_up, k.pitch_down} & held)
    draw.ellipse((kx - kr, ky - kr, kx + kr, ky + kr), fill=_LIT if active else (200, 200, 200, 220), outline=_EDGE)
    small = _font(int(0.4 * u))
    off = r + max(3, int(0.3 * u))
    for key, (dx, dy) in {k.pitch_up: (0, -1), k.pitch_down: (0, 1), k.yaw_left: (-1, 0), k.yaw_right: (1, 0)}.items():
        lit = key in held
        draw.text((sx + dx * off, sy + dy * off), key.upper(), font=small,
                  fill=_LIT if lit else _TEXT_UNLIT, anchor="mm", stroke_width=1, stroke_fill=(0, 0, 0, 255))
    patch = np.asarray(img, dtype=np.float32)
    patch[..., 3] /= 255.0
    return patch


def draw_overlay(frames: np.ndarray, controls: Controls) -> np.ndarray:
    """Return a copy of ``frames`` (uint8 (F, H, W, 3)) with the controls drawn on every frame.

    ``controls`` must have F entries (slice it to align, e.g. ``controls[1:]`` when the sink frame was dropped).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3); got {frames.dtype} {frames.shape}")
    F, H, W, _ = frames.shape
    if len(controls) != F:
        raise ValueError(f"controls has {len(controls)} entries for {F} frames; slice the trajectory to match")
    top = _layout(H, W)["band_top"]
    out = frames.copy()
    cache: dict[tuple, list[tuple[int, np.ndarray]]] = {}
    for i in range(F):
        # Quantise the knob so near-identical states share one rendering.
        look = (round(float(controls.look[i, 0]), 2), round(float(controls.look[i, 1]), 2))
        state = (controls.keys[i], look)
        if state not in cache:
            cache[state] = _column_runs(_render(H, W, controls.keys[i], look, controls.scheme))
        for c0, patch in cache[state]:  # blend only the drawn columns (two widgets), not the whole band
            c1 = c0 + patch.shape[1]
            alpha = patch[..., 3:4]
            band = out[i, top:, c0:c1].astype(np.float32)
            out[i, top:, c0:c1] = np.clip(patch[..., :3] * alpha + band * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)
    return out


def _column_runs(patch: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Split an RGBA band into its runs of columns that have any non-transparent pixel: [(first column, sub-patch)]."""
    used = (patch[..., 3] > 0).any(axis=0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], used.astype(np.int8), [0]])))
    return [(int(a), patch[:, a:b]) for a, b in zip(edges[::2], edges[1::2], strict=True)]
