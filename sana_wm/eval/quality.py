"""Video-quality metrics: PSNR, SSIM, LPIPS, revisit consistency, per-window degradation, FVD.

Frames are ``(F, H, W, 3)`` uint8 RGB (what :class:`sana_wm.inference.pipeline.GenerationResult` holds).

- **PSNR** on uint8 values: ``10·log10(255² / MSE)`` per frame, capped at 100 dB (identical frames give 100).
- **SSIM**: 11 × 11 uniform window per channel, K1 = 0.01, K2 = 0.03, L = 255, statistics over the window
  positions that fit inside the image (no padding), mean over positions and channels. torchmetrics'
  ``structural_similarity_index_measure(gaussian_kernel=False, kernel_size=11)`` is *not* this: it
  reflect-pads before filtering and differs by ~4e-4 on noisy 40 × 50 frames, so the plain definition is
  computed here. ``sample_covariance=True`` gives scikit-image's N/(N−1) variant.
- **LPIPS** v0.1 (AlexNet or VGG16 trunk, inputs in [−1, 1]), implemented in :mod:`sana_wm.eval.lpips` (the
  ``lpips`` package needs torchvision, which cannot be installed beside the CPU torch build): torchvision's trunk
  weights and the lpips package's linear heads from local files; a missing file makes :func:`load_lpips` return
  the reason, and callers report the metric as skipped with it.
- **Revisit**: pairs of frames whose cameras return to an earlier pose (rotation and centre within
  thresholds, at least ``min_gap`` frames apart); at most 5 pairs per video; PSNR / SSIM / LPIPS per pair.
- **Temporal degradation**: the with-ground-truth metrics per window of ``window_s`` seconds.
- **FVD**: Fréchet distance between Gaussian fits of per-clip features from a local TorchScript I3D
  (StyleGAN-V's ``i3d_torchscript.pt`` calling convention: (B, 3, T, 224, 224) in [−1, 1] →
  400-d logits); absent → skipped with the reason.
- **FID**: the same Fréchet distance on per-frame features of a local TorchScript Inception-v3 (the
  ``inception-2015-12-05`` network in StyleGAN2-ADA's calling convention: uint8 (B, 3, H, W) → 2048-d pool
  features with ``return_features=True``; it resizes to 299 × 299 inside); absent → skipped with the reason.
  torchmetrics' ``FrechetInceptionDistance`` (which takes a local ``feature_extractor_weights_path`` in the
  pinned 1.9) is not used: its Inception comes from torch-fidelity, which requires torchvision, and no
  torchvision build can be installed beside the CPU torch of this environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sana_wm.camera import rotation_angle

__all__ = [
    "PSNR_CAP_DB",
    "Skipped",
    "fid",
    "frechet_distance",
    "fvd",
    "gt_metrics",
    "load_i3d",
    "load_inception",
    "load_lpips",
    "psnr",
    "revisit_metrics",
    "revisit_pairs",
    "ssim",
    "temporal_windows",
]

PSNR_CAP_DB = 100.0


@dataclass(frozen=True)
class Skipped:
    """A metric that could not be computed, and why (written to the report instead of a number)."""

    metric: str
    reason: str


def _frames(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"`{name}` must be (F, H, W, 3) uint8 RGB frames; got {tuple(t.shape)} {t.dtype}.")
    return t


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _frames(a, "a"), _frames(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"frame stacks must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}.")
    return a, b


def psnr(a, b) -> np.ndarray:
    """Per-frame PSNR in dB of two ``(F, H, W, 3)`` uint8 stacks, capped at :data:`PSNR_CAP_DB`."""
    a, b = _pair(a, b)
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(255.0**2 / mse.numpy())
    return np.minimum(out, PSNR_CAP_DB)


def ssim(a, b, *, window: int = 11, k1: float = 0.01, k2: float = 0.03, sample_covariance: bool = False) -> np.ndarray:
    """Per-frame SSIM with a ``window`` × ``window`` uniform window per channel (module docstring)."""
    a, b = _pair(a, b)
    if min(a.shape[1:3]) < window:
        raise ValueError(f"SSIM needs frames of at least {window} × {window} pixels; got {tuple(a.shape[1:3])}.")
    x = a.permute(0, 3, 1, 2).double()
    y = b.permute(0, 3, 1, 2).double()
    filt = lambda z: F.avg_pool2d(z, window, stride=1)  # the uniform window's mean at every position that fits
    mx, my = filt(x), filt(y)
    corr = window**2 / (window**2 - 1) if sample_covariance else 1.0
    sxx = (filt(x * x) - mx * mx) * corr
    syy = (filt(y * y) - my * my) * corr
    sxy = (filt(x * y) - mx * my) * corr
    c1, c2 = (k1 * 255.0) ** 2, (k2 * 255.0) ** 2
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.mean(dim=(1, 2, 3)).numpy()


def load_lpips(backbone_weights: str | os.PathLike | None, linear_weights: str | os.PathLike | None,
               net: str = "alex") -> Callable | Skipped:
    """LPIPS (:mod:`sana_wm.eval.lpips`) from two local files, or why not.

    Args:
        backbone_weights: torchvision's ``alexnet`` / ``vgg16`` ImageNet state dict.
        linear_weights: the lpips package's ``alex.pth`` / ``vgg.pth`` (v0.1 linear heads).
        net: ``"alex"`` or ``"vgg"``.

    Returns:
        ``fn(a, b) -> (F,) numpy`` on uint8 stacks (``fn.metric_name``: ``lpips_<net>``), or :class:`Skipped`
        naming the missing file.

    Raises:
        ValueError: an unknown ``net``, or a file of the wrong layout (a configuration error, not a missing piece).
    """
    from sana_wm.eval.lpips import load_lpips_model, lpips_fn

    if net not in ("alex", "vgg"):
        raise ValueError(f"metrics.lpips.net must be 'alex' or 'vgg'; got {net!r}")
    trunk = "AlexNet" if net == "alex" else "VGG16"
    for path, what, key in ((backbone_weights, f"torchvision {trunk} weights", "backbone_weights"),
                            (linear_weights, f"LPIPS linear-head weights ({net}.pth)", "linear_weights")):
        if path is None:
            return Skipped(f"lpips_{net}", f"no local {what} configured (metrics.lpips.{key})")
        if not Path(path).is_file():
            return Skipped(f"lpips_{net}", f"{what} file {path} does not exist (metrics.lpips.{key})")
    return lpips_fn(load_lpips_model(net, backbone_weights, linear_weights))


def gt_metrics(pred, gt, lpips_fn: Callable | Skipped | None = None) -> dict[str, np.ndarray]:
    """Per-frame PSNR / SSIM (/ LPIPS) of a generated video against its ground truth."""
    out = {"psnr_db": psnr(pred, gt), "ssim": ssim(pred, gt)}
    if callable(lpips_fn):
        out[lpips_fn.metric_name] = lpips_fn(pred, gt)
    return out


def temporal_windows(per_frame: dict[str, np.ndarray], fps: float, window_s: float = 10.0) -> dict[str, float]:
    """Means of per-frame metrics over consecutive windows of ``window_s`` seconds.

    Returns:
        ``{"<metric>_mean[t=<a>-<b>s]": value}`` for each metric and window (the last window may be shorter).
    """
    if fps <= 0 or window_s <= 0:
        raise ValueError(f"fps and window_s must be positive; got fps={fps}, window_s={window_s}.")
    out: dict[str, float] = {}
    per = max(1, int(round(fps * window_s)))
    for name, values in per_frame.items():
        for w, start in enumerate(range(0, len(values), per)):
            lo, hi = w * window_s, (w + 1) * window_s
            out[f"{name}_mean[t={lo:g}-{hi:g}s]"] = float(np.mean(values[start : start + per]))
    return out


def revisit_pairs(
    c2w: np.ndarray, *, max_angle_deg: float = 10.0, max_dist: float = 0.1, min_gap: int = 16, max_pairs: int = 5
) -> list[tuple[int, int]]:
    """Frame pairs (i, j), j − i ≥ ``min_gap``, whose cameras are within the angle and centre thresholds.

    ``max_dist`` is a fraction of the trajectory's largest centre distance from frame 0 (scale-free). Pairs are
    ranked by pose distance (angle in degrees + normalised centre distance × 100) and at most ``max_pairs`` are
    kept, each later frame used once.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    centres = c2w[:, :3, 3]
    extent = max(float(np.linalg.norm(centres - centres[0], axis=1).max()), 1e-9)
    i, j = np.triu_indices(len(c2w), k=min_gap)
    angle = np.degrees(rotation_angle(c2w[i, :3, :3], c2w[j, :3, :3]))
    dist = np.linalg.norm(centres[i] - centres[j], axis=1) / extent
    keep = (angle <= max_angle_deg) & (dist <= max_dist)
    order = np.argsort(angle[keep] + 100.0 * dist[keep], kind="stable")
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()
    for a, b in zip(i[keep][order], j[keep][order], strict=True):
        if int(b) not in used:
            pairs.append((int(a), int(b)))
            used.add(int(b))
        if len(pairs) == max_pairs:
            break
    return pairs


def revisit_metrics(video, c2w, lpips_fn: Callable | Skipped | None = None, **pair_kw) -> dict[str, float]:
    """Mean PSNR / SSIM (/ LPIPS) between revisiting frame pairs of one video; empty when none revisit."""
    video = _frames(video, "video")
    pairs = revisit_pairs(c2w, **pair_kw)
    if not pairs:
        return {"revisit_pairs": 0.0}
    first = video[[p[0] for p in pairs]]
    later = video[[p[1] for p in pairs]]
    out = {"revisit_pairs": float(len(pairs)), "revisit_psnr_db_mean": float(psnr(first, later).mean()),
           "revisit_ssim_mean": float(ssim(first, later).mean())}
    if callable(lpips_fn):
        out[f"revisit_{lpips_fn.metric_name}_mean"] = float(lpips_fn(first, later).mean())
    return out


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)``; the trace of the root from the eigenvalues of Σ₁Σ₂.

    Σ₁Σ₂ is similar to the PSD matrix Σ₁^½ Σ₂ Σ₁^½, so its eigenvalues are real and ≥ 0 up to rounding and
    Tr((Σ₁Σ₂)^½) = Σ √λ (negative rounding residue clipped to 0).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    eig = np.linalg.eigvals(s1 @ s2).real
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def _torchscript(path: str | os.PathLike | None, metric: str, what: str, key: str):
    """A local TorchScript feature network, or :class:`Skipped` saying which file is missing."""
    if path is None:
        return Skipped(metric, f"no local {what} TorchScript configured (metrics.{key})")
    if not Path(path).is_file():
        return Skipped(metric, f"{what} TorchScript file {path} does not exist (metrics.{key})")
    return torch.jit.load(str(path), map_location="cpu").eval()


def _feature_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two (N, D) feature sets."""
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))


def load_i3d(path: str | os.PathLike | None) -> Callable | Skipped:
    """A local TorchScript I3D (StyleGAN-V convention) as ``fn(videos uint8 (B, F, H, W, 3)) -> (B, 400)``."""
    detector = _torchscript(path, "fvd", "I3D", "i3d_torchscript")
    if isinstance(detector, Skipped):
        return detector

    @torch.no_grad()
    def fn(videos: torch.Tensor) -> np.ndarray:
        x = videos.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # (B, 3, F, H, W) in [-1, 1]
        b, c, f = x.shape[:3]
        x = F.interpolate(x.transpose(1, 2).reshape(b * f, c, *x.shape[-2:]), size=(224, 224),
                          mode="bilinear", align_corners=False)
        x = x.reshape(b, f, c, 224, 224).transpose(1, 2)
        return detector(x, rescale=False, resize=False, return_features=True).double().numpy()

    return fn


def fvd(real: list, fake: list, extractor: Callable | Skipped, clip_frames: int = 16) -> float | Skipped:
    """FVD between two sets of videos: the first ``clip_frames`` frames of each, resized to 224 × 224.

    Needs at least 2 videos per side (a covariance); fewer gives :class:`Skipped` with the counts.
    """
    if isinstance(extractor, Skipped):
        return extractor
    if min(len(real), len(fake)) < 2:
        return Skipped("fvd", f"needs >= 2 videos per side; got {len(real)} real and {len(fake)} generated")
    clips = []
    for group in (real, fake):
        short = [v for v in group if len(v) < clip_frames]
        if short:
            return Skipped("fvd", f"{len(short)} video(s) shorter than clip_frames={clip_frames}")
        clips.append(torch.stack([_frames(v, "video")[:clip_frames] for v in group]))
    return _feature_distance(extractor(clips[0]), extractor(clips[1]))


def load_inception(path: str | os.PathLike | None) -> Callable | Skipped:
    """A local TorchScript Inception-v3 (module docstring) as ``fn(frames uint8 (B, H, W, 3)) -> (B, 2048)``."""
    detector = _torchscript(path, "fid", "Inception", "fid_inception_torchscript")
    if isinstance(detector, Skipped):
        return detector

    @torch.no_grad()
    def fn(frames: torch.Tensor) -> np.ndarray:
        return detector(frames.permute(0, 3, 1, 2).contiguous(), return_features=True).double().numpy()

    return fn


def fid(real: list, fake: list, extractor: Callable | Skipped, batch: int = 32) -> float | Skipped:
    """FID between the frames of two sets of videos (every frame of every video is one image).

    Needs at least 2 frames per side (a covariance); fewer gives :class:`Skipped` with the counts.
    """
    if isinstance(extractor, Skipped):
        return extractor
    stacks = [torch.cat([_frames(v, "video") for v in group]) if group else None for group in (real, fake)]
    counts = [0 if s is None else len(s) for s in stacks]
    if min(counts) < 2:
        return Skipped("fid", f"needs >= 2 frames per side; got {counts[0]} real and {counts[1]} generated")
    feats = [np.concatenate([extractor(s[i:i + batch]) for i in range(0, len(s), batch)]) for s in stacks]
    return _feature_distance(*feats)
