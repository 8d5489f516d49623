"""WebDataset loading of video and latent shards: sharding, shuffling, seeding, decoding, skipping.

Pipeline (one per DataLoader worker)::

    shard list ──(shuffle by seed(base, epoch))──▶ wds.split_by_node ──▶ wds.split_by_worker  (finite)
    shard list ──(draw with replacement, seed(base, rank, worker, epoch))──────────────▶ (resampled)
        ──▶ read_shards (whole samples only; a damaged shard = one skip) ──▶ wds.shuffle(buffer, seed(…))
        ──▶ decoder (VideoDecoder / LatentDecoder; defects → skip + count, or DataError if strict)
        ──▶ Sample / LatentSample (carrying the worker's skip counts)

* Finite mode: every rank applies the *same* shard permutation for an epoch and then takes
  ``shards[rank::world_size][worker::num_workers]``, so ranks and workers see disjoint shards and
  every sample is seen once per epoch. Give at least ``world_size × num_workers`` shards (else some
  workers idle, which is logged) and a multiple of it (else ranks get unequal sample counts — under
  DDP that makes the longer ranks wait; use resampled mode for multi-node training).
* Resampled mode: an infinite stream of shards drawn with replacement, seeded differently on each
  rank and worker; ``samples_per_epoch`` cuts it into epochs of equal length on every rank.

By default the split is webdataset's own ``wds.split_by_node`` then ``wds.split_by_worker``, which
read the rank from the ``RANK``/``WORLD_SIZE`` environment or ``torch.distributed`` and the worker
from the DataLoader (or ``WORKER``/``NUM_WORKERS``); the seeds use the same values
(:func:`get_dist_info`). Passing ``rank``/``world_size`` explicitly (the DataModule passes the
trainer's) applies the same ``[rank::world_size][worker::num_workers]`` slicing directly, because the
webdataset splitters take no rank argument.

Tar members are grouped into samples by :func:`read_shards` (the standard library's ``tarfile`` in stream mode,
webdataset's ``gopen`` and key rule) rather than webdataset's ``tarfile_to_samples``: that iterator reports a shard
cut inside a member as several errors, lets the cut sample's remaining members join the next shard's first sample,
and can pass a sample whose optional member was cut as whole; here a damaged shard is one skip.

Cached latents are decoded without copying: the tensors are views of the tar members' bytes (see
:func:`~data.schema.npy_bytes_to_tensor`), and the NaN/inf scan is one pass (a sum) per tensor.

Epochs: each ``__iter__`` uses the dataset's current epoch and then increments it, so persistent
workers advance by themselves; :class:`EpochDataLoader` calls :meth:`ShardDataset.set_epoch` before
each pass so non-persistent workers (fresh copies of the dataset) agree.

Skips: each process keeps its own :class:`~data.errors.SkipStats`; the counts travel with every
sample (``skip_counts``, ``worker``) and :class:`SkipTracker` sums the latest snapshot per worker.
Those snapshots miss the skips a worker makes after its last sample, and a worker that delivers
nothing; so the workers also publish their counts in a shared-memory table that
:class:`EpochDataLoader` sets up before each pass, and :meth:`ShardDataset.skip_totals` sums it —
exact at the end of an epoch.
"""

from __future__ import annotations

import gc
import glob
import json
import logging
import os
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset
from webdataset.tariterators import base_plus_ext

from sana_wm.camera import resize_crop_geometry, validate_c2w

from .errors import SKIP_REASONS, DataError, SampleError, SkipReason, SkipStats
from .schema import (
    _STORABLE,
    C2W_KEY,
    CAMERA_CONDITIONS_KEY,
    CAPTION_KEY,
    CHUNK_PLUCKER_KEY,
    FRAMES_KEY,
    INTRINSICS_KEY,
    LATENT_KEY,
    LATENT_META_REQUIRED,
    LATENT_SCHEMA_VERSION,
    META_KEY,
    SCHEMA_VERSION,
    TEXT_EMB_KEY,
    TEXT_MASK_KEY,
    VIDEO_KEY,
    VIDEO_META_REQUIRED,
    Batch,
    LatentSample,
    Sample,
    collate,
    npy_bytes_to_tensor,
)
from .seeding import seed_for
from .transforms import (
    LATENT_DOWNSAMPLE,
    LATENT_TEMPORAL_STRIDE,
    build_clip_camera,
    check_meta_number,
    check_metric_scale,
    check_num_frames,
    check_target_size,
    resize_center_crop,
    sample_frame_indices,
    validate_c2w_array,
    validate_intrinsics_array,
)
from .video import open_video, read_frames

__all__ = [
    "DistInfo",
    "get_dist_info",
    "seed_for",
    "expand_shard_urls",
    "VideoDecoder",
    "LatentDecoder",
    "ShardDataset",
    "make_video_dataset",
    "make_latent_dataset",
    "EpochDataLoader",
    "SkipTracker",
]

log = logging.getLogger(__name__)

_REASON_INDEX = {reason: i for i, reason in enumerate(SKIP_REASONS)}

# Stream tags so the shard order, sample shuffle, frame sampling and resampling draw independent numbers.
_TAG_SHARDS, _TAG_SHUFFLE, _TAG_FRAMES, _TAG_RESAMPLE = 1, 2, 3, 4


# --------------------------------------------------------------------------------------------------
# Ranks, workers, seeds, shard lists
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """Where this iterator runs: data-parallel rank/world size and DataLoader worker/num_workers."""

    rank: int
    world_size: int
    worker: int
    num_workers: int


def get_dist_info(rank: int | None = None, world_size: int | None = None) -> DistInfo:
    """Resolve rank/world size and the current DataLoader worker.

    Whatever is not given explicitly comes from ``wds.utils.pytorch_worker_info`` — the function
    ``wds.split_by_node`` / ``wds.split_by_worker`` call — so the seeds derived from this agree with
    the split: ``RANK``/``WORLD_SIZE`` env > ``torch.distributed`` > 0/1, and ``WORKER``/``NUM_WORKERS``
    env > the DataLoader worker > 0/1 (main process).
    """
    r, w, worker, num_workers = wds.utils.pytorch_worker_info()
    rank = r if rank is None else rank
    world_size = w if world_size is None else world_size
    if not (0 <= rank < world_size):
        raise ValueError(f"rank must satisfy 0 <= rank < world_size; got rank={rank}, world_size={world_size}.")
    return DistInfo(int(rank), int(world_size), int(worker), int(num_workers))


def expand_shard_urls(urls: str | os.PathLike | list[str]) -> list[str]:
    """Expand a shard specification to a list of shard paths/URLs.

    Accepts a list, a brace pattern (``'out/train-{000000..000009}.tar'``), a glob, a directory
    (all ``*.tar`` inside, sorted) or a ``manifest.json`` written by the shard writers.
    """
    if isinstance(urls, (list, tuple)):
        out = [str(u) for u in urls]
    else:
        spec = str(urls)
        if os.path.isdir(spec):
            out = sorted(glob.glob(os.path.join(spec, "*.tar")))
        elif spec.endswith(".json") and os.path.isfile(spec):
            with open(spec) as f:
                manifest = json.load(f)
            root = os.path.dirname(spec)
            out = [os.path.join(root, s["path"]) for s in manifest["shards"]]
        elif any(c in spec for c in "*?[") and "{" not in spec:
            out = sorted(glob.glob(spec))
        else:
            out = wds.shardlists.expand_urls(spec)
    if not out:
        raise ValueError(f"no shards found for {urls!r} (expected a list, brace pattern, glob, directory or manifest.json).")
    return out


# --------------------------------------------------------------------------------------------------
# Decoders: raw tar members → Sample / LatentSample, defects → SampleError
# --------------------------------------------------------------------------------------------------


def _require(raw: dict, name: str) -> bytes:
    if name not in raw:
        present = sorted(k for k in raw if not k.startswith("__"))
        raise SampleError(SkipReason.MISSING_KEY, name, f"member '{raw['__key__']}.{name}' is absent (present: {present}).")
    return raw[name]


def _load_json(raw: dict, schema: str) -> dict:
    try:
        meta = json.loads(_require(raw, META_KEY))
    except SampleError:
        raise
    except Exception as err:
        raise SampleError(SkipReason.BAD_META, META_KEY, f"not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise SampleError(SkipReason.BAD_META, META_KEY, f"expected a JSON object; got {type(meta).__name__}.")
    if "schema" not in meta:
        raise SampleError(SkipReason.MISSING_KEY, "json:schema", f"no schema version; expected {schema!r}.")
    if meta["schema"] != schema:
        raise SampleError(SkipReason.BAD_META, "json:schema", f"schema {meta['schema']!r} is not the expected {schema!r}.")
    return meta


def _meta_number(meta: dict, name: str, integer: bool = False) -> float:
    if name not in meta:
        raise SampleError(SkipReason.MISSING_KEY, f"json:{name}", "required metadata field is absent.")
    return check_meta_number(meta[name], f"json:{name}", integer)


def _load_npy(raw: dict, name: str, dtype_name: str | None = None) -> torch.Tensor:
    data = _require(raw, name)
    try:
        return npy_bytes_to_tensor(data, dtype_name, zero_copy=True)  # the raw dict is dropped after decoding
    except Exception as err:
        raise SampleError(SkipReason.BAD_ARRAY, name, f"not a readable .npy array: {err}") from None


def _caption(raw: dict) -> str:
    try:
        return _require(raw, CAPTION_KEY).decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise SampleError(SkipReason.BAD_META, CAPTION_KEY, f"caption is not UTF-8: {err}") from None


class VideoDecoder:
    """Decode one raw video-shard sample into a :class:`~data.schema.Sample`.

    Args:
        num_frames: frames per sample, 8k+1 (e.g. 161 or 961 for the real model).
        height, width: target size, multiples of 32 (704 × 1280 for the real model).
        target_fps: playback rate of the sampled frames (16 for SANA-WM); None keeps every frame.
        frame_sampling: 'random' (uniform start, seeded), 'start' or 'center'.
        video_format: 'float' → (3, F, H, W) in [-1, 1]; 'uint8' → (F, H, W, 3).
        decode_threads: decord threads per worker.
        temporal_stride: VAE temporal compression (8).
        spatial_stride: VAE spatial compression (32); height and width must be multiples of it.
    """

    def __init__(
        self,
        num_frames: int,
        height: int,
        width: int,
        target_fps: float | None = 16.0,
        frame_sampling: str = "random",
        video_format: str = "float",
        decode_threads: int = 1,
        temporal_stride: int = 8,
        spatial_stride: int = 32,
    ):
        self.num_frames = check_num_frames(num_frames)
        self.height, self.width = check_target_size(height, width, spatial_stride)
        if target_fps is not None and not (np.isfinite(target_fps) and target_fps > 0):
            raise ValueError(f"`target_fps` must be a positive number or None; got {target_fps!r}.")
        if frame_sampling not in ("random", "start", "center"):
            raise ValueError(f"`frame_sampling` must be 'random', 'start' or 'center'; got {frame_sampling!r}.")
        if video_format not in ("float", "uint8"):
            raise ValueError(f"`video_format` must be 'float' or 'uint8'; got {video_format!r}.")
        self.target_fps = None if target_fps is None else float(target_fps)
        self.frame_sampling = frame_sampling
        self.video_format = video_format
        self.decode_threads = int(decode_threads)
        self.temporal_stride = int(temporal_stride)
        self.spatial_stride = int(spatial_stride)

    @staticmethod
    def _check_count(n_video: int, meta_f: int, field: str) -> None:
        if n_video != meta_f:
            raise SampleError(
                SkipReason.FRAME_COUNT_MISMATCH, field, f"the video has {n_video} frames but json:num_frames (and the poses) say {meta_f}."
            )

    def _decode_mp4(self, data: bytes, meta_f: int, fps: float, rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
        """Open, pick indices, decode → (indices, (F, H, W, 3) uint8). The reader is dropped in ``finally``:
        a decord reader still alive when a DataLoader forks its workers (e.g. kept by an exception
        traceback) aborts the child when it is garbage-collected there."""
        vr = None
        try:
            try:
                vr = open_video(data, self.decode_threads)
                n_video = len(vr)
            except Exception as err:
                raise SampleError(SkipReason.DECODE_ERROR, VIDEO_KEY, f"cannot open the video: {err}") from None
            self._check_count(n_video, meta_f, VIDEO_KEY)
            indices = sample_frame_indices(n_video, fps, self.num_frames, self.target_fps, self.frame_sampling, rng)
            try:
                frames = read_frames(vr, indices)  # (F, H_src, W_src, 3) uint8
            except Exception as err:
                raise SampleError(SkipReason.DECODE_ERROR, VIDEO_KEY, f"decoding frames {indices[0]}..{indices[-1]} failed: {err}") from None
        finally:
            del vr
        return indices, frames

    def __call__(self, raw: dict, rng: np.random.Generator) -> Sample:
        key = raw["__key__"]
        meta = _load_json(raw, SCHEMA_VERSION)
        has_camera = meta.get("camera", True)
        if not isinstance(has_camera, bool):
            raise SampleError(SkipReason.BAD_META, "json:camera", f"expected true/false; got {has_camera!r}.")
        if not has_camera:
            # Made-up poses (identity, a default K) for footage whose camera may move would teach the model that
            # moving footage means a static camera; such a clip is counted and reported instead.
            raise SampleError(
                SkipReason.NO_CAMERA, "json:camera",
                "the clip has no camera annotation; write its c2w.npy and intrinsics.npy (e.g. from a pose "
                "estimator, with its metric scale) to train on it.",
            )
        for name in VIDEO_META_REQUIRED:
            if name not in meta:
                raise SampleError(SkipReason.MISSING_KEY, f"json:{name}", "required metadata field is absent.")
        fps = _meta_number(meta, "fps")
        meta_w = _meta_number(meta, "width", integer=True)
        meta_h = _meta_number(meta, "height", integer=True)
        meta_f = _meta_number(meta, "num_frames", integer=True)
        metric_scale = check_metric_scale(meta["metric_scale"])
        caption = _caption(raw)

        # Cheap array checks first, so a bad annotation costs no video decoding.
        c2w = validate_c2w_array(_load_npy(raw, C2W_KEY).numpy(), meta_f, C2W_KEY)
        intr = validate_intrinsics_array(_load_npy(raw, INTRINSICS_KEY).numpy(), meta_f, INTRINSICS_KEY)

        if VIDEO_KEY in raw:
            indices, frames = self._decode_mp4(raw[VIDEO_KEY], meta_f, fps, rng)
            field = VIDEO_KEY
        elif FRAMES_KEY in raw:
            field = FRAMES_KEY
            frames_all = _load_npy(raw, FRAMES_KEY)
            if frames_all.dtype != torch.uint8 or frames_all.ndim != 4 or frames_all.shape[-1] != 3:
                raise SampleError(SkipReason.BAD_ARRAY, field, f"expected uint8 (F, H, W, 3); got {tuple(frames_all.shape)} {frames_all.dtype}.")
            self._check_count(frames_all.shape[0], meta_f, field)
            indices = sample_frame_indices(frames_all.shape[0], fps, self.num_frames, self.target_fps, self.frame_sampling, rng)
            frames = frames_all[torch.from_numpy(indices)]
        else:
            raise SampleError(SkipReason.MISSING_KEY, VIDEO_KEY, f"neither '{key}.{VIDEO_KEY}' nor '{key}.{FRAMES_KEY}' is present.")
        src_h, src_w = int(frames.shape[1]), int(frames.shape[2])
        if (src_h, src_w) != (meta_h, meta_w):
            raise SampleError(
                SkipReason.SIZE_MISMATCH, field, f"frames are {src_w}x{src_h} but json says {meta_w}x{meta_h} (the intrinsics refer to the json size)."
            )
        geom = resize_crop_geometry(src_h, src_w, self.height, self.width)
        video = resize_center_crop(frames, geom, self.height, self.width, self.video_format)
        cam = build_clip_camera(c2w, intr, indices, geom, metric_scale, (self.height, self.width), self.temporal_stride,
                                spatial_stride=self.spatial_stride)
        stride = 1.0 if self.target_fps is None else max(1.0, fps / self.target_fps)
        return Sample(
            key=key,
            video=video,
            c2w=cam.c2w,
            intrinsics=cam.intrinsics,
            camera_conditions=cam.camera_conditions,
            chunk_plucker=cam.chunk_plucker,
            caption=caption,
            fps=float(fps / stride),
            frame_indices=torch.from_numpy(indices),
            meta={**meta, "__url__": raw.get("__url__")},
            video_format=self.video_format,
        )


def _check_finite(t: torch.Tensor, name: str) -> None:
    """Raise ``nonfinite_tensor`` if ``t`` holds NaN/inf.

    Every element is read, once: the sum of a tensor is NaN/inf whenever one of its elements is
    (NaN propagates, inf stays inf or meets -inf and becomes NaN), so a finite sum clears the whole
    tensor in one pass. Only a sum that overflows although every value is finite needs the exact
    (~20x slower) ``isfinite`` count. float16 would overflow its ±65504 range on ordinary latents, so
    it is tested on its bits instead: a half is non-finite exactly when all five exponent bits are set.
    On a 961-frame bf16 latent (13.6 M values) the sum takes ~2.4 ms on one core; the previous
    bit test (AND into a temporary, then max) took ~6 ms.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return
    if t.dtype == torch.float16:
        bits = t.contiguous().view(torch.int16).numpy().view(np.uint16)
        suspicious = int(np.bitwise_and(bits, 0x7C00).max()) == 0x7C00
    else:
        suspicious = not bool(torch.isfinite(t.sum()))
    if suspicious:
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise SampleError(SkipReason.NONFINITE_TENSOR, name, f"{bad} non-finite values.")


# the writer's storable float dtypes (bool is text_mask's alone)
_TENSOR_DTYPES: dict[str, torch.dtype] = {name: dt for dt, name in _STORABLE.items() if dt is not torch.bool}


def _load_typed(raw: dict, name: str, member: str, dtypes: dict) -> torch.Tensor:
    """Load a latent-shard tensor whose type the format allows and the sample's ``json:dtypes`` states.

    Every tensor is float32, float16 or bfloat16 (``text_mask``: bool), and the stored array must be
    exactly the type the json names: an integer latent would pass shape checks and skip the NaN scan,
    and a json that disagrees with its member means one of them was written by something else.
    """
    allowed = {"bool": torch.bool} if name == "text_mask" else _TENSOR_DTYPES
    field = f"json:dtypes.{name}"
    if name not in dtypes:
        raise SampleError(SkipReason.BAD_META, field, f"no stored dtype for '{member}'; expected one of {sorted(allowed)}.")
    want = dtypes[name]
    if want not in allowed:
        raise SampleError(SkipReason.BAD_META, field, f"{want!r} is not a dtype of the format; expected one of {sorted(allowed)}.")
    t = _load_npy(raw, member, want)
    if t.dtype != allowed[want]:
        raise SampleError(SkipReason.BAD_ARRAY, member, f"stored as {str(t.dtype).removeprefix('torch.')} but json:dtypes says {want!r}.")
    return t


class LatentDecoder:
    """Decode one raw latent-shard sample into a :class:`~data.schema.LatentSample`.

    Checks: schema and required json fields; every tensor present, of the dtype its ``json:dtypes``
    entry names (float32/float16/bfloat16, text_mask bool) and finite; latent ``(C, T, h, w)``,
    text_emb ``(L, D)``, text_mask ``(L,)``, camera_conditions ``(T, 20)`` with rigid poses and
    fx, fy > 0, chunk_plucker ``(48, T, h, w)``; the optional ``c2w`` ``(F, 4, 4)`` and ``intrinsics``
    ``(F, 4)`` (F = json num_frames) finite, rigid and with positive focal lengths and principal point.

    Args:
        check_finite: scan the latent and embeddings for NaN/inf (~2.5 ms per 961-frame bf16 latent
            on one core; the camera tensors are always scanned).
    """

    def __init__(self, check_finite: bool = True):
        self.check_finite = bool(check_finite)

    @staticmethod
    def _check_sizes(meta: dict, T: int, h: int, w: int) -> None:
        """The json's pixel size and frame count must be those the latent was encoded from."""
        size = (_meta_number(meta, "pixel_height", integer=True), _meta_number(meta, "pixel_width", integer=True))
        frames = _meta_number(meta, "num_frames", integer=True)
        s, t = LATENT_DOWNSAMPLE, LATENT_TEMPORAL_STRIDE
        if size != (s * h, s * w):
            raise SampleError(
                SkipReason.SHAPE_MISMATCH, "json:pixel_height", f"json says {size[0]}x{size[1]} pixels but the latent's "
                f"{h}x{w} grid is {s * h}x{s * w}."
            )
        if (frames - 1) % t or (frames - 1) // t + 1 != T:
            raise SampleError(
                SkipReason.SHAPE_MISMATCH, "json:num_frames", f"json says {frames} frames but the latent's T={T} "
                f"encodes {t * (T - 1) + 1}."
            )

    @staticmethod
    def _pixel_poses(raw: dict, meta: dict, dtypes: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The optional per-pixel-frame ``c2w`` (F, 4, 4) and ``intrinsics`` (F, 4), checked like a video
        sample's: F = json num_frames, finite, rigid poses, fx, fy and the principal point > 0."""
        c2w = intr = None
        if C2W_KEY in raw or INTRINSICS_KEY in raw:
            num_frames = _meta_number(meta, "num_frames", integer=True)
        if C2W_KEY in raw:
            c2w = _load_typed(raw, "c2w", C2W_KEY, dtypes)
            validate_c2w_array(c2w.float().numpy(), num_frames, C2W_KEY)
        if INTRINSICS_KEY in raw:
            intr = _load_typed(raw, "intrinsics", INTRINSICS_KEY, dtypes)
            if tuple(intr.shape) != (num_frames, 4):
                raise SampleError(
                    SkipReason.BAD_ARRAY, INTRINSICS_KEY, f"expected ({num_frames}, 4) [fx, fy, cx, cy]; got {tuple(intr.shape)}."
                )
            validate_intrinsics_array(intr.float().numpy(), num_frames, INTRINSICS_KEY)
        return c2w, intr

    def __call__(self, raw: dict, rng: np.random.Generator) -> LatentSample:
        del rng  # latent samples are used whole
        key = raw["__key__"]
        meta = _load_json(raw, LATENT_SCHEMA_VERSION)
        for name in LATENT_META_REQUIRED:
            if name not in meta:
                raise SampleError(SkipReason.MISSING_KEY, f"json:{name}", "required metadata field is absent.")
        dtypes = meta["dtypes"]
        if not isinstance(dtypes, dict):
            raise SampleError(SkipReason.BAD_META, "json:dtypes", f"expected an object name -> dtype; got {dtypes!r}.")
        names = {
            "latent": LATENT_KEY,
            "text_emb": TEXT_EMB_KEY,
            "text_mask": TEXT_MASK_KEY,
            "camera_conditions": CAMERA_CONDITIONS_KEY,
            "chunk_plucker": CHUNK_PLUCKER_KEY,
        }
        t = {n: _load_typed(raw, n, member, dtypes) for n, member in names.items()}
        latent, emb, mask, cond, plk = (t[n] for n in names)
        if latent.ndim != 4:
            raise SampleError(SkipReason.BAD_ARRAY, LATENT_KEY, f"expected (C, T, h, w); got {tuple(latent.shape)}.")
        _, T, h, w = latent.shape
        if emb.ndim != 2:
            raise SampleError(SkipReason.BAD_ARRAY, TEXT_EMB_KEY, f"expected (L, D); got {tuple(emb.shape)}.")
        if mask.dtype != torch.bool or tuple(mask.shape) != (emb.shape[0],):
            raise SampleError(
                SkipReason.SHAPE_MISMATCH, TEXT_MASK_KEY, f"expected bool ({emb.shape[0]},) matching text_emb; got {tuple(mask.shape)} {mask.dtype}."
            )
        if tuple(cond.shape) != (T, 20):
            raise SampleError(SkipReason.SHAPE_MISMATCH, CAMERA_CONDITIONS_KEY, f"expected ({T}, 20) for a latent with T={T}; got {tuple(cond.shape)}.")
        if tuple(plk.shape) != (48, T, h, w):
            raise SampleError(SkipReason.SHAPE_MISMATCH, CHUNK_PLUCKER_KEY, f"expected (48, {T}, {h}, {w}); got {tuple(plk.shape)}.")
        for n in ("camera_conditions", "chunk_plucker") + (("latent", "text_emb") if self.check_finite else ()):
            _check_finite(t[n], names[n])
        self._check_sizes(meta, T, h, w)
        poses = cond[:, :16].double().reshape(T, 4, 4).numpy()
        try:
            validate_c2w(poses, CAMERA_CONDITIONS_KEY)
        except ValueError as err:
            raise SampleError(SkipReason.NON_RIGID_POSE, CAMERA_CONDITIONS_KEY, str(err)) from None
        if (cond[:, 16:18] <= 0).any():
            raise SampleError(SkipReason.BAD_INTRINSICS, CAMERA_CONDITIONS_KEY, "latent-unit fx or fy <= 0.")
        c2w, intr = self._pixel_poses(raw, meta, dtypes)
        return LatentSample(
            key=key,
            latent=latent,
            text_emb=emb,
            text_mask=mask,
            camera_conditions=cond,
            chunk_plucker=plk,
            caption=_caption(raw) if CAPTION_KEY in raw else "",
            c2w=c2w,
            intrinsics=intr,
            meta={**meta, "__url__": raw.get("__url__")},
        )


# --------------------------------------------------------------------------------------------------
# Tar shards → raw samples
# --------------------------------------------------------------------------------------------------


class ShardCutError(Exception):
    """The shard ended before its end-of-archive marker (cut short at a member boundary)."""


class _EndAwareTarInfo(tarfile.TarInfo):
    """Notes on its archive whether the stream ended with tar's end-of-archive (all-zero) block.

    In stream mode ``tarfile`` stops silently both at that block and where the bytes simply run out between
    two members, so without this a shard cut at a member boundary would pass for a whole one.
    """

    @classmethod
    def fromtarfile(cls, tarfile_obj: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_obj)
        except tarfile.EOFHeaderError:
            tarfile_obj.end_of_archive = True
            raise


def _tar_samples(url: str, progress: dict) -> Iterator[dict]:
    """Raw samples (``__key__``, ``__url__``, extension → bytes) of one shard, in order.

    A sample is yielded only once it is known to be whole: when the next key starts, or at the archive's
    end marker. ``progress['key']`` names the sample being read, so a caller that catches an error knows
    which one was lost. Members are grouped by key exactly as webdataset does (key = name up to the first
    dot of the file name, extension lower-cased).
    """
    progress["key"] = None
    with wds.gopen(url, "rb") as stream:
        tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_EndAwareTarInfo)
        tar.end_of_archive = False
        current: dict | None = None
        for info in tar:
            if not info.isreg():
                continue
            key, ext = base_plus_ext(info.name)
            if key is None or key.startswith("__"):
                continue
            if current is not None and key != current["__key__"]:
                progress["key"] = None
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
                progress["key"] = key
            ext = ext.lower()
            if ext in current:
                raise ValueError(f"member {info.name!r} appears twice in sample {key!r}")
            current[ext] = tar.extractfile(info).read()
            tar.members = []  # stream mode: do not keep every header in memory
        if current is not None:
            if not tar.end_of_archive:
                raise ShardCutError(f"the shard ends inside sample {current['__key__']!r} (no end-of-archive marker)")
            progress["key"] = None
            yield current


def read_shards(urls: Iterable[str], on_error: Callable[[str, str | None, Exception], None]) -> Iterator[dict]:
    """Raw samples of a stream of shards; a damaged shard costs exactly one ``on_error(url, key, exn)`` call.

    A read error (missing file, truncation inside a member, a cut at a member boundary, a corrupt header)
    ends that shard: the samples completed before it have been yielded, the one being read (``key``, None
    when the error came between samples or before the first) is dropped whole — even when the unreadable
    member is an optional one — and the next shard starts from nothing, so no member of the broken shard
    can join a sample of the next.
    """
    for url in urls:
        progress: dict = {"key": None}
        try:
            yield from _tar_samples(url, progress)
        except Exception as exn:  # any failure to read the shard: count it once, go on with the next one
            on_error(url, progress["key"], exn)


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


class ShardDataset(IterableDataset):
    """Iterable over decoded samples of a set of shards (video or latent, per ``decoder``).

    Args:
        urls: shard list / pattern / directory / manifest (see :func:`expand_shard_urls`).
        decoder: callable ``(raw_sample, rng) -> Sample | LatentSample`` raising ``SampleError``.
        shuffle_shards: shuffle the shard order each epoch (finite mode).
        shuffle_buffer: size of the sample shuffle buffer (0 = no sample shuffle).
        resampled: draw shards with replacement forever (multi-node training).
        samples_per_epoch: samples per epoch *per rank* (split over the workers); required to get
            finite epochs in resampled mode, optional truncation otherwise.
        seed: base seed; shuffles and frame sampling use seed(base, rank, epoch, worker).
        rank, world_size: data-parallel position; None (both) = webdataset's splitters, reading
            ``RANK``/``WORLD_SIZE`` or torch.distributed (see the module docstring).
        strict: raise :class:`~data.errors.DataError` on the first defect instead of skipping.
        log_every_s: period of the skip summaries logged by each worker.
    """

    def __init__(
        self,
        urls: str | list[str],
        decoder: Callable[[dict, np.random.Generator], Sample | LatentSample],
        *,
        shuffle_shards: bool = True,
        shuffle_buffer: int = 0,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        strict: bool = False,
        log_every_s: float = 60.0,
    ):
        super().__init__()
        self.urls = expand_shard_urls(urls)
        self.decoder = decoder
        self.shuffle_shards = bool(shuffle_shards)
        self.shuffle_buffer = int(shuffle_buffer)
        self.resampled = bool(resampled)
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"`samples_per_epoch` must be >= 1 or None; got {samples_per_epoch!r}.")
        self.samples_per_epoch = samples_per_epoch
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.strict = bool(strict)
        self.log_every_s = float(log_every_s)
        self.epoch = 0
        # Counters of the most recent iteration in *this* process (each worker has its own).
        self.skip_stats = SkipStats(self.log_every_s)
        # (workers, reasons) counts in shared memory, written by the workers as they skip (see share_skip_counts).
        self._skip_table: torch.Tensor | None = None

    def share_skip_counts(self, num_workers: int) -> None:
        """Give the iterations that start next a shared table to publish their skip counts in, zeroed.

        Call it in the main process before the DataLoader starts (or resumes) its workers; the table is
        shared memory, so the workers' writes are seen here. Unlike the counts carried by samples, it
        also holds the skips a worker makes after its last delivered sample and those of a worker that
        delivers nothing. A persistent worker keeps the table it was started with, so the same tensor is
        zeroed in place when the worker count is unchanged.
        """
        n = max(1, int(num_workers))
        if self._skip_table is None or self._skip_table.shape[0] != n:
            self._skip_table = torch.zeros(n, len(SKIP_REASONS), dtype=torch.int64).share_memory_()
        else:
            self._skip_table.zero_()

    def skip_totals(self) -> dict[str, int]:
        """reason -> samples skipped by all workers of this process in the current (or last) pass.

        Exact once the pass has ended; during a pass, what the workers have published so far. Without a
        shared table (the dataset iterated directly), the counts of this process's last iteration.
        """
        if self._skip_table is None:
            return self.skip_stats.as_dict()
        sums = self._skip_table.sum(0).tolist()
        return {reason: int(n) for reason, n in zip(SKIP_REASONS, sums, strict=True) if n}

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used by the next ``__iter__`` (shard order, shuffles, frame choice)."""
        self.epoch = int(epoch)

    def _shard_stream(self, info: DistInfo, epoch: int) -> Iterator[dict]:
        if self.resampled:
            rng = random.Random(seed_for(self.seed, _TAG_RESAMPLE, info.rank, info.worker, epoch))
            while True:
                yield {"url": self.urls[rng.randrange(len(self.urls))]}
        urls = list(self.urls)
        if self.shuffle_shards:
            # Same permutation on every rank and worker (seed has no rank/worker), so the split is disjoint.
            random.Random(seed_for(self.seed, _TAG_SHARDS, epoch)).shuffle(urls)
        if self.rank is None and self.world_size is None:
            # webdataset's own splitters; they find the rank and worker exactly as get_dist_info did.
            mine = list(wds.split_by_worker(wds.split_by_node(urls)))
        else:
            # An explicit rank (the DataModule passes the trainer's; tests simulate ranks without a
            # process group) cannot be handed to wds.split_by_node, which only reads the env or
            # torch.distributed, and setting RANK in os.environ would leak into the rest of the
            # process. Same slicing as the webdataset splitters.
            mine = urls[info.rank :: info.world_size][info.worker :: info.num_workers]
        if not mine:
            log.warning(
                "rank %d worker %d gets no shards: %d shards for %d ranks x %d workers.",
                info.rank, info.worker, len(urls), info.world_size, info.num_workers,
            )
        for url in mine:
            yield {"url": url}

    def __iter__(self) -> Iterator[Sample | LatentSample]:
        info = get_dist_info(self.rank, self.world_size)
        epoch = self.epoch
        self.epoch += 1  # persistent workers advance on their own; see the module docstring
        stats = self.skip_stats = SkipStats(self.log_every_s, name=f"rank {info.rank} worker {info.worker}")
        table = self._skip_table
        row = table[info.worker] if table is not None and info.worker < table.shape[0] else None
        if row is not None:
            row.zero_()

        def skip(reason: str, url: str | None, key: str | None, field: str, detail: str) -> None:
            stats.record(reason, url, key, field, detail)
            if row is not None:
                row[_REASON_INDEX[reason]] = stats.counts[reason]

        def on_shard_error(url: str, key: str | None, exn: Exception) -> None:
            if self.strict:
                raise DataError(SkipReason.SHARD_READ_ERROR, url, key, "tar", repr(exn)) from exn
            skip(SkipReason.SHARD_READ_ERROR, url, key, "tar", repr(exn))

        stream = read_shards((s["url"] for s in self._shard_stream(info, epoch)), on_shard_error)
        if self.shuffle_buffer > 1:
            shuffle_rng = random.Random(seed_for(self.seed, _TAG_SHUFFLE, info.rank, epoch, info.worker))
            stream = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=shuffle_rng)(stream)
        frame_rng = np.random.default_rng(seed_for(self.seed, _TAG_FRAMES, info.rank, epoch, info.worker))

        limit = None
        if self.samples_per_epoch is not None:
            # Spread the rank's epoch over its workers; the first (n % workers) take one more.
            per, extra = divmod(self.samples_per_epoch, info.num_workers)
            limit = per + (1 if info.worker < extra else 0)
            if limit == 0:
                return
        produced = 0
        for raw in stream:
            key, url = raw.get("__key__"), raw.get("__url__")
            try:
                sample = self.decoder(raw, frame_rng)
            except SampleError as err:
                if self.strict:
                    raise DataError(err.reason, url, key, err.field, err.detail) from err
                skip(err.reason, url, key, err.field, err.detail)
                continue
            except Exception as err:  # an unforeseen defect (or a bug): never kill a long run, but shout
                if self.strict:
                    raise DataError(SkipReason.UNEXPECTED_ERROR, url, key, "?", repr(err)) from err
                if not stats.counts[SkipReason.UNEXPECTED_ERROR]:
                    log.exception("unexpected error decoding sample %r of %s; skipping it", key, url)
                skip(SkipReason.UNEXPECTED_ERROR, url, key, "?", repr(err))
                continue
            stats.record_ok()
            sample.skip_counts = stats.as_dict()
            sample.worker = info.worker
            yield sample
            produced += 1
            if limit is not None and produced >= limit:
                break
        stats.log_summary()


def make_video_dataset(
    urls: str | list[str],
    num_frames: int,
    height: int,
    width: int,
    target_fps: float | None = 16.0,
    frame_sampling: str = "random",
    video_format: str = "float",
    decode_threads: int = 1,
    spatial_stride: int = 32,
    **dataset_kwargs: Any,
) -> ShardDataset:
    """A :class:`ShardDataset` of video shards; ``dataset_kwargs`` go to ``ShardDataset``
    (shuffle_shards, shuffle_buffer, resampled, samples_per_epoch, seed, rank, world_size, strict).
    ``spatial_stride`` is the VAE's spatial compression (32): the camera maps are built on its latent grid."""
    decoder = VideoDecoder(num_frames, height, width, target_fps, frame_sampling, video_format, decode_threads,
                           spatial_stride=spatial_stride)
    return ShardDataset(urls, decoder, **dataset_kwargs)


def make_latent_dataset(urls: str | list[str], check_finite: bool = True, **dataset_kwargs: Any) -> ShardDataset:
    """A :class:`ShardDataset` of latent shards (see :func:`make_video_dataset` for the kwargs)."""
    return ShardDataset(urls, LatentDecoder(check_finite), **dataset_kwargs)


class EpochDataLoader(DataLoader):
    """DataLoader that tells its :class:`ShardDataset` the epoch before each pass, and collates to
    :class:`~data.schema.Batch` by default (``batch_size`` samples per batch)."""

    def __init__(self, dataset: ShardDataset, *args: Any, start_epoch: int = 0, **kwargs: Any):
        kwargs.setdefault("collate_fn", collate)
        super().__init__(dataset, *args, **kwargs)
        self._next_epoch = int(start_epoch)

    def __iter__(self):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self._next_epoch)
        if hasattr(self.dataset, "share_skip_counts"):
            self.dataset.share_skip_counts(self.num_workers)
        self._next_epoch += 1
        if self.num_workers > 0:
            # Collect garbage before the workers fork: a decord reader caught in a reference cycle
            # would otherwise be destroyed inside a child, where its thread does not exist (abort).
            gc.collect()
        return super().__iter__()


class SkipTracker:
    """Sum of skip counts over the DataLoader workers of this process, fed with every batch.

    Each batch carries the cumulative counts of the worker that made it; the tracker keeps the latest
    snapshot per worker and sums them. Counts are per rank: all-reduce :meth:`totals` for a global view.
    """

    def __init__(self) -> None:
        self._latest: dict[int, dict[str, int]] = {}

    def update(self, batch: Batch) -> None:
        """Record the counts carried by ``batch``."""
        self._latest[batch.worker] = dict(batch.skip_counts)

    def totals(self) -> dict[str, int]:
        """reason -> skipped samples, summed over workers."""
        out: dict[str, int] = {}
        for counts in self._latest.values():
            for k, v in counts.items():
                out[k] = out.get(k, 0) + int(v)
        return out

    def reset(self) -> None:
        """Forget all snapshots (e.g. at a new epoch, when workers restart their counters)."""
        self._latest.clear()
