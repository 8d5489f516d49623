"""The synthetic world's renderer: a ray caster vectorised over pixels, with Lambert shading.

Rays leave the room by the slab method and hit boxes by slab intersection; optional ``supersample`` ×
``supersample`` anti-aliasing places its sub-samples symmetrically about the integer pixel coordinates, so the
pinhole model of :mod:`sana_wm.camera` (a pixel (u, v) looks along ``((u − cx)/fx, (v − cy)/fy, 1)``) holds
exactly. Imports numpy only: render worker processes stay light.
"""

from __future__ import annotations

import numpy as np

from .scene import Material, Scene

__all__ = ["render", "render_depth"]


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


