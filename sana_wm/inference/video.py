"""Pixels in and out: first-frame loading with the release's resize + centre crop, and H.264 mp4 writing (PyAV).

Image preparation (docs/design/pipeline.md §2): scale = max(H/h, W/w), resized size max(target, round(src·scale))
per axis (Python rounding), LANCZOS, then a centre crop with offsets ⌊(resized − target)/2⌋. The geometry comes from
:func:`sana_wm.camera.resize_crop_geometry`, the single owner of that bookkeeping, so intrinsics follow the pixels
exactly (:func:`sana_wm.camera.crop_intrinsics`).

Array conventions: images/videos are uint8 ``(H, W, 3)`` / ``(F, H, W, 3)`` RGB; model tensors are float in [−1, 1],
``(1, 3, 1, H, W)`` for the first image and ``(B, 3, F, H, W)`` for decoded video.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from sana_wm.camera import CropGeometry, resize_crop_geometry

__all__ = [
    "load_image",
    "resize_center_crop",
    "image_to_tensor",
    "video_to_uint8",
    "write_mp4",
    "read_mp4",
]


def load_image(path: str | os.PathLike):
    """Open an image file as an RGB ``PIL.Image`` (fully decoded, so a truncated file fails here).

    Raises:
        ValueError: naming the file when it is missing or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--image {str(p)!r}: file not found")
    try:
        with Image.open(p) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"--image {str(p)!r}: not a readable image ({err})") from err


def resize_center_crop(image, height: int, width: int) -> tuple[np.ndarray, CropGeometry]:
    """Aspect-preserving LANCZOS resize then centre crop to ``height × width``.

    Args:
        image: ``PIL.Image`` (any mode; converted to RGB) or uint8 array ``(h, w, 3)``.
        height, width: target size in pixels (704 × 1280 for the released model).

    Returns:
        (uint8 array ``(height, width, 3)``, the :class:`CropGeometry` used — feed it to ``crop_intrinsics``).
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image array must be uint8 (h, w, 3) RGB; got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    image = image.convert("RGB")
    src_w, src_h = image.size
    geom = resize_crop_geometry(src_h, src_w, height, width)
    if (geom.resized_w, geom.resized_h) != (src_w, src_h):
        image = image.resize((geom.resized_w, geom.resized_h), Image.Resampling.LANCZOS)
    image = image.crop((geom.left, geom.top, geom.left + width, geom.top + height))
    return np.asarray(image, dtype=np.uint8).copy(), geom


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` → float32 ``(1, 3, 1, H, W)`` in [−1, 1] (the VAE's input range, one frame)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3); got {image.shape}")
    t = torch.from_numpy(np.ascontiguousarray(image)).float().div(127.5).sub(1.0)
    return t.permute(2, 0, 1)[None, :, None]


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """Decoded video ``(1, 3, F, H, W)`` or ``(3, F, H, W)`` in [−1, 1] → uint8 ``(F, H, W, 3)`` (rounded, clipped)."""
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise ValueError(f"video_to_uint8 takes one video; got batch {video.shape[0]}")
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be (3, F, H, W) or (1, 3, F, H, W); got {tuple(video.shape)}")
    v = ((video.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return v.permute(1, 2, 3, 0).cpu().numpy()


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18) -> Path:
    """Write uint8 RGB frames ``(F, H, W, 3)`` as H.264 (libx264, yuv420p) at ``fps``.

    H and W must be even (yuv420p subsamples chroma 2×2); every model resolution is a multiple of 32. The file is
    written to a temporary name and renamed, so an interrupted run never leaves a truncated video.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 (F, H, W, 3) with F >= 1; got {frames.dtype} {frames.shape}")
    F, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"H.264/yuv420p needs even frame sizes; got {H}x{W}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0; got {fps}")
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def read_mp4(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode an mp4 to uint8 RGB ``(F, H, W, 3)`` and its average frame rate (for tests and tools)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames), fps
