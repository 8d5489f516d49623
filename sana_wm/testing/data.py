"""Small shard builders for tests and examples (including deliberately broken samples).

:func:`raw_video_sample` builds the raw member dict of one video sample *without* validation, so a
test can write any defect with ``wds.TarWriter``; :func:`tiny_video_clip` makes a short textured clip
with a simple known camera motion.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Any

import numpy as np
import webdataset as wds

from data.schema import C2W_KEY, CAPTION_KEY, FRAMES_KEY, INTRINSICS_KEY, META_KEY, SCHEMA_VERSION, VIDEO_KEY
from data.video import encode_mp4

__all__ = ["npy_bytes", "tiny_video_clip", "write_tiny_video_shards", "raw_video_sample", "raw_latent_sample",
           "write_raw_shard", "cut_tar"]


def npy_bytes(arr: np.ndarray) -> bytes:
    """``.npy`` serialisation of an array (no pickling)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def tiny_video_clip(num_frames: int = 9, height: int = 32, width: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A short clip: a random texture panning right, with a camera moving along +x.

    Returns:
        frames ``(F, H, W, 3)`` uint8, c2w ``(F, 4, 4)`` float64 (translation 0.1·i along x, small
        yaw), K ``(3, 3)`` float64.
    """
    rng = np.random.default_rng(seed)
    tex = (rng.random((height // 4 + 1, (width + 4 * num_frames) // 4 + 1, 3)) * 255).astype(np.uint8)
    tex = np.repeat(np.repeat(tex, 4, axis=0), 4, axis=1)  # 4×4 blocks survive H.264 well
    frames = np.stack([tex[:height, 2 * i : 2 * i + width] for i in range(num_frames)])
    c2w = np.tile(np.eye(4), (num_frames, 1, 1))
    for i in range(num_frames):
        a = 0.01 * i
        c2w[i, :3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
        c2w[i, :3, 3] = [0.1 * i, 0.0, 0.02 * i]
    K = np.array([[0.8 * width, 0, (width - 1) / 2], [0, 0.8 * width, (height - 1) / 2], [0, 0, 1.0]])
    return frames, c2w, K


def write_tiny_video_shards(out_dir: str | os.PathLike, num_clips: int, num_frames: int, height: int, width: int,
                            clips_per_shard: int = 2) -> list[str]:
    """Valid video shards of :func:`tiny_video_clip` clips (seeds 0, 1, …; captions "a panning clip number i");
    returns the shard paths."""
    from data.write_shards import ShardSink, write_video_sample

    with ShardSink(out_dir, prefix="v", max_count=clips_per_shard) as sink:
        for i in range(num_clips):
            frames, c2w, K = tiny_video_clip(num_frames=num_frames, height=height, width=width, seed=i)
            write_video_sample(sink, f"clip-{i}", caption=f"a panning clip number {i}",
                               meta={"fps": 16.0, "metric_scale": 1.0}, frames=frames, c2w=c2w, intrinsics=K)
    return sink.paths


def raw_video_sample(
    key: str,
    frames: np.ndarray | None = None,
    c2w: np.ndarray | None = None,
    intrinsics: np.ndarray | None = None,
    caption: str = "a test clip",
    fps: float = 16.0,
    metric_scale: float = 1.0,
    as_mp4: bool = True,
    mp4: bytes | None = None,
    meta_overrides: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Raw member dict of a video sample, unvalidated (for building broken shards on purpose).

    Args:
        key: sample key.
        frames: ``(F, H, W, 3)`` uint8 (encoded to H.264 if ``as_mp4``, else stored as frames.npy).
        c2w, intrinsics: arrays stored as given (None → member omitted).
        caption, fps, metric_scale: written into txt / json.
        mp4: pre-encoded (possibly corrupted) bytes used instead of ``frames``.
        meta_overrides: json fields to set (a value of ``None`` deletes the field).
        drop: member extensions to leave out (e.g. ``("c2w.npy",)``).
    """
    sample: dict[str, Any] = {"__key__": key}
    if mp4 is not None:
        sample[VIDEO_KEY] = mp4
    elif frames is not None:
        sample[VIDEO_KEY if as_mp4 else FRAMES_KEY] = encode_mp4(frames, fps, crf=12) if as_mp4 else npy_bytes(frames)
    meta: dict[str, Any] = {"schema": SCHEMA_VERSION, "fps": fps, "metric_scale": metric_scale, "source": "test", "licence": "CC0-1.0"}
    if frames is not None:
        meta.update(num_frames=int(frames.shape[0]), height=int(frames.shape[1]), width=int(frames.shape[2]))
    for k, v in (meta_overrides or {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    sample[META_KEY] = json.dumps(meta).encode()
    sample[CAPTION_KEY] = caption.encode()
    if c2w is not None:
        sample[C2W_KEY] = npy_bytes(c2w)
    if intrinsics is not None:
        sample[INTRINSICS_KEY] = npy_bytes(intrinsics)
    for name in drop:
        sample.pop(name, None)
    return sample


def write_raw_shard(path: str, samples: list[dict[str, Any]]) -> str:
    """Write raw member dicts into one tar shard (no validation); returns ``path``."""
    with wds.TarWriter(str(path), mtime=0.0, mode=0o644) as tw:
        for s in samples:
            tw.write(s)
    return str(path)


def raw_latent_sample(
    key: str,
    T: int = 2,
    h: int = 1,
    w: int = 2,
    caption: str = "a cached clip",
    poses: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Raw member dict of a valid latent sample (``write_latent_sample``'s output), for editing into defects.

    ``poses`` adds the optional ``c2w.npy`` (F, 4, 4) and ``intrinsics.npy`` (F, 4) members (F = 8(T-1)+1);
    the camera moves forward 0.05 per frame with K = [0.8 W, 0.8 W, W/2, H/2].
    """
    import torch

    from data.write_shards import write_latent_sample
    from sana_wm.camera import prepare_camera

    F, H, W = 8 * (T - 1) + 1, 32 * h, 32 * w
    c2w = np.tile(np.eye(4), (F, 1, 1))
    c2w[:, 2, 3] = np.arange(F) * 0.05
    K = np.array([0.8 * W, 0.8 * W, W / 2, H / 2])
    cond, plk = prepare_camera(c2w, K, (H, W), (h, w), num_frames=F)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}

    class _Capture:
        def write(self, sample: dict[str, Any]) -> None:
            out.update(sample)

    extra = dict(c2w=torch.from_numpy(c2w).float(), intrinsics=torch.from_numpy(np.tile(K, (F, 1))).float()) if poses else {}
    write_latent_sample(
        _Capture(), key, torch.randn(4, T, h, w, generator=g), torch.randn(3, 4, generator=g), torch.ones(3, dtype=torch.bool),
        cond, plk, {"source": "test"}, caption=caption, **extra,
    )
    return out


def cut_tar(path: str | os.PathLike, out: str | os.PathLike, member: str | None, fraction: float = 0.5) -> str:
    """Copy the tar ``path`` to ``out`` cut short: inside the data of ``member`` (e.g. ``'s2.mp4'``) after
    ``fraction`` of it, or with ``fraction=0`` exactly before that member's header; ``member=None`` drops only the
    end-of-archive blocks. Returns ``out``."""
    with tarfile.open(path) as tf:
        infos = {i.name: i for i in tf.getmembers()}
        if member is None:
            last = max(infos.values(), key=lambda i: i.offset_data)
            end = last.offset_data + -(-last.size // 512) * 512
        elif fraction == 0:
            end = infos[member].offset
        else:
            end = infos[member].offset_data + max(1, int(infos[member].size * fraction))
    with open(path, "rb") as f:
        data = f.read(end)
    with open(out, "wb") as f:
        f.write(data)
    return str(out)
