"""Write WebDataset shards: the writer API (video and latent samples) and the folder → shards CLI.

API:
    :class:`ShardSink` — rolls over to a new ``<prefix>-NNNNNN.tar`` every ``max_count`` samples or
    ``max_bytes`` bytes and writes ``manifest.json`` (counts, total frames, sha256 per shard).
    :func:`write_video_sample` / :func:`write_latent_sample` — validate and write one sample.

CLI (``python -m data.write_shards --input DIR --out DIR [--max-count N | --max-mb MB]``) reads the
annotation output layout, one clip per stem::

    DIR/<stem>.mp4                 the clip (or DIR/<stem>/ with *.png / *.jpg frames, sorted by name)
    DIR/<stem>.c2w.npy             (F, 4, 4) OpenCV camera-to-world
    DIR/<stem>.intrinsics.npy      (3, 3) / (4,) / (F, 3, 3) / (F, 4) in source pixels
    DIR/<stem>.txt                 caption
    DIR/<stem>.json                optional metadata: metric_scale, pose_scale, annotation, quality, licence,
                                   source, fps (required for image sequences), camera (false = no poses)

The scale of the poses is never assumed: give ``--metric-poses`` (poses in metres) or ``--metric-scale X``
(up-to-scale poses, e.g. COLMAP's, times X are metres), or ``metric_scale`` in each clip's json; a clip
with poses and no stated scale is refused.

A clip with a defect (missing file, mismatched frame count, non-rigid pose, …) is reported and skipped,
or stops the run with ``--strict``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import json
import logging
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from .errors import SampleError
from .schema import (
    C2W_KEY,
    CAMERA_CONDITIONS_KEY,
    CAPTION_KEY,
    CHUNK_PLUCKER_KEY,
    FRAMES_KEY,
    INTRINSICS_KEY,
    LATENT_KEY,
    LATENT_SCHEMA_VERSION,
    META_KEY,
    SCHEMA_VERSION,
    TEXT_EMB_KEY,
    TEXT_MASK_KEY,
    VIDEO_KEY,
    check_sample_key,
    tensor_to_npy_bytes,
)
from .transforms import check_meta_number, check_metric_scale, validate_c2w_array, validate_intrinsics_array
from .video import open_video, read_frames

__all__ = ["ShardSink", "write_video_sample", "write_latent_sample", "write_folder", "main"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


def _sha256(path: str, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


class ShardSink:
    """Shard writer with size-based rollover and a manifest.

    Args:
        out_dir: output directory (created).
        prefix: shard file prefix; shards are ``<prefix>-000000.tar``, ``<prefix>-000001.tar``, ….
        max_count: samples per shard.
        max_bytes: approximate bytes per shard (a shard closes once it reaches this size).
        schema: schema string recorded in the manifest.

    Use as a context manager; :meth:`close` writes ``manifest.json`` and returns the shard paths.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        prefix: str = "shard",
        max_count: int = 100,
        max_bytes: int | None = None,
        schema: str = SCHEMA_VERSION,
    ):
        if max_count < 1:
            raise ValueError(f"`max_count` must be >= 1; got {max_count}.")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"`max_bytes` must be >= 1 or None; got {max_bytes}.")
        if not re.match(r"^[A-Za-z0-9_-]+$", prefix):
            raise ValueError(f"`prefix` must match [A-Za-z0-9_-]+; got {prefix!r}.")
        self.out_dir = str(out_dir)
        os.makedirs(self.out_dir, exist_ok=True)
        self.prefix = prefix
        self.max_count = int(max_count)
        self.max_bytes = max_bytes
        self.schema = schema
        self.shards: list[dict[str, Any]] = []
        self._tar: wds.TarWriter | None = None
        self._current: dict[str, Any] | None = None
        self._keys: set[str] = set()
        self._closed = False

    def _open_next(self) -> None:
        self._close_current()
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        path = os.path.join(self.out_dir, name)
        # mtime=0 makes a shard's bytes (and its sha256) depend only on its content.
        self._tar = wds.TarWriter(path, mtime=0.0, mode=0o644)
        self._current = {"path": name, "num_samples": 0, "num_frames": 0, "bytes": 0}

    def _close_current(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        path = os.path.join(self.out_dir, self._current["path"])
        self._current["bytes"] = os.path.getsize(path)
        self._current["sha256"] = _sha256(path)
        self.shards.append(self._current)
        self._tar, self._current = None, None

    def write(self, sample: dict[str, Any], num_frames: int = 0) -> None:
        """Write one sample dict (``__key__`` + extension → bytes); ``num_frames`` feeds the manifest."""
        if self._closed:
            raise RuntimeError("ShardSink is closed.")
        key = check_sample_key(sample["__key__"])
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}: keys must be unique within a dataset.")
        self._keys.add(key)
        if (
            self._tar is None
            or self._current["num_samples"] >= self.max_count
            or (self.max_bytes is not None and self._current["bytes"] >= self.max_bytes)
        ):
            self._open_next()
        self._tar.write(sample)
        self._current["num_samples"] += 1
        self._current["num_frames"] += int(num_frames)
        self._current["bytes"] += sum(len(v) for k, v in sample.items() if not k.startswith("__"))

    def close(self) -> list[str]:
        """Close the last shard, write ``manifest.json``; returns the shard paths."""
        if not self._closed:
            self._close_current()
            self._closed = True
            manifest = {
                "schema": self.schema,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "num_shards": len(self.shards),
                "num_samples": sum(s["num_samples"] for s in self.shards),
                "num_frames": sum(s["num_frames"] for s in self.shards),
                "shards": self.shards,
            }
            with open(os.path.join(self.out_dir, MANIFEST_NAME), "w") as f:
                json.dump(manifest, f, indent=2)
        return self.paths

    @property
    def paths(self) -> list[str]:
        """Paths of the shards closed so far."""
        return [os.path.join(self.out_dir, s["path"]) for s in self.shards]

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _emit(writer: Any, sample: dict[str, Any], num_frames: int) -> None:
    if isinstance(writer, ShardSink):
        writer.write(sample, num_frames=num_frames)
    else:  # wds.TarWriter / wds.ShardWriter or anything with .write(dict)
        writer.write(sample)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def write_video_sample(
    writer: Any,
    key: str,
    *,
    caption: str,
    meta: dict[str, Any],
    mp4: bytes | None = None,
    frames: np.ndarray | None = None,
    c2w: np.ndarray | None = None,
    intrinsics: np.ndarray | None = None,
) -> dict[str, Any]:
    """Validate and write one video sample.

    Exactly one of ``mp4`` (encoded bytes) or ``frames`` (uint8 ``(F, H, W, 3)``) is given. The
    json's ``num_frames``, ``width`` and ``height`` are measured from the video; ``fps`` must be in
    ``meta`` (or is read from the mp4). ``c2w``/``intrinsics`` are required unless
    ``meta['camera'] is False``.

    Args:
        writer: :class:`ShardSink`, ``wds.TarWriter`` or ``wds.ShardWriter``.
        key: sample key, ``[A-Za-z0-9_-]+``.
        caption: caption text.
        meta: metadata (see ``schema.VIDEO_META_OPTIONAL``). A clip with camera must state the scale of
            its poses: ``metric_scale`` (1.0 for poses in metres; for up-to-scale poses, e.g. COLMAP's,
            the factor that turns them into metres), optionally with ``pose_scale`` ('metric' or
            'relative'), which must agree (metric means a factor of 1). There is no default.
        mp4, frames: the clip.
        c2w: ``(F, 4, 4)`` OpenCV camera-to-world, one per frame.
        intrinsics: ``(3, 3)``, ``(4,)``, ``(F, 3, 3)`` or ``(F, 4)`` in the clip's pixels.

    Returns:
        The json metadata written.

    Raises:
        ValueError: naming the key and the defect (bad shape, frame-count mismatch, non-rigid pose…).
    """
    check_sample_key(key)
    if (mp4 is None) == (frames is None):
        raise ValueError(f"sample {key!r}: give exactly one of `mp4` (bytes) or `frames` (uint8 (F, H, W, 3)).")
    meta = dict(meta)
    sample: dict[str, Any] = {"__key__": key}
    if mp4 is not None:
        vr = None
        try:
            vr = open_video(mp4)
            num, first, fps_read = len(vr), read_frames(vr, [0]), float(vr.get_avg_fps())
        except Exception as err:
            raise ValueError(f"sample {key!r}: the mp4 cannot be decoded with decord: {err}") from None
        finally:
            del vr  # never leave a decord reader for a later fork to inherit (see VideoDecoder)
        if first.ndim != 4 or first.shape[-1] != 3:
            # decord 0.6.0 mis-decodes some very narrow videos (seen at 48 px wide): reject them here.
            raise ValueError(f"sample {key!r}: decord decodes this mp4 as {first.shape[1:]} frames, not (H, W, 3).")
        h, w = first.shape[1:3]
        meta.setdefault("fps", fps_read)
        sample[VIDEO_KEY] = bytes(mp4)
    else:
        frames = _as_numpy(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"sample {key!r}: `frames` must be uint8 (F, H, W, 3); got {frames.shape} {frames.dtype}.")
        num, h, w = frames.shape[:3]
        if "fps" not in meta:
            raise ValueError(f"sample {key!r}: meta['fps'] is required for an image sequence.")
        sample[FRAMES_KEY] = _npy(frames)
    meta.update(schema=SCHEMA_VERSION, num_frames=int(num), width=int(w), height=int(h))
    try:
        meta["fps"] = check_meta_number(meta["fps"], "json:fps")
        has_camera = meta.get("camera", True)
        if has_camera:
            _check_pose_scale(meta)
            if c2w is None or intrinsics is None:
                raise ValueError("`c2w` and `intrinsics` are required unless meta['camera'] is False.")
            c2w_arr = _as_numpy(c2w)
            intr_arr = _as_numpy(intrinsics)
            validate_c2w_array(c2w_arr, num, C2W_KEY)
            validate_intrinsics_array(intr_arr, num, INTRINSICS_KEY)
            sample[C2W_KEY] = _npy(c2w_arr)
            sample[INTRINSICS_KEY] = _npy(intr_arr)
    except (SampleError, ValueError) as err:
        out = ValueError(f"sample {key!r}: {err}")
        out.reason = getattr(err, "reason", "invalid")  # the loader's skip reason, for the CLI's counts
        raise out from None
    sample[CAPTION_KEY] = str(caption).encode("utf-8")
    sample[META_KEY] = json.dumps(meta, sort_keys=True).encode("utf-8")
    _emit(writer, sample, num)
    return meta


def _check_pose_scale(meta: dict[str, Any]) -> None:
    """Require the clip's poses to come with their scale (``metric_scale``, see :func:`write_video_sample`).

    A pose annotator that works up to scale (COLMAP, most SLAM) gives translations in arbitrary units; taking
    them as metres would silently mis-scale the camera control, so nothing is assumed.
    """
    if "metric_scale" not in meta:
        raise ValueError(
            "the scale of the poses is not stated: set meta['metric_scale'] to 1.0 if the poses are in metres "
            "(pose_scale 'metric'), or, for poses up to an unknown scale (pose_scale 'relative', e.g. COLMAP), to the "
            "factor that turns their units into metres (CLI: --metric-poses or --metric-scale X, or the clip's json)."
        )
    meta["metric_scale"] = check_metric_scale(meta["metric_scale"])
    kind = meta.get("pose_scale")
    if kind is not None and kind not in ("metric", "relative"):
        raise ValueError(f"meta['pose_scale'] must be 'metric' or 'relative'; got {kind!r}.")
    if kind == "metric" and meta["metric_scale"] != 1.0:
        raise ValueError(
            f"meta['pose_scale'] is 'metric' but meta['metric_scale'] is {meta['metric_scale']!r}; metric poses "
            "have a factor of 1.0 (use pose_scale 'relative' for poses that need scaling)."
        )


def write_latent_sample(
    writer: Any,
    key: str,
    latent: torch.Tensor,
    text_emb: torch.Tensor,
    text_mask: torch.Tensor,
    camera_conditions: torch.Tensor,
    chunk_plucker: torch.Tensor,
    meta: dict[str, Any] | None = None,
    *,
    caption: str = "",
    c2w: torch.Tensor | None = None,
    intrinsics: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Validate and write one cached-latent sample (the output of the caching command).

    Args:
        writer: :class:`ShardSink` (``schema=LATENT_SCHEMA_VERSION``), ``wds.TarWriter`` or ``ShardWriter``.
        key: sample key.
        latent: ``(C, T, h, w)`` VAE latent (float32 / float16 / bfloat16, stored losslessly).
        text_emb: ``(L, D)`` text-encoder hidden states.
        text_mask: ``(L,)`` bool (or 0/1) mask, True = real token.
        camera_conditions: ``(T, 20)``.
        chunk_plucker: ``(48, T, h, w)``.
        meta: extra metadata (source, licence, …). ``num_frames`` defaults to 8(T−1)+1 and
            ``pixel_height``/``pixel_width`` to 32·h / 32·w.
        caption: caption text (kept for logging / re-encoding).
        c2w: optional ``(F, 4, 4)`` relative metric poses; intrinsics: optional ``(F, 4)`` target pixels.

    Returns:
        The json metadata written.
    """
    check_sample_key(key)
    tensors = {"latent": latent, "text_emb": text_emb, "text_mask": text_mask, "camera_conditions": camera_conditions, "chunk_plucker": chunk_plucker}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"sample {key!r}: `{name}` must be a torch.Tensor; got {type(t).__name__}.")
    if latent.ndim != 4:
        raise ValueError(f"sample {key!r}: `latent` must be (C, T, h, w); got {tuple(latent.shape)}.")
    _, T, h, w = latent.shape
    if text_emb.ndim != 2:
        raise ValueError(f"sample {key!r}: `text_emb` must be (L, D); got {tuple(text_emb.shape)}.")
    if tuple(text_mask.shape) != (text_emb.shape[0],):
        raise ValueError(f"sample {key!r}: `text_mask` must be ({text_emb.shape[0]},) to match text_emb; got {tuple(text_mask.shape)}.")
    if tuple(camera_conditions.shape) != (T, 20):
        raise ValueError(f"sample {key!r}: `camera_conditions` must be ({T}, 20) for T={T}; got {tuple(camera_conditions.shape)}.")
    if tuple(chunk_plucker.shape) != (48, T, h, w):
        raise ValueError(f"sample {key!r}: `chunk_plucker` must be (48, {T}, {h}, {w}); got {tuple(chunk_plucker.shape)}.")
    tensors["text_mask"] = text_mask.bool()
    if c2w is not None:
        tensors["c2w"] = torch.as_tensor(c2w, dtype=torch.float32)
    if intrinsics is not None:
        tensors["intrinsics"] = torch.as_tensor(intrinsics, dtype=torch.float32)
    members = {
        "latent": LATENT_KEY,
        "text_emb": TEXT_EMB_KEY,
        "text_mask": TEXT_MASK_KEY,
        "camera_conditions": CAMERA_CONDITIONS_KEY,
        "chunk_plucker": CHUNK_PLUCKER_KEY,
        "c2w": C2W_KEY,
        "intrinsics": INTRINSICS_KEY,
    }
    sample: dict[str, Any] = {"__key__": key}
    dtypes = {}
    for name, t in tensors.items():
        sample[members[name]], dtypes[name] = tensor_to_npy_bytes(t, name)
    meta = dict(meta or {})
    meta.setdefault("num_frames", 8 * (T - 1) + 1)
    meta.setdefault("pixel_height", 32 * h)
    meta.setdefault("pixel_width", 32 * w)
    meta.update(schema=LATENT_SCHEMA_VERSION, dtypes=dtypes)
    sample[META_KEY] = json.dumps(meta, sort_keys=True).encode("utf-8")
    if caption:
        sample[CAPTION_KEY] = caption.encode("utf-8")
    _emit(writer, sample, int(meta["num_frames"]))
    return meta


# --------------------------------------------------------------------------------------------------
# Folder → shards
# --------------------------------------------------------------------------------------------------

_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def _key_from_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)


def _find_clips(input_dir: Path) -> list[tuple[str, Path]]:
    """(stem, video path or frame folder) for every clip in ``input_dir``, sorted by stem."""
    clips = []
    for p in sorted(input_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in (".mp4", ".mov", ".mkv", ".webm"):
            clips.append((p.stem, p))
        elif p.is_dir() and any(q.suffix.lower() in _IMAGE_EXTS for q in p.iterdir()):
            clips.append((p.name, p))
    return clips


def _load_image_folder(folder: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(q for q in folder.iterdir() if q.suffix.lower() in _IMAGE_EXTS)
    return np.stack([np.asarray(Image.open(q).convert("RGB")) for q in files])


def write_folder(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    prefix: str = "shard",
    max_count: int = 100,
    max_bytes: int | None = None,
    defaults: dict[str, Any] | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Convert a folder in the annotation layout (module docstring) into shards + manifest.

    Args:
        input_dir: folder of clips and sidecar files.
        out_dir: where shards and ``manifest.json`` go.
        prefix, max_count, max_bytes: see :class:`ShardSink`.
        defaults: metadata used where a clip's json lacks the field (e.g. source, licence, metric_scale).
        strict: raise on the first bad clip instead of skipping it.

    Returns:
        ``{"shards": [...paths], "written": n, "skipped": {reason: n}, "skipped_clips": {stem: reason}}``.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"`input_dir` {str(input_dir)!r} is not a directory.")
    clips = _find_clips(input_dir)
    if not clips:
        raise FileNotFoundError(f"no clips (*.mp4 or folders of images) in {str(input_dir)!r}.")
    skipped: Counter[str] = Counter()
    skipped_clips: dict[str, str] = {}
    written = 0
    used_keys: set[str] = set()
    with ShardSink(out_dir, prefix, max_count, max_bytes) as sink:
        for stem, path in clips:
            try:
                key = _key_from_stem(stem)
                if key in used_keys:
                    raise ValueError(f"key {key!r} (from {stem!r}) collides with another clip after sanitising.")
                used_keys.add(key)
                meta = dict(defaults or {})
                side = input_dir / f"{stem}.json"
                if side.exists():
                    meta.update(json.loads(side.read_text()))
                meta.setdefault("source", input_dir.name)
                cap_path = input_dir / f"{stem}.txt"
                if not cap_path.exists():
                    raise FileNotFoundError(f"caption file {cap_path.name!r} is missing.")
                caption = cap_path.read_text(encoding="utf-8").strip()
                c2w = intr = None
                if meta.get("camera", True):
                    for suffix in (".c2w.npy", ".intrinsics.npy"):
                        if not (input_dir / f"{stem}{suffix}").exists():
                            raise FileNotFoundError(f"pose file {stem + suffix!r} is missing.")
                    c2w = np.load(input_dir / f"{stem}.c2w.npy", allow_pickle=False)
                    intr = np.load(input_dir / f"{stem}.intrinsics.npy", allow_pickle=False)
                if path.is_dir():
                    video = {"frames": _load_image_folder(path)}
                else:
                    video = {"mp4": path.read_bytes()}
                write_video_sample(sink, key, caption=caption, meta=meta, c2w=c2w, intrinsics=intr, **video)
                written += 1
            except (ValueError, FileNotFoundError, OSError) as err:
                if strict:
                    raise ValueError(f"clip {stem!r} in {str(input_dir)!r}: {err}") from err
                reason = "missing_key" if isinstance(err, FileNotFoundError) else getattr(err, "reason", "invalid")
                skipped[reason] += 1
                skipped_clips[stem] = str(err)
                log.warning("skipping clip %r: %s", stem, err)
    return {"shards": sink.paths, "written": written, "skipped": dict(skipped), "skipped_clips": skipped_clips}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m data.write_shards --input DIR --out DIR``."""
    p = argparse.ArgumentParser(prog="python -m data.write_shards", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="folder of clips + <stem>.c2w.npy / .intrinsics.npy / .txt / .json")
    p.add_argument("--out", required=True, help="output folder for <prefix>-NNNNNN.tar and manifest.json")
    p.add_argument("--prefix", default="shard")
    p.add_argument("--max-count", type=int, default=100, help="samples per shard")
    p.add_argument("--max-mb", type=float, default=None, help="approximate MB per shard")
    p.add_argument("--source", default=None, help="default json 'source'")
    p.add_argument("--licence", default=None, help="default json 'licence'")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--metric-poses", action="store_true",
                       help="the poses are in metres (json metric_scale 1.0, pose_scale 'metric')")
    scale.add_argument("--metric-scale", type=float, default=None, metavar="X",
                       help="the poses are up to scale (e.g. COLMAP); X turns their units into metres "
                            "(json metric_scale X, pose_scale 'relative')")
    p.add_argument("--strict", action="store_true", help="stop at the first bad clip")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    defaults = {k: v for k, v in (("source", args.source), ("licence", args.licence)) if v is not None}
    if args.metric_poses:
        defaults.update(metric_scale=1.0, pose_scale="metric")
    elif args.metric_scale is not None:
        defaults.update(metric_scale=args.metric_scale, pose_scale="relative")
    max_bytes = None if args.max_mb is None else int(args.max_mb * 2**20)
    try:
        result = write_folder(args.input, args.out, args.prefix, args.max_count, max_bytes, defaults, args.strict)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {result['written']} clips into {len(result['shards'])} shards in {args.out}; skipped {result['skipped'] or 0}")
    for stem, why in result["skipped_clips"].items():
        print(f"  skipped {stem}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
