"""Per-clip transforms: frame sampling, array validation, resize + centre crop, camera tensors.

Everything geometric is delegated to :mod:`sana_wm.camera` (the single owner of the camera
convention); this module only decides *which* frames and arrays go in and turns defects into
:class:`data.errors.SampleError` with a skip reason.

Order of operations for a video clip (the maths of each step: docs/design/camera.md §3–§5):

1. pick F = 8k+1 frame indices at the target fps (:func:`sample_frame_indices`);
2. aspect-preserving resize + centre crop of those frames to H×W (:func:`resize_center_crop`), the
   intrinsics following the same geometry (``crop_intrinsics``);
3. poses of the picked frames made relative to the first picked frame, translations × metric scale;
4. ``prepare_camera`` → camera_conditions (T, 20) and chunk_plucker (48, T, H/32, W/32).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sana_wm.camera import (
    CropGeometry,
    as_fxfycxcy,
    crop_intrinsics,
    prepare_camera,
    relative_to_first,
    scale_translation,
    validate_c2w,
)

from .errors import SampleError, SkipReason

__all__ = [
    "LATENT_DOWNSAMPLE",
    "LATENT_TEMPORAL_STRIDE",
    "FPS_TOLERANCE",
    "check_num_frames",
    "check_target_size",
    "sample_frame_indices",
    "resize_center_crop",
    "validate_c2w_array",
    "validate_intrinsics_array",
    "ClipCamera",
    "build_clip_camera",
    "check_meta_number",
    "check_metric_scale",
]

#: LTX-2 VAE spatial compression: latent h, w = H/32, W/32. A VAE with another layout (the CPU demo's 8x codec)
#: passes its own ``spatial_stride`` to the functions below.
LATENT_DOWNSAMPLE = 32
#: LTX-2 VAE temporal compression: F = 8(T - 1) + 1 pixel frames make T latent frames.
LATENT_TEMPORAL_STRIDE = 8
#: Relative fps shortfall tolerated before a clip counts as too slow (e.g. 15.8 fps read as 16 fps).
FPS_TOLERANCE = 0.02


def check_num_frames(num_frames: int, name: str = "num_frames") -> int:
    """Return ``num_frames`` if it is a positive 8k+1 integer, else raise ``ValueError``."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"`{name}` must be a positive integer of the form 8k+1; got {num_frames!r}.")
    if (num_frames - 1) % 8:
        lo = num_frames - (num_frames - 1) % 8
        raise ValueError(
            f"`{name}` must be of the form 8k+1 (the VAE compresses time 8x with a causal first frame); "
            f"got {num_frames}. Nearest valid values: {lo} or {lo + 8}."
        )
    return int(num_frames)


def check_target_size(height: int, width: int, spatial_stride: int = LATENT_DOWNSAMPLE) -> tuple[int, int]:
    """Return (height, width) if both are positive multiples of the VAE's ``spatial_stride`` (32), else raise
    ``ValueError``."""
    s = int(spatial_stride)
    for label, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < s or v % s:
            raise ValueError(
                f"target `{label}` must be a positive multiple of {s} (latent grid = pixels/{s}); got {v!r}."
            )
    return int(height), int(width)


def sample_frame_indices(
    num_source_frames: int,
    source_fps: float,
    num_frames: int,
    target_fps: float | None = None,
    mode: str = "random",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Pick ``num_frames`` frame indices spaced to play back at ``target_fps``.

    The stride between picked frames is ``source_fps / target_fps`` (1 when ``target_fps`` is None);
    index k is ``start + round(k · stride)``. ``start`` is 0 (``mode='start'``), centred
    (``'center'``) or uniform over the valid range (``'random'``, drawn from ``rng``).

    Args:
        num_source_frames: frames in the clip.
        source_fps: the clip's frame rate.
        num_frames: frames to pick (8k+1).
        target_fps: playback rate of the picked frames, or None to keep every frame.
        mode: 'random', 'start' or 'center'.
        rng: generator for ``mode='random'`` (seeded per rank, worker and epoch by the loader).

    Returns:
        ``(num_frames,)`` int64 sorted indices.

    Raises:
        SampleError: ``fps_too_low`` if the clip is slower than ``target_fps`` (frames would repeat),
            ``too_few_frames`` if the clip is too short.
    """
    if mode not in ("random", "start", "center"):
        raise ValueError(f"`mode` must be 'random', 'start' or 'center'; got {mode!r}.")
    stride = 1.0
    if target_fps is not None:
        if source_fps < target_fps * (1.0 - FPS_TOLERANCE):
            raise SampleError(
                SkipReason.FPS_TOO_LOW,
                "json:fps",
                f"clip is {source_fps:g} fps but target_fps is {target_fps:g}; frames would repeat.",
            )
        # Within the tolerance a 15.9 fps clip is read at stride 1 rather than repeating a frame.
        stride = max(1.0, source_fps / target_fps)
    offsets = np.round(np.arange(num_frames) * stride).astype(np.int64)
    span = int(offsets[-1]) + 1
    if span > num_source_frames:
        raise SampleError(
            SkipReason.TOO_FEW_FRAMES,
            "mp4",
            f"{num_frames} frames at {target_fps if target_fps is not None else source_fps:g} fps need "
            f"{span} source frames at {source_fps:g} fps; the clip has {num_source_frames}.",
        )
    slack = num_source_frames - span
    if mode == "start":
        start = 0
    elif mode == "center":
        start = slack // 2
    else:
        start = int((rng if rng is not None else np.random.default_rng()).integers(0, slack + 1))
    return offsets + start


def resize_center_crop(
    frames: np.ndarray | torch.Tensor,
    geom: CropGeometry,
    target_h: int,
    target_w: int,
    video_format: str = "float",
    chunk: int = 32,
) -> torch.Tensor:
    """Aspect-preserving resize (bilinear, antialiased) then centre crop, as described by ``geom``.

    Frames are processed ``chunk`` at a time so a 961-frame 720p clip never exists as one float
    tensor at source size. When the resize is the identity only the crop runs (no resampling), and
    for uint8 output the result is a zero-copy view of ``frames`` (not contiguous).

    Args:
        frames: ``(F, H_src, W_src, 3)`` uint8.
        geom: from ``resize_crop_geometry(H_src, W_src, target_h, target_w)``.
        target_h, target_w: output size.
        video_format: 'float' → ``(3, F, H, W)`` float32 in [-1, 1]; 'uint8' → ``(F, H, W, 3)`` uint8.
        chunk: frames per resize call.

    Returns:
        The cropped video in the requested layout.
    """
    if video_format not in ("float", "uint8"):
        raise ValueError(f"`video_format` must be 'float' or 'uint8'; got {video_format!r}.")
    x = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"`frames` must be uint8 of shape (F, H, W, 3); got {tuple(x.shape)} {x.dtype}.")
    num, src_h, src_w, _ = x.shape
    top, left = geom.top, geom.left
    identity = (geom.resized_h, geom.resized_w) == (src_h, src_w)
    if identity and video_format == "uint8":
        # Zero-copy: a strided view of the decoded frames (e.g. 720 → 704 rows for the real model).
        # Collation or the copy to pinned/shared memory makes it contiguous later, once.
        return x[:, top : top + target_h, left : left + target_w]
    if video_format == "uint8":
        out = torch.empty((num, target_h, target_w, 3), dtype=torch.uint8)
    else:
        out = torch.empty((3, num, target_h, target_w), dtype=torch.float32)
    for s in range(0, num, chunk):
        part = x[s : s + chunk]  # (f, H_src, W_src, 3) uint8
        if identity:  # float output without resampling: convert straight into the output
            dst = out[:, s : s + chunk]  # (3, f, H, W) view
            dst.copy_(part[:, top : top + target_h, left : left + target_w].permute(3, 0, 1, 2))
            dst.div_(127.5).sub_(1.0)
            continue
        img = part.permute(0, 3, 1, 2).float()  # (f, 3, H_src, W_src)
        img = F.interpolate(img, size=(geom.resized_h, geom.resized_w), mode="bilinear", antialias=True, align_corners=False)
        img = img[:, :, top : top + target_h, left : left + target_w].clamp_(0.0, 255.0)  # (f, 3, H, W)
        if video_format == "uint8":
            out[s : s + chunk] = img.round_().to(torch.uint8).permute(0, 2, 3, 1)
        else:
            out[:, s : s + chunk] = img.permute(1, 0, 2, 3).div_(127.5).sub_(1.0)
    return out


def validate_c2w_array(c2w: Any, num_frames: int | None, field: str = "c2w.npy") -> np.ndarray:
    """Check a stored pose array and return it as float64 ``(F, 4, 4)``.

    Raises:
        SampleError: ``bad_array`` (shape), ``frame_count_mismatch`` (F ≠ ``num_frames``),
            ``nonfinite_pose`` (NaN/inf) or ``non_rigid_pose`` (fails ``validate_c2w``).
    """
    arr = np.asarray(c2w)
    if arr.ndim != 3 or arr.shape[1:] != (4, 4) or arr.shape[0] < 1 or not np.issubdtype(arr.dtype, np.floating):
        raise SampleError(SkipReason.BAD_ARRAY, field, f"expected float (F, 4, 4) camera-to-world poses; got {arr.shape} {arr.dtype}.")
    if num_frames is not None and arr.shape[0] != num_frames:
        raise SampleError(
            SkipReason.FRAME_COUNT_MISMATCH, field, f"{arr.shape[0]} poses for a clip of {num_frames} frames; expected one pose per frame."
        )
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr).all(axis=(1, 2))
    if not finite.all():
        raise SampleError(
            SkipReason.NONFINITE_POSE, field, f"non-finite values in {int((~finite).sum())} poses, first at frame {int(np.flatnonzero(~finite)[0])}."
        )
    try:
        validate_c2w(arr, field)
    except ValueError as err:
        raise SampleError(SkipReason.NON_RIGID_POSE, field, str(err)) from None
    return arr


def validate_intrinsics_array(intrinsics: Any, num_frames: int, field: str = "intrinsics.npy") -> np.ndarray:
    """Check stored intrinsics (``(4,)``, ``(3,3)``, ``(F,4)``, ``(F,3,3)``) → float64 ``(F, 4)``.

    A per-frame array must have exactly ``num_frames`` rows (or 1, broadcast); unlike inference, no
    truncation is allowed for training data, since a length mismatch means the annotation is off.

    Raises:
        SampleError: ``bad_array`` (shape/dtype), ``frame_count_mismatch`` or ``bad_intrinsics``
            (fx, fy ≤ 0, non-finite, not a pinhole K).
    """
    arr = np.asarray(intrinsics)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise SampleError(SkipReason.BAD_ARRAY, field, f"expected a numeric array; got dtype {arr.dtype}.")
    per_frame = (arr.ndim == 2 and arr.shape[1] == 4) or (arr.ndim == 3 and arr.shape[1:] == (3, 3))
    if not per_frame and arr.shape not in ((4,), (3, 3)):
        raise SampleError(SkipReason.BAD_ARRAY, field, f"expected shape (4,), (3, 3), (F, 4) or (F, 3, 3); got {arr.shape}.")
    if per_frame and arr.shape[0] not in (1, num_frames):
        raise SampleError(
            SkipReason.FRAME_COUNT_MISMATCH, field, f"{arr.shape[0]} per-frame intrinsics for a clip of {num_frames} frames."
        )
    try:
        vec = as_fxfycxcy(arr, num_frames, field)
    except (ValueError, TypeError) as err:
        raise SampleError(SkipReason.BAD_INTRINSICS, field, str(err)) from None
    if (vec[:, 2:] <= 0).any():
        bad = int(np.flatnonzero((vec[:, 2:] <= 0).any(axis=1))[0])
        raise SampleError(
            SkipReason.BAD_INTRINSICS, field, f"principal point ({vec[bad, 2]:g}, {vec[bad, 3]:g}) at frame {bad} must be > 0 in source pixels."
        )
    return vec


class ClipCamera:
    """Camera tensors of one sampled clip (all float32 torch tensors).

    Attributes:
        c2w: ``(F, 4, 4)`` relative to frame 0, translations × metric scale.
        intrinsics: ``(F, 4)`` [fx, fy, cx, cy] in target pixels.
        camera_conditions: ``(T, 20)``.
        chunk_plucker: ``(48, T, H/32, W/32)``.
    """

    __slots__ = ("c2w", "intrinsics", "camera_conditions", "chunk_plucker")

    def __init__(self, c2w, intrinsics, camera_conditions, chunk_plucker):
        self.c2w = c2w
        self.intrinsics = intrinsics
        self.camera_conditions = camera_conditions
        self.chunk_plucker = chunk_plucker


def build_clip_camera(
    c2w_src: np.ndarray,
    intrinsics_src: np.ndarray,
    indices: np.ndarray,
    geom: CropGeometry | None,
    metric_scale: float,
    target_hw: tuple[int, int],
    temporal_stride: int = 8,
    spatial_stride: int = LATENT_DOWNSAMPLE,
) -> ClipCamera:
    """Camera tensors for the frames ``indices`` of a clip, after resize + crop.

    Args:
        c2w_src: ``(F_src, 4, 4)`` validated source poses.
        intrinsics_src: ``(F_src, 4)`` validated source-pixel intrinsics.
        indices: ``(F,)`` sampled frame indices.
        geom: resize/crop geometry from source to target pixels (unused without camera).
        metric_scale: multiplies translations (> 0).
        target_hw: (H, W) of the cropped frames, multiples of ``spatial_stride``.
        temporal_stride: VAE temporal compression (8).
        spatial_stride: VAE spatial compression (32): the Plücker maps live on the (H/s, W/s) latent grid.

    Returns:
        :class:`ClipCamera`.
    """
    num = len(indices)
    h, w = target_hw
    c2w_rel = scale_translation(relative_to_first(c2w_src[indices]), metric_scale)
    intr = crop_intrinsics(intrinsics_src[indices], geom)
    s = int(spatial_stride)
    cond, plucker = prepare_camera(c2w_rel, intr, (h, w), (h // s, w // s), num, temporal_stride)
    return ClipCamera(
        c2w=torch.from_numpy(np.ascontiguousarray(c2w_rel, dtype=np.float32)),
        intrinsics=torch.from_numpy(np.ascontiguousarray(intr, dtype=np.float32)),
        camera_conditions=cond,
        chunk_plucker=plucker,
    )


def check_meta_number(value: Any, field: str, integer: bool = False) -> float | int:
    """The one rule for numeric metadata (fps, sizes, frame counts, metric_scale), wherever it is read or written.

    The value must be a JSON number — not a string such as ``"2.0"``, not a boolean (``true`` is 1 to Python) —
    finite and > 0, and for ``integer`` fields whole. Returns it as float (int for ``integer``).

    Raises:
        SampleError: ``bad_meta`` naming ``field`` and the value.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        kind = "positive whole" if integer else "finite positive"
        raise SampleError(SkipReason.BAD_META, field, f"expected a {kind} JSON number; got {value!r}.")
    return int(value) if integer else float(value)


def check_metric_scale(value: Any, field: str = "json:metric_scale") -> float:
    """The metric scale (see :func:`check_meta_number`)."""
    return check_meta_number(value, field)
