"""The synthetic world's rooms: procedural materials, boxes, the room itself, and random scenes.

Units are metres and the world is Y-down like the cameras (:mod:`sana_wm.camera` convention): the floor is
the plane y = ``room_hi[1]`` and the ceiling y = ``room_lo[1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PALETTE", "MARKER_COLORS", "PATTERNS", "Material", "Box", "Scene", "random_scene"]

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


def random_scene(rng: np.random.Generator, pattern_scale: float = 1.0) -> Scene:
    """Sample a room (5–9 m × 5–9 m × 2.6–3.4 m), its materials, 1–4 boxes and 0–2 pillars near the walls.

    ``pattern_scale`` multiplies every material's pattern period after the draws (same rooms, same random stream):
    > 1 gives coarser checkers, stripes and bricks, i.e. images with less fine detail for a small codec.
    """
    if not (np.isfinite(pattern_scale) and pattern_scale > 0):
        raise ValueError(f"`pattern_scale` must be a positive number; got {pattern_scale!r}.")
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
    for m in (walls, floor, ceiling, *(b.material for b in boxes)):
        m.scale *= float(pattern_scale)
    return Scene(lo.tolist(), hi.tolist(), walls, floor, ceiling, boxes, light)
