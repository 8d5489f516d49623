"""Shard format of the SANA-WM data pipeline: tar member names, metadata fields, Sample/Batch types.

Two kinds of WebDataset shard exist (full description in ``data/README.md``):

* **video shards** (schema ``sana-wm-shard/1``) — one sample per clip::

      <key>.mp4              H.264 clip (or <key>.frames.npy: uint8 (F, H, W, 3) image sequence)
      <key>.c2w.npy          (F, 4, 4) OpenCV camera-to-world poses, one per video frame, up to scale
      <key>.intrinsics.npy   (3, 3) / (4,) shared, or (F, 3, 3) / (F, 4) per frame, in source pixels
      <key>.txt              caption (UTF-8)
      <key>.json             metadata (see VIDEO_META_REQUIRED / VIDEO_META_OPTIONAL)

  A clip without camera annotation sets ``"camera": false`` in its json and omits both arrays; the
  loader skips it as ``no_camera`` (counted and reported) rather than inventing identity poses and a
  default K, which would teach the camera control that moving footage has a static camera.

* **latent shards** (schema ``sana-wm-latent-shard/1``) — pre-encoded, so pre-training neither
  decodes video nor runs the VAE or the text encoder::

      <key>.latent.npy             (C, T, h, w) LTX-2 VAE latent
      <key>.text_emb.npy           (L, D) text-encoder hidden states
      <key>.text_mask.npy          (L,) bool, True = real token
      <key>.camera_conditions.npy  (T, 20) relative c2w (16, row-major) + latent-unit fx, fy, cx, cy
      <key>.chunk_plucker.npy      (48, T, h, w) Plücker maps of the 8 frames ending at each latent frame
      <key>.c2w.npy                optional (F, 4, 4) relative metric poses of the pixel frames
      <key>.intrinsics.npy         optional (F, 4) [fx, fy, cx, cy] in target pixels
      <key>.txt                    caption
      <key>.json                   metadata, incl. ``dtypes``: the stored type of every tensor

numpy has no bfloat16, so a bfloat16 tensor is stored as its raw uint16 bits and ``json["dtypes"]``
names it; :func:`tensor_to_npy_bytes` / :func:`npy_bytes_to_tensor` do the round trip losslessly.

Sample keys must match ``[A-Za-z0-9_-]+``: webdataset splits a member name at its first dot into
key and extension, so a dot in a key would silently corrupt the grouping.
"""

from __future__ import annotations

import functools
import io
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "SCHEMA_VERSION",
    "LATENT_SCHEMA_VERSION",
    "VIDEO_KEY",
    "FRAMES_KEY",
    "C2W_KEY",
    "INTRINSICS_KEY",
    "CAPTION_KEY",
    "META_KEY",
    "LATENT_KEY",
    "TEXT_EMB_KEY",
    "TEXT_MASK_KEY",
    "CAMERA_CONDITIONS_KEY",
    "CHUNK_PLUCKER_KEY",
    "VIDEO_META_REQUIRED",
    "VIDEO_META_OPTIONAL",
    "LATENT_META_REQUIRED",
    "SAMPLE_KEY_PATTERN",
    "check_sample_key",
    "tensor_to_npy_bytes",
    "npy_bytes_to_tensor",
    "Sample",
    "LatentSample",
    "Batch",
    "collate",
]

SCHEMA_VERSION = "sana-wm-shard/1"
LATENT_SCHEMA_VERSION = "sana-wm-latent-shard/1"

# Tar member extensions (the part of the member name after the sample key and its dot).
VIDEO_KEY = "mp4"
FRAMES_KEY = "frames.npy"
C2W_KEY = "c2w.npy"
INTRINSICS_KEY = "intrinsics.npy"
CAPTION_KEY = "txt"
META_KEY = "json"
LATENT_KEY = "latent.npy"
TEXT_EMB_KEY = "text_emb.npy"
TEXT_MASK_KEY = "text_mask.npy"
CAMERA_CONDITIONS_KEY = "camera_conditions.npy"
CHUNK_PLUCKER_KEY = "chunk_plucker.npy"

#: json fields every video sample must carry, with their meaning.
VIDEO_META_REQUIRED: dict[str, str] = {
    "schema": f"format version, exactly {SCHEMA_VERSION!r}",
    "fps": "frame rate of the stored clip (frames per second, > 0); frame sampling uses it",
    "width": "width of the stored frames in pixels (the intrinsics refer to it)",
    "height": "height of the stored frames in pixels",
    "num_frames": "number of frames stored (= len(c2w))",
    "metric_scale": "factor (> 0) that multiplies c2w translations to give metres",
}
#: json fields a sample may carry (written by the annotation pipeline / shard writer).
VIDEO_META_OPTIONAL: dict[str, str] = {
    "camera": "false for a clip without camera annotation (the loader skips it as no_camera); default true",
    "pose_scale": "'metric' (poses in metres, metric_scale 1) or 'relative' (up to scale, metric_scale converts)",
    "source": "dataset or generator name, e.g. 'synthetic' or 'sekai'",
    "licence": "licence of the clip (SPDX id or free text)",
    "annotation": "{'backend': str, 'version': str} of the pose annotator",
    "quality": "dict of quality scores (e.g. dover, vmaf_motion, flow) used for filtering",
    "caption_source": "captioner that wrote the txt",
    "scene": "free-form generator parameters (synthetic clips)",
    "trajectory": "how the camera path was made (synthetic clips), e.g. {'kind': 'dsl', 'action': 'w-16'}",
}
LATENT_META_REQUIRED: dict[str, str] = {
    "schema": f"format version, exactly {LATENT_SCHEMA_VERSION!r}",
    "pixel_height": "height of the frames the latent was encoded from",
    "pixel_width": "width of the frames the latent was encoded from",
    "num_frames": "number of pixel frames encoded (8k+1)",
    "dtypes": "dict tensor-name -> stored dtype, one entry per tensor member: 'float32', 'float16' or 'bfloat16' "
    "('bool' for text_mask); the loader refuses a member whose array is of another type",
}

SAMPLE_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


def check_sample_key(key: str) -> str:
    """Return ``key`` if it is a valid shard sample key, else raise ``ValueError`` naming it."""
    if not isinstance(key, str) or not SAMPLE_KEY_PATTERN.match(key):
        raise ValueError(
            f"sample key {key!r} is invalid: keys must match [A-Za-z0-9_-]+ (a '.' would be read by "
            f"webdataset as the start of the file extension)."
        )
    return key


# --------------------------------------------------------------------------------------------------
# Tensor <-> .npy bytes (with bfloat16 support)
# --------------------------------------------------------------------------------------------------

_STORABLE = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.bool: "bool"}


def tensor_to_npy_bytes(x: torch.Tensor | np.ndarray, name: str) -> tuple[bytes, str]:
    """Serialise a tensor/array to ``.npy`` bytes.

    Args:
        x: tensor or array of dtype float32, float16, bfloat16 or bool.
        name: tensor name, quoted in errors.

    Returns:
        (npy bytes, dtype name). bfloat16 is stored as its uint16 bit pattern (numpy has no bf16).
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor or numpy array; got {type(x).__name__}.")
    if x.dtype not in _STORABLE:
        raise ValueError(f"`{name}` has dtype {x.dtype}; storable dtypes are {sorted(_STORABLE.values())}.")
    x = x.detach().to("cpu").contiguous()
    dtype_name = _STORABLE[x.dtype]
    arr = x.view(torch.uint16).numpy() if x.dtype == torch.bfloat16 else x.numpy()
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue(), dtype_name


def npy_bytes_to_tensor(data: bytes, dtype_name: str | None = None, *, zero_copy: bool = False) -> torch.Tensor:
    """Inverse of :func:`tensor_to_npy_bytes`; ``dtype_name='bfloat16'`` re-views uint16 bits as bf16.

    With ``zero_copy`` the tensor is a view of ``data`` itself (which it keeps alive) instead of a
    copy made by ``np.load``: the loader reads ~50 MB of latents per sample, and that copy cost as
    much as all of its validation. ``data`` is immutable ``bytes``, so numpy marks the view read-only;
    torch has no read-only tensors and would let an in-place op write into it. That is harmless here
    because the loader holds the only reference to the tar member's bytes, but do not use
    ``zero_copy`` on bytes that something else still reads. Fortran-order or non-native-endian
    arrays (never written by :func:`tensor_to_npy_bytes`) are still copied.
    """
    arr = _npy_view(data) if zero_copy else np.load(io.BytesIO(data), allow_pickle=False)
    if not arr.flags.writeable:
        with warnings.catch_warnings():  # see the docstring: the view is writable only in torch's eyes
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(arr)
    else:
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if dtype_name == "bfloat16":
        if t.dtype != torch.uint16:
            raise ValueError(f"a bfloat16 tensor must be stored as uint16 bits; found {t.dtype}.")
        t = t.view(torch.bfloat16)
    return t


def _npy_view(data: bytes) -> np.ndarray:
    """The array in ``.npy`` bytes as a C-contiguous, native-endian, read-only view of ``data`` when
    it is stored that way (else a copy); refuses object arrays like ``np.load(allow_pickle=False)``."""
    if data[:6] != b"\x93NUMPY" or len(data) < 12:
        raise ValueError(f"not a .npy file: it starts with {data[:8]!r}, expected b'\\x93NUMPY' and a version.")
    major = data[6]
    if major == 1:
        start, header_len = 10, int.from_bytes(data[8:10], "little")
    elif major == 2:
        start, header_len = 12, int.from_bytes(data[8:12], "little")
    else:  # 3.0 (utf-8 field names) never holds our tensors: let np.load deal with it
        return np.load(io.BytesIO(data), allow_pickle=False)
    shape, fortran_order, dtype = _npy_header(data[: start + header_len])
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype)
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=start + header_len)  # raises if data is truncated
    arr = arr.reshape(shape[::-1]).T if fortran_order else arr.reshape(shape)
    if not arr.flags.c_contiguous or not dtype.isnative:
        arr = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("="))
    return arr


@functools.lru_cache(maxsize=256)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of a .npy magic + header. Cached because numpy parses the header
    with ``ast.literal_eval`` (~40 µs), a third of the decode time of a small latent sample, while a
    shard repeats a handful of distinct headers."""
    f = io.BytesIO(prefix)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(f)
    if dtype.hasobject:
        raise ValueError(f"object arrays cannot be loaded without pickle; the header says dtype {dtype}.")
    return tuple(shape), bool(fortran_order), dtype


# --------------------------------------------------------------------------------------------------
# Samples and batches
# --------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One decoded video clip, ready for training or caching.

    Shapes (F pixel frames = 8k+1, H×W target size, T = (F-1)/8+1 latent frames, h=H/32, w=W/32):

    Attributes:
        key: sample key from the shard.
        video: ``(3, F, H, W)`` float32 in [-1, 1] (``video_format='float'``) **or** ``(F, H, W, 3)``
            uint8 (``video_format='uint8'``); ``video_format`` says which.
        c2w: ``(F, 4, 4)`` float32 OpenCV camera-to-world, relative to frame 0 and in metres
            (translations multiplied by the clip's metric scale).
        intrinsics: ``(F, 4)`` float32 [fx, fy, cx, cy] in pixels of the H×W target frames.
        camera_conditions: ``(T, 20)`` float32 (docs/design/camera.md §4).
        chunk_plucker: ``(48, T, h, w)`` float32 (docs/design/camera.md §5).
        caption: caption text.
        fps: frame rate of the sampled frames.
        frame_indices: ``(F,)`` int64 indices of the sampled frames in the source clip.
        meta: the shard's json metadata plus ``__url__``.
        video_format: 'float' or 'uint8'.
        skip_counts: cumulative skips of the worker that produced this sample (reason -> count).
        worker: DataLoader worker id (0 in the main process) — lets a trainer aggregate skip_counts.
    """

    key: str
    video: torch.Tensor
    c2w: torch.Tensor
    intrinsics: torch.Tensor
    camera_conditions: torch.Tensor
    chunk_plucker: torch.Tensor
    caption: str
    fps: float
    frame_indices: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    video_format: str = "float"
    skip_counts: dict[str, int] = field(default_factory=dict)
    worker: int = 0


@dataclass
class LatentSample:
    """One sample of a latent shard.

    Attributes:
        key: sample key.
        latent: ``(C, T, h, w)`` VAE latent (stored dtype: float32, float16 or bfloat16).
        text_emb: ``(L, D)`` text-encoder hidden states.
        text_mask: ``(L,)`` bool, True = real token.
        camera_conditions: ``(T, 20)``.
        chunk_plucker: ``(48, T, h, w)``.
        caption: caption text.
        c2w: optional ``(F, 4, 4)`` relative metric poses of the pixel frames.
        intrinsics: optional ``(F, 4)`` target-pixel intrinsics.
        meta: json metadata plus ``__url__``.
        skip_counts, worker: as in :class:`Sample`.
    """

    key: str
    latent: torch.Tensor
    text_emb: torch.Tensor
    text_mask: torch.Tensor
    camera_conditions: torch.Tensor
    chunk_plucker: torch.Tensor
    caption: str
    c2w: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    skip_counts: dict[str, int] = field(default_factory=dict)
    worker: int = 0


@dataclass
class Batch:
    """A collated batch of :class:`Sample` or :class:`LatentSample` (B = batch size).

    Tensor fields hold a leading batch dimension; fields the sample kind lacks are ``None``.

    Attributes:
        keys, captions, meta: per-sample lists of length B.
        video: ``(B, 3, F, H, W)`` float or ``(B, F, H, W, 3)`` uint8 (video shards).
        latent: ``(B, C, T, h, w)``; text_emb ``(B, L, D)``; text_mask ``(B, L)`` (latent shards).
        c2w: ``(B, F, 4, 4)``; intrinsics ``(B, F, 4)`` target pixels.
        camera_conditions: ``(B, T, 20)``; chunk_plucker ``(B, 48, T, h, w)``.
        fps: ``(B,)`` float32 (video shards).
        skip_counts: cumulative skip counts of the producing worker (see :class:`data.webdataset.SkipTracker`).
        worker: id of the producing DataLoader worker.
    """

    keys: list[str]
    captions: list[str]
    meta: list[dict[str, Any]]
    camera_conditions: torch.Tensor
    chunk_plucker: torch.Tensor
    video: torch.Tensor | None = None
    video_format: str | None = None
    latent: torch.Tensor | None = None
    text_emb: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    c2w: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    fps: torch.Tensor | None = None
    skip_counts: dict[str, int] = field(default_factory=dict)
    worker: int = 0

    _TENSORS = ("camera_conditions", "chunk_plucker", "video", "latent", "text_emb", "text_mask", "c2w", "intrinsics", "fps")

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move every tensor field to ``device`` (Lightning calls this through ``move_data_to_device``)."""
        out = Batch(**{f: getattr(self, f) for f in self.__dataclass_fields__})
        for name in self._TENSORS:
            t = getattr(out, name)
            if t is not None:
                setattr(out, name, t.to(device, non_blocking=non_blocking))
        return out


def _stack(samples: list[Any], name: str) -> torch.Tensor | None:
    values = [getattr(s, name) for s in samples]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise ValueError(f"cannot collate `{name}`: present in some samples of the batch and missing in others.")
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) != 1:
        keys = [s.key for s in samples]
        raise ValueError(
            f"cannot collate `{name}`: shapes differ across the batch {sorted(shapes)} (keys {keys}); "
            f"use one num_frames/size per run or batch_size=1."
        )
    return torch.stack(values)


def collate(samples: list[Sample] | list[LatentSample]) -> Batch:
    """Stack a list of samples of one kind into a :class:`Batch` (the DataLoader ``collate_fn``)."""
    if len(samples) == 0:
        raise ValueError("collate() got an empty list of samples.")
    kinds = {type(s) for s in samples}
    if len(kinds) != 1 or not kinds <= {Sample, LatentSample}:
        raise TypeError(f"collate() needs samples of one kind (Sample or LatentSample); got {sorted(k.__name__ for k in kinds)}.")
    last = samples[-1]
    # The main tensor is stacked first so a shape error names it rather than a derived camera tensor.
    if isinstance(last, Sample):
        formats = {s.video_format for s in samples}
        if len(formats) != 1:
            raise ValueError(f"cannot collate videos of different formats {sorted(formats)}.")
        main = {"video": _stack(samples, "video"), "video_format": last.video_format}
        main["fps"] = torch.tensor([s.fps for s in samples], dtype=torch.float32)
    else:
        main = {"latent": _stack(samples, "latent"), "text_emb": _stack(samples, "text_emb"), "text_mask": _stack(samples, "text_mask")}
    batch = Batch(
        keys=[s.key for s in samples],
        captions=[s.caption for s in samples],
        meta=[s.meta for s in samples],
        camera_conditions=_stack(samples, "camera_conditions"),
        chunk_plucker=_stack(samples, "chunk_plucker"),
        c2w=_stack(samples, "c2w"),
        intrinsics=_stack(samples, "intrinsics"),
        # Samples of a batch come from one worker, so the last one carries that worker's latest counts.
        skip_counts=dict(last.skip_counts),
        worker=last.worker,
        **main,
    )
    return batch
