"""One synthetic clip: plan it (scene, trajectory, intrinsics, caption, metadata), then render its frames.

Planning needs :mod:`sana_wm.camera` (imported when called); rendering needs numpy only, so a planned clip can be
shipped to a light render worker process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..seeding import seed_for
from .raycast import render
from .scene import Scene, random_scene

__all__ = ["RENDERER_VERSION", "SyntheticClip", "plan_clip", "render_clip", "make_clip"]

RENDERER_VERSION = "sana-wm-synthetic/1"


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
    pattern_scale: float = 1.0,
    clips_per_room: int = 1,
    dsl_segments: tuple[str, ...] | None = None,
    caption_motion: bool = True,
    translation_speed: float = 0.05,
) -> SyntheticClip:
    """Everything about clip ``index`` except its pixels (``frames`` is None): scene, poses, K, caption.

    Deterministic in its arguments. See :func:`make_clip` for the arguments.

    Args:
        index: clip number; with ``trajectory='mixed'`` even clips follow DSL paths, odd ones smooth paths.
        seed: dataset seed.
        num_frames: 8k+1 frames.
        height, width: frame size (even; multiples of 32 avoid any resize in the loader).
        fps: frame rate of the clip.
        trajectory: 'mixed', 'dsl' or 'smooth'.
        pattern_scale: multiplies the materials' pattern periods (see :func:`random_scene`).
        clips_per_room: 1: every clip its own room, start pose and path. k > 1: clips ``r*k … r*k+k-1`` share room
            ``r``, its intrinsics and one start pose (:func:`room_start`), hence their first frame, and differ only
            in their DSL paths (``trajectory`` must be 'dsl' or 'mixed', which then means 'dsl'), so a model can
            tell them apart by the camera alone.
        dsl_segments: key groups the DSL paths' segments draw from (default: all; see ``random_action``).
        caption_motion: end the caption with the camera motion ("The camera moves forward, …"); False: the room
            only, so that a model trained on the clips can learn the motion from the camera alone.
        translation_speed: metres per frame of the DSL paths (halved only where no path fits the room).
    """
    if (num_frames - 1) % 8 or num_frames < 1:
        raise ValueError(f"`num_frames` must be of the form 8k+1; got {num_frames}.")
    if height % 2 or width % 2 or height < 2 or width < 2:
        raise ValueError(f"`height`, `width` must be even (H.264 yuv420p); got {height}x{width}.")
    if trajectory not in ("mixed", "dsl", "smooth"):
        raise ValueError(f"`trajectory` must be 'mixed', 'dsl' or 'smooth'; got {trajectory!r}.")
    if not translation_speed > 0:
        raise ValueError(f"`translation_speed` must be > 0 (metres per frame); got {translation_speed}.")
    if clips_per_room < 1:
        raise ValueError(f"`clips_per_room` must be >= 1; got {clips_per_room}.")
    if dsl_segments is not None:
        from .trajectories import check_segments

        dsl_segments = check_segments(dsl_segments)
    if clips_per_room > 1 and trajectory == "smooth":
        raise ValueError("`clips_per_room` > 1 shares a start pose between DSL paths; trajectory='smooth' has none "
                         "(use 'dsl' or 'mixed')")
    # Imported here: render workers unpickle SyntheticClip from this module and must not pull in torch.
    from sana_wm.camera import pinhole_intrinsics

    from .trajectories import dsl_trajectory, room_start, smooth_trajectory

    rng = np.random.default_rng(seed_for(seed, index))
    start = None
    if clips_per_room == 1:
        scene = random_scene(rng, pattern_scale)
        K = pinhole_intrinsics(height, width, float(rng.uniform(65.0, 85.0)))
        kind = trajectory if trajectory != "mixed" else ("dsl" if index % 2 == 0 else "smooth")
    else:  # the room's own stream (an extra seed part keeps it apart from the clips' streams)
        room_rng = np.random.default_rng(seed_for(seed, index // clips_per_room, clips_per_room))
        scene = random_scene(room_rng, pattern_scale)
        K = pinhole_intrinsics(height, width, float(room_rng.uniform(65.0, 85.0)))
        start, kind = room_start(room_rng, scene), "dsl"
    if kind == "dsl":
        c2w, traj = dsl_trajectory(rng, scene, num_frames, start=start, segments=dsl_segments,
                                   translation_speed=translation_speed)
    else:
        c2w, traj = smooth_trajectory(rng, scene, num_frames, fps)
    caption = f"{scene.describe()} The camera {traj['description']}." if caption_motion else scene.describe()
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
        "room": int(index // clips_per_room),
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
    pattern_scale: float = 1.0,
    clips_per_room: int = 1,
    dsl_segments: tuple[str, ...] | None = None,
    caption_motion: bool = True,
    translation_speed: float = 0.05,
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
        pattern_scale: multiplies the materials' pattern periods (see :func:`random_scene`).
        clips_per_room, dsl_segments, caption_motion, translation_speed: see :func:`plan_clip`.
    """
    return render_clip(plan_clip(index, seed, num_frames, height, width, fps, trajectory, pattern_scale,
                                 clips_per_room, dsl_segments, caption_motion, translation_speed), supersample)
