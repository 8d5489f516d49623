"""3-D rotary position embedding (Wan-2.1 style) for SANA-WM, and the re-sliced table of the camera branch.

Head dim d = 112 splits into a time band of d − 2·2⌊d/6⌋ = 40 real dims and height/width bands of 2⌊d/6⌋ = 36 each
(20 + 18 + 18 complex pairs). Each axis uses ω_i = 10000^(−2i/dim_axis); a token at (f, h, w) gets the angles
[ω^t·f | ω^h·h | ω^w·w] and channel pairs (2j, 2j+1) rotate as complex numbers (interleaved convention).

Precision (docs/design/architecture.md §8): the released port builds the table in float32 and rotates in
float32, casting back to the working dtype; we do the same so that float32 parity is exact. The camera branch keeps
the first 10 / 9 / 9 complex entries of the full-head time / height / width bands (the highest frequencies; not
recomputed for a 56-dim head).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch


class RopeTable(NamedTuple):
    """cos/sin of the per-token angles, each [N, P] float32 (N = T·H·W tokens, P = rotated pairs)."""

    cos: torch.Tensor
    sin: torch.Tensor

    def narrow_pairs(self, index: torch.Tensor) -> RopeTable:
        return RopeTable(self.cos[:, index], self.sin[:, index])


MAX_POSITIONS = 1024  # the released table length; positions beyond it were never trained


def band_sizes(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per (time, height, width) band for a head dim: 112 → (20, 18, 18)."""
    hw = head_dim // 6
    return head_dim // 2 - 2 * hw, hw, hw


def rope_table(grid: tuple[int, int, int], head_dim: int, device=None, theta: float = 10000.0) -> RopeTable:
    """Angles for every token of a (T, H, W) latent grid in frame-major, row, column order. Returns [N, d/2]."""
    T, H, W = grid
    if max(grid) > MAX_POSITIONS:
        raise ValueError(f"latent grid {grid}: every axis must be ≤ {MAX_POSITIONS} positions (the RoPE table size)")
    bands = []
    for n_pairs, length in zip(band_sizes(head_dim), grid, strict=True):
        dim_axis = 2 * n_pairs
        freqs = 1.0 / (theta ** (torch.arange(0, dim_axis, 2, device=device, dtype=torch.float32) / dim_axis))
        pos = torch.arange(length, device=device, dtype=torch.float32)
        bands.append(torch.outer(pos, freqs))  # [length, n_pairs]
    t, h, w = bands
    angles = torch.cat(
        [
            t[:, None, None, :].expand(T, H, W, -1),
            h[None, :, None, :].expand(T, H, W, -1),
            w[None, None, :, :].expand(T, H, W, -1),
        ],
        dim=-1,
    ).reshape(T * H * W, -1)
    return RopeTable(angles.cos(), angles.sin())


def camera_rope_pairs(head_dim: int, device=None) -> torch.Tensor:
    """Indices of the full-head pairs kept for the camera branch's RoPE half (head_dim/2 dims → 28 pairs at 112)."""
    full_t, full_h, _ = band_sizes(head_dim)
    cam_t, cam_h, cam_w = band_sizes(head_dim // 2)
    idx = (
        list(range(cam_t))
        + list(range(full_t, full_t + cam_h))
        + list(range(full_t + full_h, full_t + full_h + cam_w))
    )
    return torch.tensor(idx, device=device, dtype=torch.long)


def apply_rope(x: torch.Tensor, table: RopeTable, inverse: bool = False) -> torch.Tensor:
    """Rotate interleaved channel pairs of x [B, N, Hd, 2P] by the table ([N, P]); float32 math, input dtype out."""
    xf = x.float().unflatten(-1, (-1, 2))  # [B, N, Hd, P, 2]
    re, im = xf.unbind(-1)
    cos = table.cos[None, :, None, :]
    sin = table.sin[None, :, None, :]
    if inverse:
        sin = -sin
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


# Every forward of a training run or a sampling loop asks for the same tables. Building them launches about twenty
# small kernels, and the camera pair indices cross from pageable host memory, which makes the host wait for the GPU;
# so they are built once per (grid, head dim, device). Outside inference mode, so that a table first made while
# sampling can later be saved for a training backward.


@functools.lru_cache(maxsize=4)
def cached_rope_table(grid: tuple[int, int, int], head_dim: int, device: torch.device) -> RopeTable:
    """`rope_table(grid, head_dim, device)`, built once and reused (read-only)."""
    with torch.inference_mode(False), torch.no_grad():
        return rope_table(grid, head_dim, device=device)


@functools.lru_cache(maxsize=4)
def cached_camera_table(grid: tuple[int, int, int], head_dim: int, device: torch.device) -> RopeTable:
    """The camera branch's re-sliced table of `cached_rope_table`, built once and reused (read-only)."""
    with torch.inference_mode(False), torch.no_grad():
        return cached_rope_table(grid, head_dim, device).narrow_pairs(camera_rope_pairs(head_dim, device=device))
