"""The bundled synthetic dataset: render clips into video shards (+ ``manifest.json``), and its CLI.

``python -m data.synthetic --out DIR [--num-clips 16 --num-frames 33 --height 128 --width 224]`` runs
:func:`main`; :func:`build_default_dataset` does the same from Python. Clips are planned in this process and
rendered (and H.264-encoded) in ``spawn`` worker processes that import only numpy and PyAV.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .clips import RENDERER_VERSION, SyntheticClip, plan_clip, render_clip

__all__ = ["DEFAULT_CONFIG", "build_default_dataset", "dataset_actions", "main"]


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
    "pattern_scale": 1.0,
    "clips_per_room": 1,
    "dsl_segments": None,
    "caption_motion": True,
    "translation_speed": 0.05,
}
_PARAMS_FILE = "synthetic.json"


def _render_encoded(args: tuple[SyntheticClip, int]) -> tuple[SyntheticClip, bytes]:
    """Worker: render a planned clip and encode it to H.264 (may run in a separate process, which then
    imports only numpy and PyAV: planning, which needs ``sana_wm.camera``, happens in the parent)."""
    from ..video import encode_mp4

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
    pattern_scale: float = DEFAULT_CONFIG["pattern_scale"],
    clips_per_room: int = DEFAULT_CONFIG["clips_per_room"],
    dsl_segments: tuple[str, ...] | None = DEFAULT_CONFIG["dsl_segments"],
    caption_motion: bool = DEFAULT_CONFIG["caption_motion"],
    translation_speed: float = DEFAULT_CONFIG["translation_speed"],
) -> list[str]:
    """Render ``num_clips`` clips into video shards under ``out_dir`` (+ ``manifest.json``).

    If ``out_dir`` already holds a dataset built with the same parameters whose shards all exist, it
    is reused (``overwrite=True`` forces a rebuild).

    Args:
        out_dir: output folder.
        num_clips … supersample, pattern_scale, clips_per_room, dsl_segments, caption_motion, translation_speed:
            dataset parameters (see :func:`make_clip`).
        workers: render processes (default: min(2, CPUs)); 1 renders in this process.
        overwrite: rebuild even if an identical dataset exists.

    Returns:
        Shard paths, sorted.
    """
    from ..write_shards import MANIFEST_NAME, ShardSink, write_video_sample

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
        "pattern_scale": float(pattern_scale),
        "clips_per_room": int(clips_per_room),
        "dsl_segments": None if dsl_segments is None else list(dsl_segments),
        "caption_motion": bool(caption_motion),
        "translation_speed": float(translation_speed),
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
    jobs = [(plan_clip(i, seed, num_frames, height, width, fps, trajectory, pattern_scale, clips_per_room,
                       dsl_segments, caption_motion, translation_speed), supersample) for i in range(num_clips)]
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


def dataset_actions(video_dir: str | os.PathLike) -> set[str]:
    """Action strings of the DSL clips in a folder of video shards (each sample's json ``trajectory.action``): the
    commands a model trained on them has seen, for picking held-out ones."""
    import tarfile
    from pathlib import Path

    actions = set()
    for shard in sorted(Path(video_dir).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    meta = json.load(tar.extractfile(m))
                    action = (meta.get("trajectory") or {}).get("action")
                    if action:
                        actions.add(action)
    return actions


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
    p.add_argument("--pattern-scale", type=float, default=DEFAULT_CONFIG["pattern_scale"],
                   help="multiplies the materials' pattern periods (> 1: coarser patterns)")
    p.add_argument("--clips-per-room", type=int, default=DEFAULT_CONFIG["clips_per_room"],
                   help="clips sharing one room and start pose, told apart by their camera paths only")
    p.add_argument("--dsl-segments", default=None,
                   help="comma-separated key groups of the DSL paths, e.g. w,s,l,j,wl,wj,none (default: all)")
    p.add_argument("--no-caption-motion", action="store_true", help="captions describe the room only")
    p.add_argument("--translation-speed", type=float, default=DEFAULT_CONFIG["translation_speed"],
                   help="metres per frame of the DSL paths")
    p.add_argument("--workers", type=int, default=None, help="render processes (default min(2, CPUs))")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        shards = build_default_dataset(
            a.out, a.num_clips, a.num_frames, a.height, a.width, a.fps, a.seed, a.clips_per_shard,
            a.trajectory, a.supersample, a.workers, a.overwrite, a.pattern_scale, a.clips_per_room,
            None if a.dsl_segments is None else tuple(a.dsl_segments.split(",")), not a.no_caption_motion,
            a.translation_speed,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(shards)} shards with {a.num_clips} clips in {a.out} ({time.perf_counter() - t0:.1f} s)")
    return 0

