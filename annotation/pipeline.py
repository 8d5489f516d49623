"""Footage → per-clip poses and intrinsics → shards: the ``python -m annotation`` pipeline.

Per video (one process handles videos ``rank::world_size``):

1. probe and decode with decord; unreadable, empty, variable-frame-rate, rotated or portrait videos
   are skipped with a reason;
2. split into shots with PySceneDetect's content detector (on a small decode of the whole video);
3. cut each shot into clips of at most ``max_clip_frames`` frames at ``target_fps`` (the rate training reads
   them at; shots shorter than ``quality.min_frames`` are rejected as ``too_short``, videos slower than
   ``target_fps`` as ``fps_too_low``);
4. estimate every clip with the configured estimator, in overlapping windows of ``window.frames``
   frames stitched by Sim(3) fits on the overlaps (:mod:`annotation.windows`; by default a clip is one
   window; Pi3 / Pi3X also split a window that exceeds their ``frame_budget`` into chunks);
5. apply the quality filters (:mod:`annotation.quality`);
6. write each kept clip in the layout ``data.write_shards`` reads (``clips/<stem>.mp4``, ``.c2w.npy``,
   ``.intrinsics.npy`` at the stored video's resolution, ``.txt`` caption, ``.json`` metadata with the
   estimator, its version and weight licence, the scale and the quality scores);
7. finally pack ``clips/`` into shards with ``data.write_shards.write_folder`` (single process runs).

Resumable: each finished video leaves ``state/<video-stem>.json`` (kept clips and rejections); a later
run skips those videos, so a crash loses at most the video in flight. An output folder written by a
different pipeline version or estimator is refused (``annotation.json``).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from annotation.estimators import EstimationError, build_estimator
from annotation.quality import QualityConfig, assess
from annotation.windows import WindowConfig, estimate_windows
from data.transforms import FPS_TOLERANCE, sample_frame_indices

__all__ = ["AnnotateConfig", "PIPELINE_VERSION", "list_videos", "split_shots", "plan_clips", "clip_source_frames",
           "run"]

PIPELINE_VERSION = "3"  # changes whenever the clips written change (cutting, json fields): folders never mix
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


@dataclass
class AnnotateConfig:
    """Configuration of ``python -m annotation INPUT OUT [key=value ...]``.

    Attributes:
        input: a folder of videos, a glob, or a manifest (.txt: one path per line; .json: a list of paths).
        out: output folder (``clips/``, ``state/``, ``shards/``, ``rejected.jsonl``, ``summary.json``).
        estimator: 'colmap', 'pi3x' or 'pi3'; unset = 'pi3x' when ``weights`` is set, else 'colmap'.
        weights: Pi3 / Pi3X weights folder (CC BY-NC 4.0: non-commercial use only).
        estimator_options: keyword arguments of the estimator (e.g. num_threads, frame_budget, stride).
        known_intrinsics: [fx, fy, cx, cy] in pixels of the videos, when every video shares one camera.
        metres_per_unit: scale for a weight-free estimator (recorded as 'user'): metres per unit of its poses,
            whose unit is the clip's median scene depth (annotation.estimators.colmap); unset = relative.
        max_clip_frames: longest clip written, counted in frames at ``target_fps``; longer shots are cut into
            equal parts. At the default 241 frames at 16 fps a 30 fps shot gives clips of up to 451 source frames
            (15 s), enough for the trainer's 161-frame windows at 16 fps.
        target_fps: the frame rate training reads clips at (``data.target_fps``, 16 for SANA-WM); a video slower
            than it is skipped (``fps_too_low``: training would repeat frames). None: ``max_clip_frames``
            counts source frames and every frame rate is kept.
        shot_threshold: PySceneDetect content threshold; ``shot_min_frames``: its shortest shot.
        default_caption: caption of clips without a sidecar ``<video>.txt`` (flagged in the json).
        licence: licence of the footage, recorded per clip.
        write_shards, shard_max_count: pack ``clips/`` into shards at the end (single process only).
        rank, world_size: this process's share of the videos (default: $RANK / $WORLD_SIZE, else 0 / 1).
        crf: H.264 quality of the written clips.
        window: windows of a clip and their stitching (:class:`annotation.windows.WindowConfig`).
        quality: filter thresholds.
    """

    input: str = "???"
    out: str = "???"
    estimator: str | None = None
    weights: str | None = None
    estimator_options: dict[str, Any] = field(default_factory=dict)
    known_intrinsics: list[float] | None = None
    metres_per_unit: float | None = None
    max_clip_frames: int = 241
    target_fps: float | None = 16.0
    shot_threshold: float = 27.0
    shot_min_frames: int = 15
    default_caption: str = "A video."
    licence: str = "unknown"
    write_shards: bool = True
    shard_max_count: int = 100
    rank: int | None = None
    world_size: int | None = None
    crf: int = 18
    window: WindowConfig = field(default_factory=WindowConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)


class SkipVideo(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def list_videos(spec: str) -> list[Path]:
    """Videos named by a folder (recursive), a glob, or a manifest file (.txt lines / .json list)."""
    p = Path(spec)
    if p.is_dir():
        found = [q for q in p.rglob("*") if q.suffix.lower() in VIDEO_EXTENSIONS and q.is_file()]
    elif p.is_file() and p.suffix.lower() in (".txt", ".json"):
        entries = json.loads(p.read_text()) if p.suffix.lower() == ".json" else p.read_text().splitlines()
        if not isinstance(entries, list):
            raise ValueError(f"manifest {p} must hold a JSON list of video paths; got {type(entries).__name__}.")
        found = [(p.parent / str(e).strip()) for e in entries if str(e).strip() and not str(e).startswith("#")]
    elif p.is_file():
        found = [p]
    else:
        found = [Path(q) for q in glob.glob(spec, recursive=True) if Path(q).suffix.lower() in VIDEO_EXTENSIONS]
        if not found:
            raise FileNotFoundError(f"input {spec!r} is not a folder, a video, a manifest (.txt/.json) or a glob "
                                    "matching videos.")
    return sorted(found)


def _stem(video: Path, root: Path) -> str:
    try:
        rel = video.relative_to(root) if root.is_dir() else Path(video.name)
    except ValueError:
        rel = Path(video.name)
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(rel.with_suffix(""))).strip("_") or "video"


def _probe(video: Path):
    """decord reader + fps, after the checks that skip a video."""
    import decord

    try:
        vr = decord.VideoReader(str(video), ctx=decord.cpu(0), num_threads=1)
    except Exception as err:  # decord raises its own DECORDError for anything unreadable
        raise SkipVideo("unreadable", f"decord cannot open it: {err}") from None
    n = len(vr)
    if n == 0:
        raise SkipVideo("empty", "no frames")
    fps = float(vr.get_avg_fps())
    if not (fps > 0 and math.isfinite(fps)):
        raise SkipVideo("unreadable", f"frame rate {fps!r}")
    stamps = vr.get_frame_timestamp(np.arange(n))[:, 0]
    if n > 2:
        dt = np.diff(stamps)
        if (np.abs(dt - 1 / fps) > 0.5 / fps).mean() > 0.01:
            raise SkipVideo("variable_frame_rate", f"frame intervals vary ({dt.min():.4f}–{dt.max():.4f} s)")
    try:
        import av

        with av.open(str(video)) as container:
            rotate = container.streams.video[0].metadata.get("rotate", "0")
        if str(rotate) not in ("0", ""):
            raise SkipVideo("rotated", f"rotation metadata {rotate}°")
    except SkipVideo:
        raise
    except Exception:  # PyAV could not read the metadata: decord could, so go on
        pass
    h, w = vr[0].shape[:2]
    if h > w:
        raise SkipVideo("portrait", f"{w}×{h} (portrait)")
    return vr, fps, n, h, w


def split_shots(video: Path, fps: float, threshold: float, min_frames: int) -> list[tuple[int, int]]:
    """[start, end) frame ranges of the shots (PySceneDetect content detector on a 256-px-wide decode)."""
    import decord
    from scenedetect import ContentDetector
    from scenedetect.common import FrameTimecode

    small = decord.VideoReader(str(video), ctx=decord.cpu(0), width=256, height=144, num_threads=1)
    detector = ContentDetector(threshold=threshold, min_scene_len=min_frames)
    cuts: list[int] = []
    n = len(small)
    for start in range(0, n, 256):
        batch = small.get_batch(list(range(start, min(start + 256, n)))).asnumpy()
        for i, frame in enumerate(batch):
            cuts += [c.frame_num for c in detector.process_frame(FrameTimecode(start + i, fps), frame[..., ::-1])]
    cuts += [c.frame_num for c in detector.post_process(FrameTimecode(n, fps)) or []]
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < n), n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def plan_clips(shot: tuple[int, int], max_frames: int) -> list[tuple[int, int]]:
    """Cut a shot into ⌈len / max_frames⌉ near-equal consecutive clips."""
    a, b = shot
    k = max(1, math.ceil((b - a) / max_frames))
    edges = np.linspace(a, b, k + 1).round().astype(int)
    return [(int(s), int(e)) for s, e in zip(edges[:-1], edges[1:], strict=True)]


def clip_source_frames(max_clip_frames: int, fps: float, target_fps: float | None) -> int:
    """Source frames of a clip holding ``max_clip_frames`` frames at ``target_fps`` (the trainer's frame stride).

    The span is the one the data loader needs to pick that many frames at ``target_fps``
    (:func:`data.transforms.sample_frame_indices`), so a clip cut at this length trains at its full length.
    """
    if target_fps is None or fps <= target_fps:
        return int(max_clip_frames)
    return int(sample_frame_indices(10**9, fps, int(max_clip_frames), target_fps, "start")[-1]) + 1


def _check_output_folder(out: Path, header: dict[str, Any]) -> None:
    path = out / "annotation.json"
    if path.exists():
        old = json.loads(path.read_text())
        for key in ("pipeline_version", "estimator", "estimator_version"):
            if old.get(key) != header[key]:
                raise ValueError(f"{out} was written with {key} = {old.get(key)!r}, this run uses {header[key]!r}; "
                                 "use a new output folder rather than mixing annotations.")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(header, indent=1))


def _caption(video: Path, default: str) -> tuple[str, str]:
    side = video.with_suffix(".txt")
    text = side.read_text(encoding="utf-8").strip() if side.is_file() else ""
    return (text, "sidecar") if text else (default, "default")


def _write_clip(clips_dir: Path, stem: str, frames: np.ndarray, fps: float, result, scores, caption, caption_source,
                video: Path, span: tuple[int, int], cfg: AnnotateConfig) -> None:
    from data.video import encode_mp4

    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2  # yuv420p needs even sizes: drop a last row/column
    mp4 = encode_mp4(np.ascontiguousarray(frames[:, :h, :w]), fps, crf=cfg.crf)
    meta = {
        "fps": fps,
        # the shard schema's scale fields: a relative scale is kept at 1.0 and marked 'relative' (the trainer then
        # reads the reconstruction's units as metres); a user-given scale is relative poses times that factor
        "metric_scale": float(result.scale),
        "pose_scale": "metric" if result.scale_kind == "metric" else "relative",
        "annotation": {"backend": result.estimator, **result.record(), "pipeline_version": PIPELINE_VERSION},
        "quality": scores,
        "licence": cfg.licence,
        "source": str(video),
        "source_frames": list(span),
        "caption_source": caption_source,
    }
    # sidecars first, video last: write_shards treats a clip as present when its mp4 exists
    np.save(clips_dir / f"{stem}.c2w.npy", result.c2w)
    np.save(clips_dir / f"{stem}.intrinsics.npy", result.K)
    (clips_dir / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")
    (clips_dir / f"{stem}.json").write_text(json.dumps(meta, indent=1))
    tmp = clips_dir / f".{stem}.mp4.part"
    tmp.write_bytes(mp4)
    os.replace(tmp, clips_dir / f"{stem}.mp4")


def annotate_video(video: Path, stem: str, estimator, cfg: AnnotateConfig, clips_dir: Path) -> dict[str, Any]:
    """Annotate one video; returns its state record {kept: [...], rejected: [...], frames: n}."""
    kept, rejected = [], []
    try:
        vr, fps, n, h, w = _probe(video)
    except SkipVideo as skip:
        return {"kept": [], "rejected": [{"clip": stem, "reason": skip.reason, "detail": str(skip)}], "frames": 0}
    if cfg.target_fps is not None and fps < cfg.target_fps * (1.0 - FPS_TOLERANCE):
        detail = f"{fps:g} fps is below target_fps {cfg.target_fps:g} (training would repeat frames)"
        return {"kept": [], "rejected": [{"clip": stem, "reason": "fps_too_low", "detail": detail}], "frames": int(n)}
    caption, caption_source = _caption(video, cfg.default_caption)
    shots = split_shots(video, fps, cfg.shot_threshold, cfg.shot_min_frames)
    max_frames = clip_source_frames(cfg.max_clip_frames, fps, cfg.target_fps)
    for si, shot in enumerate(shots):
        for ci, span in enumerate(plan_clips(shot, max_frames)):
            name = f"{stem}-s{si:03d}-c{ci:02d}"
            if span[1] - span[0] < cfg.quality.min_frames:
                rejected.append({"clip": name, "reason": "too_short", "detail": f"{span[1] - span[0]} frames"})
                continue
            frames = vr.get_batch(list(range(*span))).asnumpy()
            known = None if cfg.known_intrinsics is None else list(cfg.known_intrinsics)
            try:
                result = estimate_windows(estimator, frames, fps, known, cfg.window)
            except EstimationError as err:
                rejected.append({"clip": name, "reason": err.reason, "detail": str(err)})
                continue
            if cfg.metres_per_unit is not None and result.scale_kind == "relative":
                result.scale, result.scale_kind = float(cfg.metres_per_unit), "user"
            scores, reasons = assess(result, w, fps, cfg.quality)
            if reasons:
                rejected.append({"clip": name, "reason": reasons[0], "reasons": reasons, "scores": scores})
                continue
            _write_clip(clips_dir, name, frames, fps, result, scores, caption, caption_source, video, span, cfg)
            kept.append(name)
    del vr
    return {"kept": kept, "rejected": rejected, "frames": int(n)}


def run(cfg: AnnotateConfig, progress: bool = True) -> dict[str, Any]:
    """Annotate every video of ``cfg.input`` into ``cfg.out``; returns the summary."""
    from tqdm import tqdm

    if cfg.input in (None, "???") or cfg.out in (None, "???"):
        raise ValueError("usage: python -m annotation INPUT OUT [key=value ...] (INPUT and OUT are required).")
    rank = int(cfg.rank if cfg.rank is not None else os.environ.get("RANK", 0))
    world = int(cfg.world_size if cfg.world_size is not None else os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"need 0 ≤ rank < world_size; got rank={rank}, world_size={world}.")
    cfg.window.check()
    out = Path(cfg.out)
    if cfg.metres_per_unit is not None and not cfg.metres_per_unit > 0:
        raise ValueError(f"metres_per_unit must be positive; got {cfg.metres_per_unit}.")
    estimator = build_estimator(cfg.estimator, cfg.weights, **dict(cfg.estimator_options))
    header = {"pipeline_version": PIPELINE_VERSION, "estimator": estimator.name, "estimator_version": estimator.version,
              "licence": estimator.licence}
    _check_output_folder(out, header)
    clips_dir, state_dir = out / "clips", out / "state"
    clips_dir.mkdir(exist_ok=True)
    state_dir.mkdir(exist_ok=True)
    videos = list_videos(cfg.input)[rank::world]
    root = Path(cfg.input)
    t0, frames_done, skipped = time.time(), 0, 0
    for video in tqdm(videos, desc=f"annotate[{rank}/{world}]", disable=not progress):
        stem = _stem(video, root)
        state_file = state_dir / f"{stem}.json"
        if state_file.exists():
            skipped += 1
            continue
        state = annotate_video(video, stem, estimator, cfg, clips_dir)
        for r in state["rejected"]:
            with open(out / "rejected.jsonl", "a") as f:
                f.write(json.dumps({"video": str(video), **r}) + "\n")
        frames_done += state["frames"]
        state_file.write_text(json.dumps({"video": str(video), **state}))
    elapsed = time.time() - t0
    summary = summarise(state_dir)
    summary.update(resumed=skipped, seconds=round(elapsed, 2),
                   frames_per_second=round(frames_done / elapsed, 3) if elapsed > 0 else 0.0,
                   config=json.loads(json.dumps(asdict(cfg), default=str)))
    if cfg.write_shards and world == 1 and summary["kept"]:
        from data.write_shards import write_folder

        summary["shards"] = write_folder(clips_dir, out / "shards", max_count=cfg.shard_max_count)
    elif world > 1:
        summary["shards"] = f"not written by a {world}-process run: python -m data.write_shards --input " \
                            f"{clips_dir} --out {out / 'shards'}"
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def summarise(state_dir: Path) -> dict[str, Any]:
    kept, reasons, videos = 0, Counter(), 0
    for f in sorted(state_dir.glob("*.json")):
        s = json.loads(f.read_text())
        videos += 1
        kept += len(s["kept"])
        reasons.update(r["reason"] for r in s["rejected"])
    return {"videos": videos, "kept": kept, "rejected": dict(sorted(reasons.items()))}


def format_summary(summary: dict[str, Any]) -> str:
    rows = [("videos", summary["videos"]), ("clips kept", summary["kept"])]
    rows += [(f"rejected: {k}", v) for k, v in summary["rejected"].items()]
    rows += [("videos resumed (skipped)", summary.get("resumed", 0)), ("frames / s", summary.get("frames_per_second"))]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
