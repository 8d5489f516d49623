"""Bundled synthetic 3-D world: procedural textured rooms, camera paths, exact poses, shards.

The default dataset of ``make demo`` and of the tests, built on the CPU with numpy in seconds and
with no downloads. It also serves as ground truth for pose annotation and evaluation, since every
frame's camera is known exactly.

* **World** (:mod:`.scene`): an axis-aligned room (four walls, floor, ceiling) with procedural materials
  (checker, stripes, bricks, tiles, waves, plain; two colours per material drawn from a named palette) and a
  few axis-aligned boxes and floor-to-ceiling pillars standing near the walls; a point light near the
  ceiling gives Lambert shading. Units are metres, so ``metric_scale`` is 1.
* **Camera**: OpenCV pinhole (``sana_wm.camera`` convention: +X right, +Y down, +Z forward; a pixel
  (u, v) at integer coordinates looks along ``((u − cx)/fx, (v − cy)/fy, 1)``). The world is
  Y-down too: the floor is the plane y = ``room_hi[1]`` and the ceiling y = ``room_lo[1]``.
* **Renderer** (:mod:`.raycast`): a ray caster vectorised over pixels (room exit by the slab method, boxes by
  slab intersection), with optional ``supersample`` × ``supersample`` anti-aliasing whose sub-samples are
  centred on the integer pixel coordinates, so the pinhole model holds exactly.
* **Trajectories** (:mod:`.trajectories`): random action-DSL strings rolled out by
  ``sana_wm.camera.action_to_c2w`` and placed in the room, or smooth random 6-DoF paths (Catmull-Rom through
  waypoints, with roll); both stay inside the free space (away from walls and objects).
* **Clips** (:mod:`.clips`): scene + trajectory + intrinsics + a caption describing the room, the objects and
  the camera motion, then the rendered frames.
* **Dataset and CLI** (:mod:`.build`): ``python -m data.synthetic --out DIR [--num-clips 16 --num-frames 33
  --height 128 --width 224]`` writes shards + ``manifest.json``; :func:`build_default_dataset` does the same
  from Python.

Names are imported lazily: render worker processes unpickle clips from :mod:`.clips` and must not import
torch, which :mod:`.trajectories` (through ``sana_wm.camera``) does.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PALETTE": ".scene",
    "MARKER_COLORS": ".scene",
    "PATTERNS": ".scene",
    "Material": ".scene",
    "Box": ".scene",
    "Scene": ".scene",
    "random_scene": ".scene",
    "pinhole_intrinsics": "sana_wm.camera",
    "render": ".raycast",
    "render_depth": ".raycast",
    "random_action": ".trajectories",
    "describe_action": ".trajectories",
    "dsl_trajectory": ".trajectories",
    "smooth_trajectory": ".trajectories",
    "RENDERER_VERSION": ".clips",
    "SyntheticClip": ".clips",
    "plan_clip": ".clips",
    "render_clip": ".clips",
    "make_clip": ".clips",
    "DEFAULT_CONFIG": ".build",
    "build_default_dataset": ".build",
    "dataset_actions": ".build",
    "main": ".build",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
