"""Bundled synthetic 3-D world: procedural textured rooms, camera paths, exact poses, shards.

The default dataset of ``make demo`` and of the tests, built on the CPU with numpy in seconds and
with no downloads. It also serves as ground truth for pose annotation and evaluation, since every
frame's camera is known exactly.

* **World**: an axis-aligned room (four walls, floor, ceiling) with procedural materials (checker,
  stripes, bricks, tiles, waves, plain; two colours per material drawn from a named palette) and a
  few axis-aligned boxes and floor-to-ceiling pillars standing near the walls; a point light near the
  ceiling gives Lambert shading. Units are metres, so ``metric_scale`` is 1.
* **Camera**: OpenCV pinhole (``sana_wm.camera`` convention: +X right, +Y down, +Z forward; a pixel
  (u, v) at integer coordinates looks along ``((u − cx)/fx, (v − cy)/fy, 1)``). The world is
  Y-down too: the floor is the plane y = ``room_hi[1]`` and the ceiling y = ``room_lo[1]``.
* **Renderer**: a ray caster vectorised over pixels (room exit by the slab method, boxes by slab
  intersection), with optional ``supersample`` × ``supersample`` anti-aliasing whose sub-samples are
  centred on the integer pixel coordinates, so the pinhole model holds exactly.
* **Trajectories**: random action-DSL strings rolled out by ``sana_wm.camera.action_to_c2w`` and
  placed in the room, or smooth random 6-DoF paths (Catmull-Rom through waypoints, with roll); both
  stay inside the free space (away from walls and objects).
* **Captions** describe the room, the objects and the camera motion.

CLI: ``python -m data.synthetic --out DIR [--num-clips 16 --num-frames 33 --height 128 --width 224]``
writes shards + ``manifest.json``; :func:`build_default_dataset` does the same from Python.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .seeding import seed_for

__all__ = [
    "RENDERER_VERSION",
    "PALETTE",
    "MARKER_COLORS",
    "PATTERNS",
    "Material",
    "Box",
    "Scene",
    "random_scene",
    "pinhole_intrinsics",
    "render",
    "random_action",
    "dsl_trajectory",
    "smooth_trajectory",
    "SyntheticClip",
    "plan_clip",
    "render_clip",
    "make_clip",
    "DEFAULT_CONFIG",
    "build_default_dataset",
    "main",
]

RENDERER_VERSION = "sana-wm-synthetic/1"

#: Named colours (linear-ish RGB in [0, 1]); the names appear in captions.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.72, 0.16, 0.13),
    "orange": (0.90, 0.48, 0.14),
    "yellow": (0.92, 0.80, 0.24),
    "green": (0.24, 0.58, 0.28),
    "teal": (0.13, 0.52, 0.52),
    "blue": (0.19, 0.33, 0.74),
    "purple": (0.48, 0.28, 0.64),
    "pink": (0.90, 0.55, 0.66),
    "brown": (0.48, 0.31, 0.19),
    "grey": (0.50, 0.50, 0.50),
    "white": (0.93, 0.93, 0.90),
    "beige": (0.85, 0.77, 0.60),
    "black": (0.12, 0.12, 0.13),
}
#: Saturated colours reserved for calibration markers (never drawn for random scenes).
MARKER_COLORS: dict[str, tuple[float, float, float]] = {"magenta": (1.0, 0.0, 1.0), "cyan": (0.0, 1.0, 1.0)}
#: Procedural patterns and the adjective used in captions.
PATTERNS: dict[str, str] = {
    "checker": "checkered",
    "stripes": "striped",
    "bricks": "brick",
    "tiles": "tiled",
    "waves": "wavy-patterned",
    "plain": "plain",
}
_WALL_PATTERNS = ("bricks", "stripes", "waves", "tiles", "checker", "plain")
_FLOOR_PATTERNS = ("checker", "tiles", "stripes", "waves")
_CEILING_PATTERNS = ("plain", "tiles", "waves")
_OBJECT_PATTERNS = ("plain", "stripes", "checker", "waves")
_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six")


@dataclass
class Material:
    """A procedural surface material.

    Attributes:
        pattern: one of :data:`PATTERNS`.
        color, color2: palette names (pattern foreground / background).
        scale: pattern period in metres.
        waves: (3, 3) rows of (k_a, k_b, phase) for the 'waves' pattern.
        emissive: if True the colour is drawn unshaded (used for calibration markers).
    """

    pattern: str
    color: str
    color2: str
    scale: float = 0.5
    waves: list[list[float]] = field(default_factory=list)
    emissive: bool = False

    def rgb(self) -> tuple[np.ndarray, np.ndarray]:
        table = {**PALETTE, **MARKER_COLORS}
        return np.array(table[self.color], np.float32), np.array(table[self.color2], np.float32)


@dataclass
class Box:
    """An axis-aligned box ``[lo, hi]`` (world metres) with a material; kind 'box', 'pillar' or 'marker'."""

    lo: list[float]
    hi: list[float]
    material: Material
    kind: str = "box"


@dataclass
class Scene:
    """A room ``[room_lo, room_hi]`` (Y down: floor at y = room_hi[1]) with materials, objects and a light."""

    room_lo: list[float]
    room_hi: list[float]
    walls: Material
    floor: Material
    ceiling: Material
    boxes: list[Box]
    light: list[float]

    def is_free(self, points: np.ndarray, wall_margin: float = 0.5, object_margin: float = 0.45) -> np.ndarray:
        """``(N,)`` bool: camera centres ``(N, 3)`` that keep clear of walls, floor/ceiling and objects."""
        lo, hi = np.asarray(self.room_lo), np.asarray(self.room_hi)
        m_lo = lo + np.array([wall_margin, 0.4, wall_margin])  # 0.4 m below the ceiling
        m_hi = hi - np.array([wall_margin, 0.3, wall_margin])  # 0.3 m above the floor
        ok = np.all((points >= m_lo) & (points <= m_hi), axis=-1)
        for b in self.boxes:
            inside = np.all((points >= np.asarray(b.lo) - object_margin) & (points <= np.asarray(b.hi) + object_margin), axis=-1)
            ok &= ~inside
        return ok

    def view_clearance(self, c2w: np.ndarray) -> np.ndarray:
        """``(F,)`` distance (m) from each camera ``(F, 4, 4)`` to the wall straight ahead along its
        horizontal viewing direction (objects ignored); small values mean the view is filled by a wall."""
        lo, hi = np.asarray(self.room_lo), np.asarray(self.room_hi)
        fwd = np.array(c2w[:, :3, 2], dtype=np.float64)
        fwd[:, 1] = 0.0
        fwd /= np.linalg.norm(fwd, axis=1, keepdims=True) + 1e-9
        pos = c2w[:, :3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(fwd > 0, (hi - pos) / fwd, np.where(fwd < 0, (lo - pos) / fwd, np.inf))
        return t[:, [0, 2]].min(axis=1)

    def describe(self) -> str:
        """Caption sentence(s) for the room and its objects."""
        lo, hi = np.asarray(self.room_lo), np.asarray(self.room_hi)
        area = (hi[0] - lo[0]) * (hi[2] - lo[2])
        size = "small" if area < 30 else ("medium-sized" if area < 55 else "large")

        def surf(m: Material) -> str:
            if m.pattern == "plain":
                return f"{m.color}"
            return f"{m.color} and {m.color2} {PATTERNS[m.pattern]}"

        def a(phrase: str) -> str:
            return ("an " if phrase[0] in "aeiou" else "a ") + phrase

        text = f"A {size} room with {surf(self.walls)} walls, {a(surf(self.floor))} floor and {a(surf(self.ceiling))} ceiling."
        groups: dict[tuple[str, str], int] = {}
        for b in self.boxes:
            if b.kind in ("box", "pillar"):
                groups[(b.material.color, b.kind)] = groups.get((b.material.color, b.kind), 0) + 1
        if groups:
            parts = []
            for (color, kind), n in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
                noun = kind + ("es" if kind == "box" and n > 1 else ("s" if n > 1 else ""))
                article = "an" if color[0] in "aeiou" else "a"
                parts.append(f"{_NUMBER_WORDS[min(n, 6)] if n > 1 else article} {color} {noun}")
            listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
            verb = "stand" if len(parts) > 1 or sum(groups.values()) > 1 else "stands"
            text += f" {listed[0].upper() + listed[1:]} {verb} near the walls."
        return text


# --------------------------------------------------------------------------------------------------
# Scene sampling
# --------------------------------------------------------------------------------------------------


def _two_colors(rng: np.random.Generator) -> tuple[str, str]:
    names = list(PALETTE)
    a, b = rng.choice(len(names), size=2, replace=False)
    return names[a], names[b]


def _material(rng: np.random.Generator, patterns: tuple[str, ...], scale_range: tuple[float, float]) -> Material:
    c1, c2 = _two_colors(rng)
    waves = [[float(rng.uniform(1.0, 4.0) * rng.choice([-1, 1])), float(rng.uniform(0.5, 3.0)), float(rng.uniform(0, 2 * np.pi))] for _ in range(3)]
    return Material(pattern=str(rng.choice(patterns)), color=c1, color2=c2, scale=float(rng.uniform(*scale_range)), waves=waves)


def _overlaps(a_lo: np.ndarray, a_hi: np.ndarray, boxes: list[Box], gap: float) -> bool:
    return any(np.all(a_lo < np.asarray(b.hi) + gap) and np.all(a_hi > np.asarray(b.lo) - gap) for b in boxes)


def random_scene(rng: np.random.Generator) -> Scene:
    """Sample a room (5–9 m × 5–9 m × 2.6–3.4 m), its materials, 1–4 boxes and 0–2 pillars near the walls."""
    width, depth, height = rng.uniform(5.0, 9.0), rng.uniform(5.0, 9.0), rng.uniform(2.6, 3.4)
    eye = rng.uniform(1.4, 1.7)  # camera height above the floor at y = 0 of the first pose
    lo = np.array([-width / 2, -(height - eye), -depth / 2])
    hi = np.array([width / 2, eye, depth / 2])
    walls = _material(rng, _WALL_PATTERNS, (0.4, 1.0))
    floor = _material(rng, _FLOOR_PATTERNS, (0.4, 0.9))
    ceiling = _material(rng, _CEILING_PATTERNS, (0.6, 1.2))
    boxes: list[Box] = []

    def place(kind: str) -> None:
        for _ in range(50):
            if kind == "pillar":
                sx = sz = rng.uniform(0.25, 0.45)
                y_lo, y_hi = lo[1], hi[1]
            else:
                sx, sz = rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.2)
                y_lo, y_hi = hi[1] - rng.uniform(0.4, 1.6), hi[1]
            axis = int(rng.integers(0, 2)) * 2  # against an x-wall (0) or a z-wall (2)
            side = rng.choice([-1.0, 1.0])
            gap = rng.uniform(0.0, 0.35)
            c = np.zeros(3)
            size = np.array([sx, 0.0, sz])
            other = 2 - axis
            c[axis] = side * ((hi[axis] - lo[axis]) / 2 - gap - size[axis] / 2)
            half_other = (hi[other] - lo[other]) / 2 - size[other] / 2 - 0.05
            c[other] = rng.uniform(-half_other, half_other)
            b_lo = np.array([c[0] - sx / 2, y_lo, c[2] - sz / 2])
            b_hi = np.array([c[0] + sx / 2, y_hi, c[2] + sz / 2])
            if not _overlaps(b_lo, b_hi, boxes, 0.1):
                mat = _material(rng, _OBJECT_PATTERNS, (0.15, 0.4))
                boxes.append(Box(b_lo.tolist(), b_hi.tolist(), mat, kind))
                return

    for _ in range(int(rng.integers(1, 5))):
        place("box")
    for _ in range(int(rng.integers(0, 3))):
        place("pillar")
    light = [float(rng.uniform(-0.3, 0.3) * width), float(lo[1] + 0.25), float(rng.uniform(-0.3, 0.3) * depth)]
    return Scene(lo.tolist(), hi.tolist(), walls, floor, ceiling, boxes, light)


def pinhole_intrinsics(height: int, width: int, fov_x_deg: float) -> np.ndarray:
    """(3, 3) K with square pixels, horizontal field of view ``fov_x_deg`` and the principal point at
    the image centre ((W − 1)/2, (H − 1)/2) of integer pixel coordinates."""
    f = (width / 2.0) / math.tan(math.radians(fov_x_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------------


def _pattern(m: Material, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend factor toward color2 and a brightness multiplier for surface coordinates (a, b) in metres."""
    s = m.scale
    ones = np.ones_like(a)
    if m.pattern == "checker":
        return ((np.floor(a / s) + np.floor(b / s)) % 2).astype(a.dtype), ones
    if m.pattern == "stripes":
        return (np.floor(a / s) % 2).astype(a.dtype), ones
    if m.pattern == "bricks":
        bh = s / 2
        row = np.floor(b / bh)
        aa = a + (row % 2) * (s / 2)
        col = np.floor(aa / s)
        mortar = ((aa / s - col) < 0.06) | ((b / bh - row) < 0.1)
        jitter = np.modf(np.abs(np.sin(row * 12.9898 + col * 78.233) * 43758.5453))[0]  # per-brick shade
        return mortar.astype(a.dtype), np.where(mortar, 1.0, 0.85 + 0.3 * jitter)
    if m.pattern == "tiles":
        fa, fb = a / s - np.floor(a / s), b / s - np.floor(b / s)
        grout = (fa < 0.05) | (fb < 0.05)
        jitter = np.modf(np.abs(np.sin(np.floor(a / s) * 12.9898 + np.floor(b / s) * 78.233) * 43758.5453))[0]
        return grout.astype(a.dtype), np.where(grout, 1.0, 0.9 + 0.2 * jitter)
    if m.pattern == "waves":
        acc = np.zeros_like(a)
        for ka, kb, ph in m.waves:
            acc += np.sin(1.5 * (ka * a + kb * b) / s + ph)
        return 0.5 + 0.5 * acc / max(len(m.waves), 1), ones
    return np.zeros_like(a), ones  # plain


_SCREEN_CULL = True  # tests switch it off to check that culling leaves images unchanged


def _argmin3(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.where((x <= y) & (x <= z), 0, np.where(y <= z, 1, 2)).astype(np.int8)


def _argmax3(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.where((x >= y) & (x >= z), 0, np.where(y >= z, 1, 2)).astype(np.int8)


def render(
    scene: Scene,
    c2w: np.ndarray,
    K: np.ndarray,
    height: int,
    width: int,
    supersample: int = 1,
    return_depth: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Ray-cast one frame of ``scene`` seen by an OpenCV pinhole camera.

    Args:
        scene: the room.
        c2w: ``(4, 4)`` camera-to-world pose (inside the room).
        K: ``(3, 3)`` intrinsics in pixels of the ``height × width`` image.
        height, width: image size.
        supersample: s → s×s rays per pixel at offsets centred on the integer pixel coordinate.
        return_depth: also return the z-depth of the ray through each integer pixel coordinate.

    Returns:
        ``(H, W, 3)`` uint8 image (and ``(H, W)`` float32 z-depth in metres if ``return_depth``).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    s = int(supersample)
    offs = (np.arange(s) + 0.5) / s - 0.5  # sub-pixel offsets, symmetric about 0
    xs = ((np.arange(width)[:, None] + offs[None]).reshape(-1) - cx) / fx  # (W·s,) camera x at z = 1
    ys = ((np.arange(height)[:, None] + offs[None]).reshape(-1) - cy) / fy  # (H·s,)
    R = c2w[:3, :3]
    o = c2w[:3, 3]
    # World ray directions d = R @ (x, y, 1), per component, float32, on the (H·s, W·s) sub-sample
    # grid; with z_cam = 1 the ray parameter t of a hit is its z-depth.
    dirs = [(r[0] * xs[None, :] + r[1] * ys[:, None] + r[2]).astype(np.float32) for r in R]
    dsafe = [np.where(np.abs(d) < 1e-12, np.float32(1e-12), d) for d in dirs]
    inv = [np.float32(1.0) / d for d in dsafe]

    # Room: along each axis the exit plane is hi where the ray goes up that axis, else lo.
    lo, hi = np.asarray(scene.room_lo), np.asarray(scene.room_hi)
    t_ax = [(np.where(dsafe[k] > 0, hi[k], lo[k]).astype(np.float32) - np.float32(o[k])) * inv[k] for k in range(3)]
    t_best = np.minimum(np.minimum(t_ax[0], t_ax[1]), t_ax[2])
    axis = _argmin3(*t_ax)
    # surface id: 0 walls, 1 floor (+y is down), 2 ceiling, 3 + i box i
    surf = np.where(axis == 1, np.where(dsafe[1] > 0, 1, 2), 0).astype(np.int16)
    n_rows, n_cols = t_best.shape
    for i, box in enumerate(scene.boxes):
        # Only rays inside the box's projected bounding rectangle can hit it (when all 8 corners are
        # in front of the camera); this screen-space cull is what keeps the renderer fast.
        corners = np.array([[x, y, z] for x in (box.lo[0], box.hi[0]) for y in (box.lo[1], box.hi[1]) for z in (box.lo[2], box.hi[2])])
        cam = (corners - o) @ R  # (8, 3) camera coordinates: R^T (X - o)
        r0, r1, c0, c1 = 0, n_rows, 0, n_cols
        if _SCREEN_CULL and (cam[:, 2] > 1e-3).all():
            u = fx * cam[:, 0] / cam[:, 2] + cx
            v = fy * cam[:, 1] / cam[:, 2] + cy
            # sub-sample j sits at pixel coordinate j/s + offs[0]; widen by one sample for safety
            c0 = max(0, int(np.floor((u.min() - offs[0]) * s)) - 1)
            c1 = min(n_cols, int(np.ceil((u.max() - offs[0]) * s)) + 2)
            r0 = max(0, int(np.floor((v.min() - offs[0]) * s)) - 1)
            r1 = min(n_rows, int(np.ceil((v.max() - offs[0]) * s)) + 2)
            if c0 >= c1 or r0 >= r1:
                continue
        win = (slice(r0, r1), slice(c0, c1))
        near, far = [], []
        for k in range(3):
            t1 = np.float32(box.lo[k] - o[k]) * inv[k][win]
            t2 = np.float32(box.hi[k] - o[k]) * inv[k][win]
            near.append(np.minimum(t1, t2))
            far.append(np.maximum(t1, t2))
        t_near = np.maximum(np.maximum(near[0], near[1]), near[2])
        t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
        hit = (t_far >= t_near) & (t_near > 1e-6) & (t_near < t_best[win])
        if hit.any():
            t_best[win] = np.where(hit, t_near, t_best[win])
            axis[win] = np.where(hit, _argmax3(*near), axis[win])
            surf[win][hit] = 3 + i

    dirs = [d.reshape(-1) for d in dirs]
    dsafe = [d.reshape(-1) for d in dsafe]
    t_best, axis, surf = t_best.reshape(-1), axis.reshape(-1), surf.reshape(-1)
    px, py, pz = (np.float32(o[k]) + t_best * dirs[k] for k in range(3))
    # Surface coordinates (metres): the two world axes spanning the face, the horizontal one first on walls.
    sa = np.where(axis == 0, pz, px)
    sb = np.where(axis == 1, pz, py)
    # Lambert shading from the point light with distance fall-off; the visible face looks back at the camera.
    lx, ly, lz = (np.float32(scene.light[k]) - p for k, p in enumerate((px, py, pz)))
    dist2 = lx * lx + ly * ly + lz * lz
    d_axis = np.where(axis == 0, dsafe[0], np.where(axis == 1, dsafe[1], dsafe[2]))
    n_dot_l = -np.sign(d_axis) * np.where(axis == 0, lx, np.where(axis == 1, ly, lz))
    lambert = np.clip(n_dot_l / np.sqrt(dist2 + 1e-12), 0.0, 1.0)
    intensity = 0.35 + 0.9 * lambert / (1.0 + 0.03 * dist2)

    materials = [scene.walls, scene.floor, scene.ceiling] + [b.material for b in scene.boxes]
    blend = np.zeros_like(t_best)  # 0 → color, 1 → color2
    bright = np.ones_like(t_best)
    for sid, mat in enumerate(materials):
        idx = np.flatnonzero(surf == sid)
        if idx.size:
            blend[idx], bright[idx] = _pattern(mat, sa[idx], sb[idx])
            if mat.emissive:
                intensity[idx] = 1.0
    c1 = np.array([m.rgb()[0] for m in materials], dtype=np.float32)[surf]  # (N, 3)
    c2 = np.array([m.rgb()[1] for m in materials], dtype=np.float32)[surf]
    rgb = (c1 + (c2 - c1) * blend[:, None]) * (bright * intensity)[:, None]
    sub = rgb.reshape(height, s, width, s, 3)
    img = sum(sub[:, i, :, j] for i in range(s) for j in range(s)) * np.float32(1.0 / (s * s))  # box filter
    img = (np.clip(img, 0.0, 1.0) ** np.float32(1 / 2.2) * 255.0 + 0.5).astype(np.uint8)  # gamma for display
    if not return_depth:
        return img
    if s == 1:
        depth = t_best.reshape(height, width).astype(np.float32)
    else:  # the sub-samples straddle the pixel centre; cast the central rays again
        depth = render_depth(scene, c2w, K, height, width)
    return img, depth


def render_depth(scene: Scene, c2w: np.ndarray, K: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W)`` float32 z-depth (metres) of the ray through each integer pixel coordinate."""
    _, depth = render(scene, c2w, K, height, width, supersample=1, return_depth=True)
    return depth


# --------------------------------------------------------------------------------------------------
# Trajectories
# --------------------------------------------------------------------------------------------------

# Segment vocabulary of the random DSL strings (keys of the release scheme, docs/design/camera.md §8).
_DSL_SEGMENTS = ("w", "w", "wl", "wj", "l", "j", "a", "d", "s", "wa", "wd", "i", "k", "none", "dl", "aj")
_KEY_PHRASES = {"w": "forward", "s": "backward", "a": "left", "d": "right"}
_ROT_PHRASES = {"j": "turning left", "l": "turning right", "i": "tilting up", "k": "tilting down"}


def random_action(rng: np.random.Generator, num_steps: int) -> str:
    """A random DSL string of 1–4 segments whose lengths sum to ``num_steps`` (= num_frames − 1)."""
    if num_steps < 1:
        raise ValueError(f"`num_steps` must be >= 1; got {num_steps}.")
    n_seg = int(rng.integers(1, min(4, max(1, num_steps // 4)) + 1))
    cuts = np.sort(rng.choice(np.arange(1, num_steps), size=n_seg - 1, replace=False)) if n_seg > 1 else np.array([], int)
    lengths = np.diff(np.concatenate([[0], cuts, [num_steps]])).astype(int)
    segs = []
    for n in lengths:
        keys = str(rng.choice(_DSL_SEGMENTS))
        segs.append(f"{keys}-{n}")
    return ",".join(segs)


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
    T[:3, :3] = _yaw_matrix(yaw)
    T[:3, 3] = pos
    return float(scene.view_clearance(T[None])[0])


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # positive yaw turns +Z toward +X


def dsl_trajectory(
    rng: np.random.Generator, scene: Scene, num_frames: int, max_tries: int = 40
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random action-DSL trajectory placed inside the free space of ``scene``.

    The DSL rollout (identity start, ``sana_wm.camera.action_to_c2w``) is moved to a random start
    position and heading; if no placement keeps every camera centre free, the translation speed is
    halved (long clips) and, failing that, a new action string is drawn. Every camera must also have
    ≥ 3 m of room ahead (no wall filling the view); clips that cannot meet that relax it stepwise.

    Returns:
        ``(num_frames, 4, 4)`` float64 world c2w, and a dict {kind, action, translation_speed,
        rotation_speed_deg, description}.
    """
    from sana_wm.camera import action_to_c2w

    lo, hi = np.asarray(scene.room_lo), np.asarray(scene.room_hi)
    per_level = max(1, max_tries // len(_CLEARANCE_LEVELS))
    for min_clearance in _CLEARANCE_LEVELS:  # relax "look into the room" for long, hard-to-fit clips
        for _ in range(per_level):
            action = random_action(rng, num_frames - 1)
            speed = 0.05
            for _halving in range(5):
                rel = action_to_c2w(action, translation_speed=speed, rotation_speed_deg=1.2).astype(np.float64)
                for _place in range(25):
                    start = np.array([rng.uniform(lo[0], hi[0]), rng.uniform(-0.15, 0.15), rng.uniform(lo[2], hi[2])])
                    T0 = np.eye(4)
                    T0[:3, :3] = _yaw_matrix(rng.uniform(-np.pi, np.pi))
                    T0[:3, 3] = start
                    world = T0[None] @ rel
                    # keep clear of walls and objects, and look into the room rather than at a nearby wall
                    if scene.is_free(world[:, :3, 3]).all() and scene.view_clearance(world).min() >= min_clearance:
                        info = {
                            "kind": "dsl",
                            "action": action,
                            "translation_speed": speed,
                            "rotation_speed_deg": 1.2,
                            "min_view_clearance": min_clearance,
                            "description": describe_action(action),
                        }
                        return world, info
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
                nxt = pos[-1] + np.array([math.sin(h) * dist, rng.uniform(-0.1, 0.1), math.cos(h) * dist])
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
            cp, sp, cr, sr = math.cos(pi), math.sin(pi), math.cos(ro), math.sin(ro)
            Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # positive pitch looks up (forward gains −Y)
            Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])  # roll about the optical axis
            c2w[f, :3, :3] = _yaw_matrix(ya) @ Rx @ Rz
            c2w[f, :3, 3] = (x, y, z)
        if scene.view_clearance(c2w).min() < min_clearance:
            continue
        turn = math.degrees(yaw_arr[-1] - yaw_arr[0])
        desc = "glides smoothly through the room, looking around"
        if abs(turn) > 30:
            desc += f" and turning {'right' if turn > 0 else 'left'}"
        return c2w, {"kind": "smooth", "min_view_clearance": min_clearance, "description": desc}
    raise RuntimeError(f"could not fit a smooth {num_frames}-frame trajectory into the room after {max_tries} tries.")


# --------------------------------------------------------------------------------------------------
# Clips and datasets
# --------------------------------------------------------------------------------------------------


@dataclass
class SyntheticClip:
    """One rendered clip.

    Attributes:
        key: sample key.
        frames: ``(F, H, W, 3)`` uint8, or None for a planned, not yet rendered clip.
        c2w: ``(F, 4, 4)`` float64 exact world camera-to-world (metres).
        K: ``(3, 3)`` float64 intrinsics in pixels of the frames.
        caption: scene + motion description.
        meta: json metadata (schema fields are filled by the shard writer).
        scene: the :class:`Scene`.
        height, width: frame size in pixels.
    """

    key: str
    frames: np.ndarray | None
    c2w: np.ndarray
    K: np.ndarray
    caption: str
    meta: dict[str, Any]
    scene: Scene
    height: int
    width: int


def plan_clip(
    index: int,
    seed: int = 0,
    num_frames: int = 33,
    height: int = 128,
    width: int = 224,
    fps: float = 16.0,
    trajectory: str = "mixed",
) -> SyntheticClip:
    """Everything about clip ``index`` except its pixels (``frames`` is None): scene, poses, K, caption.

    Deterministic in (``seed``, ``index``). See :func:`make_clip` for the arguments.

    Args:
        index: clip number; with ``trajectory='mixed'`` even clips follow DSL paths, odd ones smooth paths.
        seed: dataset seed.
        num_frames: 8k+1 frames.
        height, width: frame size (even; multiples of 32 avoid any resize in the loader).
        fps: frame rate of the clip.
        trajectory: 'mixed', 'dsl' or 'smooth'.
    """
    if (num_frames - 1) % 8 or num_frames < 1:
        raise ValueError(f"`num_frames` must be of the form 8k+1; got {num_frames}.")
    if height % 2 or width % 2 or height < 2 or width < 2:
        raise ValueError(f"`height`, `width` must be even (H.264 yuv420p); got {height}x{width}.")
    if trajectory not in ("mixed", "dsl", "smooth"):
        raise ValueError(f"`trajectory` must be 'mixed', 'dsl' or 'smooth'; got {trajectory!r}.")
    rng = np.random.default_rng(seed_for(seed, index))
    scene = random_scene(rng)
    K = pinhole_intrinsics(height, width, float(rng.uniform(65.0, 85.0)))
    kind = trajectory if trajectory != "mixed" else ("dsl" if index % 2 == 0 else "smooth")
    if kind == "dsl":
        c2w, traj = dsl_trajectory(rng, scene, num_frames)
    else:
        c2w, traj = smooth_trajectory(rng, scene, num_frames, fps)
    caption = f"{scene.describe()} The camera {traj['description']}."
    meta = {
        "fps": float(fps),
        "metric_scale": 1.0,
        "source": "synthetic",
        "licence": "CC0-1.0",
        "annotation": {"backend": "synthetic-ground-truth", "version": RENDERER_VERSION},
        "quality": {},
        "caption_source": "synthetic-template",
        "seed": int(seed),
        "index": int(index),
        "scene": asdict(scene),
        "trajectory": traj,
    }
    return SyntheticClip(f"synth-{seed:04d}-{index:06d}", None, c2w, K, caption, meta, scene, int(height), int(width))


def render_clip(clip: SyntheticClip, supersample: int = 2) -> SyntheticClip:
    """Fill ``clip.frames`` (``(F, H, W, 3)`` uint8) by rendering every pose; returns the clip."""
    clip.frames = np.stack([render(clip.scene, c, clip.K, clip.height, clip.width, supersample) for c in clip.c2w])
    return clip


def make_clip(
    index: int,
    seed: int = 0,
    num_frames: int = 33,
    height: int = 128,
    width: int = 224,
    fps: float = 16.0,
    trajectory: str = "mixed",
    supersample: int = 2,
) -> SyntheticClip:
    """Plan and render clip ``index`` of the dataset with base ``seed`` (deterministic in both).

    Args:
        index: clip number; with ``trajectory='mixed'`` even clips follow DSL paths, odd ones smooth paths.
        seed: dataset seed.
        num_frames: 8k+1 frames.
        height, width: frame size (even; multiples of 32 avoid any resize in the loader).
        fps: frame rate of the clip.
        trajectory: 'mixed', 'dsl' or 'smooth'.
        supersample: anti-aliasing factor of :func:`render`.
    """
    return render_clip(plan_clip(index, seed, num_frames, height, width, fps, trajectory), supersample)


#: The default sample set (``make demo``, tests): 16 clips × 33 frames at 128 × 224, 16 fps.
DEFAULT_CONFIG: dict[str, Any] = {
    "num_clips": 16,
    "num_frames": 33,
    "height": 128,
    "width": 224,
    "fps": 16.0,
    "seed": 0,
    "clips_per_shard": 4,
    "trajectory": "mixed",
    "supersample": 2,
}
_PARAMS_FILE = "synthetic.json"


def _render_encoded(args: tuple[SyntheticClip, int]) -> tuple[SyntheticClip, bytes]:
    """Worker: render a planned clip and encode it to H.264 (may run in a separate process, which then
    imports only numpy and PyAV: planning, which needs ``sana_wm.camera``, happens in the parent)."""
    from .video import encode_mp4

    clip, supersample = args
    render_clip(clip, supersample)
    mp4 = encode_mp4(clip.frames, clip.meta["fps"], crf=18)
    clip.frames = None  # don't ship the raw pixels back
    return clip, mp4


def build_default_dataset(
    out_dir: str | os.PathLike,
    num_clips: int = DEFAULT_CONFIG["num_clips"],
    num_frames: int = DEFAULT_CONFIG["num_frames"],
    height: int = DEFAULT_CONFIG["height"],
    width: int = DEFAULT_CONFIG["width"],
    fps: float = DEFAULT_CONFIG["fps"],
    seed: int = DEFAULT_CONFIG["seed"],
    clips_per_shard: int = DEFAULT_CONFIG["clips_per_shard"],
    trajectory: str = DEFAULT_CONFIG["trajectory"],
    supersample: int = DEFAULT_CONFIG["supersample"],
    workers: int | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Render ``num_clips`` clips into video shards under ``out_dir`` (+ ``manifest.json``).

    If ``out_dir`` already holds a dataset built with the same parameters whose shards all exist, it
    is reused (``overwrite=True`` forces a rebuild).

    Args:
        out_dir: output folder.
        num_clips … supersample: dataset parameters (see :func:`make_clip`).
        workers: render processes (default: min(2, CPUs)); 1 renders in this process.
        overwrite: rebuild even if an identical dataset exists.

    Returns:
        Shard paths, sorted.
    """
    from .write_shards import MANIFEST_NAME, ShardSink, write_video_sample

    params = {
        "version": RENDERER_VERSION,
        "num_clips": int(num_clips),
        "num_frames": int(num_frames),
        "height": int(height),
        "width": int(width),
        "fps": float(fps),
        "seed": int(seed),
        "clips_per_shard": int(clips_per_shard),
        "trajectory": trajectory,
        "supersample": int(supersample),
    }
    out_dir = str(out_dir)
    params_path = os.path.join(out_dir, _PARAMS_FILE)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    if not overwrite and os.path.isfile(params_path) and os.path.isfile(manifest_path):
        with open(params_path) as f:
            old = json.load(f)
        with open(manifest_path) as f:
            shards = [os.path.join(out_dir, s["path"]) for s in json.load(f)["shards"]]
        if old == params and all(os.path.isfile(s) for s in shards):
            return shards
    if num_clips < 1:
        raise ValueError(f"`num_clips` must be >= 1; got {num_clips}.")
    jobs = [(plan_clip(i, seed, num_frames, height, width, fps, trajectory), supersample) for i in range(num_clips)]
    workers = min(2, os.cpu_count() or 1, num_clips) if workers is None else int(workers)
    with ShardSink(out_dir, prefix="synthetic", max_count=clips_per_shard) as sink:
        if workers <= 1:
            results = map(_render_encoded, jobs)
            for clip, mp4 in results:
                write_video_sample(sink, clip.key, caption=clip.caption, meta=clip.meta, mp4=mp4, c2w=clip.c2w, intrinsics=clip.K)
        else:
            import multiprocessing as mp

            # spawn, not fork: the parent may hold torch/OpenMP threads that a forked child could deadlock on.
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                for clip, mp4 in pool.map(_render_encoded, jobs):
                    write_video_sample(sink, clip.key, caption=clip.caption, meta=clip.meta, mp4=mp4, c2w=clip.c2w, intrinsics=clip.K)
    with open(params_path, "w") as f:
        json.dump(params, f, indent=2)
    return sink.paths


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m data.synthetic --out DIR [options]`` (defaults = the default sample set)."""
    p = argparse.ArgumentParser(prog="python -m data.synthetic", description="Render the bundled synthetic 3-D world into WebDataset shards.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-clips", type=int, default=DEFAULT_CONFIG["num_clips"])
    p.add_argument("--num-frames", type=int, default=DEFAULT_CONFIG["num_frames"], help="8k+1")
    p.add_argument("--height", type=int, default=DEFAULT_CONFIG["height"])
    p.add_argument("--width", type=int, default=DEFAULT_CONFIG["width"])
    p.add_argument("--fps", type=float, default=DEFAULT_CONFIG["fps"])
    p.add_argument("--seed", type=int, default=DEFAULT_CONFIG["seed"])
    p.add_argument("--clips-per-shard", type=int, default=DEFAULT_CONFIG["clips_per_shard"])
    p.add_argument("--trajectory", choices=("mixed", "dsl", "smooth"), default=DEFAULT_CONFIG["trajectory"])
    p.add_argument("--supersample", type=int, default=DEFAULT_CONFIG["supersample"], help="anti-aliasing rays per pixel side")
    p.add_argument("--workers", type=int, default=None, help="render processes (default min(2, CPUs))")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        shards = build_default_dataset(
            a.out, a.num_clips, a.num_frames, a.height, a.width, a.fps, a.seed, a.clips_per_shard,
            a.trajectory, a.supersample, a.workers, a.overwrite,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(shards)} shards with {a.num_clips} clips in {a.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
