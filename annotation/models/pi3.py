"""Pi3 and Pi3X: feed-forward camera poses, intrinsics and metric scale from a set of frames.

A PyTorch implementation of the published Pi3 / Pi3X architecture (yyfz/Pi3), written from its
description; module and parameter names follow the released ``model.safetensors`` so that the
official weights load strictly. The weights are licensed CC BY-NC 4.0 (non-commercial).

Forward order (B clips of N frames, H × W multiples of 14, P = (H/14)(W/14) patches per frame):

1. **Encoder**: DINOv2 ViT-L/14 with 4 registers (LayerScale 1.0) on ImageNet-normalised frames; its
   37 × 37 position table (a 518² image) is resized bicubically with antialiasing to the patch grid;
   only the normalised patch tokens go on.
2. **Priors** (Pi3X multimodal branch, optional): depth maps through a second DINOv2 with a 2-channel
   patch embedding (normalised depth, valid mask), intrinsics as a 2-channel ray embedding
   (x/z, y/z of K⁻¹[u + ½, v + ½, 1]), both added to the patch tokens of the frames that have them;
   known poses through 5 pose-injection blocks (projective "PRoPE" attention) after decoder blocks 1,
   9, 17, 25 and 33. The branch is built only when asked for and runs only when priors are given.
3. **Decoder**: 5 learned register tokens are prepended to every frame; 36 blocks with per-head
   LayerNorm on q and k, LayerScale 0.01 and 2-D RoPE (base 100; patch (y, x) + 1, registers at 0).
   Even blocks attend within a frame, odd blocks across all frames. There is no frame embedding and
   no reference frame, so the model is permutation-equivariant over frames.
4. **Heads** read the outputs of the last two decoder blocks, concatenated (2048-d). Each has its own
   5-block frame-local transformer; the camera head pools its patch tokens into a translation and a
   9-vector orthogonalised by SVD into a rotation (camera-to-world, OpenCV, arbitrary gauge). Pi3's
   point and confidence heads are linear per patch (pixel-shuffled); Pi3X's are convolutional
   upsamplers and Pi3X adds a metric head: one token cross-attending to every token of every frame,
   giving one positive scale per clip that multiplies points and translations.
   Local points are [x·z, y·z, z] with z = exp(·) (Pi3X clamps the log-depth at 15).

The trunk is meant to run under bf16 autocast on CUDA (:func:`predict` does that); the final heads
always run in fp32.

Post-processing here: the reference input-size rule (:func:`working_size`), intrinsics from the
predicted rays (:func:`intrinsics_from_points`), rescaling K to the video's resolution, and
:func:`predict`, which runs long clips in overlapping chunks stitched by Sim(3) fits on the overlap.
Presets and the strict checkpoint loader are at the bottom.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from annotation.geometry import apply_sim3, umeyama_sim3

__all__ = [
    "Pi3Config",
    "Priors",
    "Pi3",
    "Pi3Prediction",
    "PRESETS",
    "build_pi3",
    "load_pi3",
    "predict",
    "working_size",
    "intrinsics_from_points",
    "rescale_intrinsics",
    "svd_orthogonalize",
    "WEIGHTS_LICENCE",
    "MULTIMODAL_PREFIXES",
]

WEIGHTS_LICENCE = "CC-BY-NC-4.0"
#: state-dict prefixes of the Pi3X prior branch (absent from a model built without it)
MULTIMODAL_PREFIXES = ("depth_encoder.", "depth_emb", "ray_embed.", "pose_inject_blk.")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Pi3Config:
    """Sizes of a Pi3 / Pi3X model. The defaults are the released models' (see :data:`PRESETS`)."""

    variant: str = "pi3"  # 'pi3' (linear heads) or 'pi3x' (conv heads + metric head)
    multimodal: bool = False  # build Pi3X's prior branch
    patch_size: int = 14
    enc_dim: int = 1024
    enc_depth: int = 24
    enc_heads: int = 16
    enc_registers: int = 4
    enc_grid: int = 37  # the encoder's position table covers enc_grid × enc_grid patches
    dec_dim: int = 1024
    dec_depth: int = 36
    dec_heads: int = 16
    dec_registers: int = 5
    head_width: int = 1024  # width of the point / confidence / camera head transformers
    head_heads: int = 16
    head_depth: int = 5
    camera_width: int = 512
    upsample: tuple[int, ...] = (256, 128, 64)  # Pi3X conv heads
    last_conv: int = 32
    metric_width: int = 512
    metric_heads: int = 8
    metric_depth: int = 5
    inject_after: tuple[int, ...] = (1, 9, 17, 25, 33)  # decoder blocks followed by pose injection
    rope_base: float = 100.0

    def __post_init__(self):
        if self.variant not in ("pi3", "pi3x"):
            raise ValueError(f"Pi3Config.variant must be 'pi3' or 'pi3x'; got {self.variant!r}.")
        if self.multimodal and self.variant != "pi3x":
            raise ValueError("the multimodal prior branch exists only for variant 'pi3x'.")
        for name, dim, heads in (("dec", self.dec_dim, self.dec_heads), ("head", self.head_width, self.head_heads),
                                 ("metric", self.metric_width, self.metric_heads)):
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"{name} width {dim} / {heads} heads must give a head dim divisible by 4 (2-D RoPE).")
        if self.multimodal and (self.dec_dim // self.dec_heads) % 8:
            raise ValueError(f"pose injection splits each head into 4-vectors and two RoPE quarters: the decoder head "
                             f"dim {self.dec_dim // self.dec_heads} must be divisible by 8.")
        if self.dec_depth < 2 or self.dec_depth % 2:
            raise ValueError(f"`dec_depth` must be even and ≥ 2 (frame/global pairs); got {self.dec_depth}.")
        if any(i % 2 == 0 or i >= self.dec_depth for i in self.inject_after):
            raise ValueError(f"`inject_after` must name odd (global) decoder blocks < {self.dec_depth}; "
                             f"got {self.inject_after}.")


@dataclass
class Priors:
    """Optional Pi3X conditions; each tensor may be None. Masks (B, N) bool select the frames that
    carry a prior (default: every frame of a given tensor). A pose prior needs ≥ 2 posed frames per clip.

    Attributes:
        depths: (B, N, H, W) metric or relative depth, 0 = invalid.
        intrinsics: (B, N, 3, 3) in pixels of the model input (pixel centres at +½).
        poses: (B, N, 4, 4) camera-to-world, OpenCV.
    """

    depths: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    poses: torch.Tensor | None = None
    depth_mask: torch.Tensor | None = None
    ray_mask: torch.Tensor | None = None
    pose_mask: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------------
# Positional encodings
# --------------------------------------------------------------------------------------------------


def rope_2d(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """2-D rotary embedding: the first half of each head rotates with the y position, the second with x.

    x: (B, heads, L, D); pos: (B, L, 2) integer (y, x). Each half pairs channel i with i + D/4
    ("rotate half") at frequency base^(−2i/(D/2)). Angles are computed in fp32 (rounding them to bf16
    would misplace positions of tens of patches by a large fraction of a radian).
    """
    d = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    parts = []
    for axis, part in enumerate(x.float().split(d, dim=-1)):
        angle = pos[..., axis].float()[:, None, :, None] * inv_freq  # (B, 1, L, d/2)
        cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
        rotated = torch.cat([-part[..., d // 2:], part[..., : d // 2]], dim=-1)
        parts.append(part * cos + rotated * sin)
    return torch.cat(parts, dim=-1).to(x.dtype)


def patch_positions(ph: int, pw: int, device: torch.device) -> torch.Tensor:
    """(ph·pw, 2) integer (y, x) patch positions in raster order."""
    return torch.cartesian_prod(torch.arange(ph, device=device), torch.arange(pw, device=device))


def view_plane_uv(height: int, width: int, aspect: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(2, height, width) normalised view-plane coordinates: ±aspect/√(1+aspect²) across the width and
    ±1/√(1+aspect²) across the height, sampled at pixel centres (the conv heads' aspect cue)."""
    span_x = aspect / math.sqrt(1 + aspect**2)
    span_y = 1 / math.sqrt(1 + aspect**2)
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    v = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype,
                       device=device)
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=0)


# --------------------------------------------------------------------------------------------------
# Transformer parts
# --------------------------------------------------------------------------------------------------


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Self-attention with optional per-head q/k LayerNorm (eps 1e-5) and 2-D RoPE."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, rope_base: float | None = None):
        super().__init__()
        self.heads = heads
        self.rope_base = rope_base
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        if self.rope_base is not None:
            q, k = rope_2d(q, pos, self.rope_base), rope_2d(k, pos, self.rope_base)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, MLP ×4 GELU, optional LayerScale)."""

    def __init__(self, dim: int, heads: int, layer_scale: float | None = None, qk_norm: bool = False,
                 rope_base: float | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm, rope_base)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, P, dim)


class DinoEncoder(nn.Module):
    """DINOv2 ViT with registers; returns the normalised patch tokens (B, P, dim)."""

    def __init__(self, cfg: Pi3Config, in_chans: int = 3):
        super().__init__()
        d = cfg.enc_dim
        self.grid = cfg.enc_grid
        self.patch_embed = PatchEmbed(in_chans, d, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.enc_grid**2, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.enc_registers, d))
        self.blocks = nn.ModuleList(Block(d, cfg.enc_heads, layer_scale=1.0) for _ in range(cfg.enc_depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def position_table(self, ph: int, pw: int) -> torch.Tensor:
        table = self.pos_embed.float()
        if (ph, pw) == (self.grid, self.grid):
            return table
        patch = table[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(ph, pw), mode="bicubic", antialias=True, align_corners=False)
        return torch.cat([table[:, :1], patch.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        p = self.patch_embed.proj.kernel_size[0]
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(B, -1, -1).to(tokens.dtype), tokens], dim=1)
        tokens = tokens + self.position_table(H // p, W // p).to(tokens.dtype)
        regs = self.register_tokens.expand(B, -1, -1).to(tokens.dtype)
        tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)[:, 1 + regs.shape[1]:]


# --------------------------------------------------------------------------------------------------
# Pose injection (Pi3X priors): projective positional attention
# --------------------------------------------------------------------------------------------------


def _rope_split(x: torch.Tensor, positions: torch.Tensor, base: float, inverse: bool) -> torch.Tensor:
    """1-D RoPE in split order (channel i pairs with i + D/2) at frequencies base^(−i/(D/2))."""
    n = x.shape[-1] // 2
    freqs = base ** (-torch.arange(n, device=x.device, dtype=torch.float32) / n)
    angle = positions.float()[:, None] * freqs
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., :n], x[..., n:]
    if inverse:
        return torch.cat([cos * a - sin * b, sin * a + cos * b], dim=-1)
    return torch.cat([cos * a + sin * b, -sin * a + cos * b], dim=-1)


def _prope(x: torch.Tensor, mats: torch.Tensor, ph: int, pw: int, base: float, inverse_rope: bool) -> torch.Tensor:
    """Apply one camera's 4×4 matrix to each 4-vector of the first half of the head channels and
    patch-position RoPE (x then y) to the two remaining quarters. x: (B, heads, n·P, D); mats: (B, n, 4, 4)."""
    B, h, L, D = x.shape
    n = mats.shape[1]
    xf = x.float()
    proj, rx, ry = xf.split([D // 2, D // 4, D // 4], dim=-1)
    proj = proj.reshape(B, h, n, L // n, D // 8, 4)
    proj = torch.einsum("bcij,bhcpkj->bhcpki", mats.float(), proj).reshape(B, h, L, D // 2)
    xs = torch.arange(pw, device=x.device).repeat(ph * n)
    ys = torch.arange(ph, device=x.device).repeat_interleave(pw).repeat(n)
    out = torch.cat([proj, _rope_split(rx, xs, base, inverse_rope), _rope_split(ry, ys, base, inverse_rope)], -1)
    return out.to(x.dtype)


class PRoPEAttention(nn.Module):
    """Attention whose q/k/v carry each token's camera: q ← Pᵀq, k, v ← P⁻¹k, P⁻¹v, out ← P·out with
    P the world-to-camera matrix of the token's frame, plus patch-position RoPE (base 100)."""

    def __init__(self, dim: int, heads: int, base: float = 100.0):
        super().__init__()
        self.heads, self.base = heads, base
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(dim // heads)
        self.k_norm = nn.LayerNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, c2w: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        w2c = torch.linalg.inv(c2w.float())
        q = _prope(q, w2c.transpose(-1, -2), ph, pw, self.base, False)
        k = _prope(k, c2w.float(), ph, pw, self.base, False)
        v = _prope(v, c2w.float(), ph, pw, self.base, False)
        out = _prope(F.scaled_dot_product_attention(q, k, v), w2c, ph, pw, self.base, True)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class PoseInjectBlock(nn.Module):
    """Returns the update only: ls1·attn(norm1 x) + ls2·mlp(norm2 x) (both branches read x)."""

    def __init__(self, dim: int, heads: int, base: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PRoPEAttention(dim, heads, base)
        self.ls1 = LayerScale(dim, 0.01)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim, 0.01)

    def forward(self, x: torch.Tensor, c2w: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
        return self.ls1(self.attn(self.norm1(x), c2w, ph, pw)) + self.ls2(self.mlp(self.norm2(x)))


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------


class HeadDecoder(nn.Module):
    """Linear in → frame-local RoPE blocks (no qk-norm, no LayerScale) → linear out."""

    def __init__(self, in_dim: int, width: int, heads: int, depth: int, out_dim: int, rope_base: float):
        super().__init__()
        self.projects = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(Block(width, heads, rope_base=rope_base) for _ in range(depth))
        self.linear_out = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.projects(x)
        for blk in self.blocks:
            x = blk(x, pos)
        return self.linear_out(x)


class LinearPatchHead(nn.Module):
    """Pi3: one linear map per patch token to patch² pixels × channels, pixel-shuffled → (B, H, W, C)."""

    def __init__(self, width: int, channels: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(width, channels * patch**2)

    def forward(self, x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
        feat = self.proj(x).transpose(1, 2).reshape(x.shape[0], -1, ph, pw)
        return F.pixel_shuffle(feat, self.patch).permute(0, 2, 3, 1)


class ResidualConvBlock(nn.Module):
    def __init__(self, ch: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.GroupNorm(1, ch), nn.ReLU(),
            nn.Conv2d(ch, hidden, 3, padding=1, padding_mode="replicate"),
            nn.GroupNorm(max(1, hidden // 32), hidden), nn.ReLU(),
            nn.Conv2d(hidden, ch, 3, padding=1, padding_mode="replicate"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class ConvHead(nn.Module):
    """Pi3X: ×2 upsampling stages (transposed conv + 3×3 conv + 2 residual blocks) with view-plane UV
    channels before each stage, bilinear resize to H × W, then one 3×3 → ReLU → 1×1 branch per output."""

    def __init__(self, width: int, upsample: tuple[int, ...], outputs: tuple[int, ...], last_conv: int):
        super().__init__()
        ins = (width, *upsample[:-1])
        self.upsample_blocks = nn.ModuleList(
            nn.Sequential(
                nn.Sequential(nn.ConvTranspose2d(i + 2, o, 2, stride=2),
                              nn.Conv2d(o, o, 3, padding=1, padding_mode="replicate")),
                ResidualConvBlock(o, 2 * o),
                ResidualConvBlock(o, 2 * o),
            )
            for i, o in zip(ins, upsample, strict=True)
        )
        self.output_block = nn.ModuleList(
            nn.Sequential(nn.Conv2d(upsample[-1] + 2, last_conv, 3, padding=1, padding_mode="replicate"),
                          nn.ReLU(), nn.Conv2d(last_conv, c, 1))
            for c in outputs
        )

    def forward(self, x: torch.Tensor, ph: int, pw: int, patch: int) -> list[torch.Tensor]:
        H, W = ph * patch, pw * patch
        x = x.transpose(1, 2).reshape(x.shape[0], -1, ph, pw)

        def with_uv(t: torch.Tensor) -> torch.Tensor:
            uv = view_plane_uv(t.shape[-2], t.shape[-1], W / H, t.dtype, t.device)
            return torch.cat([t, uv.expand(t.shape[0], -1, -1, -1)], dim=1)

        for block in self.upsample_blocks:
            x = block(with_uv(x))
        x = with_uv(F.interpolate(x, (H, W), mode="bilinear", align_corners=False))
        return [blk(x) for blk in self.output_block]


def svd_orthogonalize(m: torch.Tensor) -> torch.Tensor:
    """(..., 9) or (..., 3, 3) → the nearest rotation (det +1) to the row-normalised matrix, by SVD."""
    m = F.normalize(m.reshape(*m.shape[:-1], 3, 3) if m.shape[-1] == 9 else m, dim=-1)
    U, _, Vh = torch.linalg.svd(m)
    d = torch.det(U @ Vh)
    U = torch.cat([U[..., :2], U[..., 2:] * d[..., None, None]], dim=-1)
    return U @ Vh


class _ResMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.res_conv1, self.res_conv2, self.res_conv3 = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.res_conv3(F.relu(self.res_conv2(F.relu(self.res_conv1(x))))))


class CameraHead(nn.Module):
    """Patch tokens → 2 residual MLPs → mean over patches → 2 × (Linear + ReLU) → t (3) and R (9 → SVD)."""

    def __init__(self, dim: int):
        super().__init__()
        self.res_conv = nn.ModuleList(_ResMLP(dim) for _ in range(2))
        self.more_mlps = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.fc_t = nn.Linear(dim, 3)
        self.fc_rot = nn.Linear(dim, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.res_conv:
            x = blk(x)
        x = self.more_mlps(x.mean(dim=1))
        pose = torch.zeros(x.shape[0], 4, 4, device=x.device, dtype=x.dtype)
        pose[:, :3, :3] = svd_orthogonalize(self.fc_rot(x))
        pose[:, :3, 3] = self.fc_t(x)
        pose[:, 3, 3] = 1.0
        return pose


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, rope_base: float):
        super().__init__()
        self.heads, self.rope_base = heads, rope_base
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor, ypos: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        h, d = self.heads, C // self.heads
        q = rope_2d(self.q_proj(x).view(B, L, h, d).transpose(1, 2), xpos, self.rope_base)
        k = rope_2d(self.k_proj(y).view(B, -1, h, d).transpose(1, 2), ypos, self.rope_base)
        v = self.v_proj(y).view(B, -1, h, d).transpose(1, 2)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, C))


class CrossBlock(nn.Module):
    def __init__(self, dim: int, heads: int, rope_base: float):
        super().__init__()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.norm_y = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, heads, rope_base)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x, y, xpos, ypos):
        x = x + self.cross_attn(self.norm2(x), self.norm_y(y), xpos, ypos)
        return x + self.mlp(self.norm3(x))


class MetricDecoder(nn.Module):
    """Pi3X: the metric token cross-attends (only) to every token of every frame."""

    def __init__(self, in_dim: int, width: int, heads: int, depth: int, rope_base: float):
        super().__init__()
        self.projects_x = nn.Linear(in_dim, width)
        self.projects_y = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(CrossBlock(width, heads, rope_base) for _ in range(depth))
        self.linear_out = nn.Linear(width, width)

    def forward(self, token, context, xpos, ypos):
        x, y = self.projects_x(token), self.projects_y(context)
        for blk in self.blocks:
            x = blk(x, y, xpos, ypos)
        return self.linear_out(x)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class Pi3(nn.Module):
    """Pi3 (``cfg.variant == 'pi3'``) or Pi3X (``'pi3x'``, optionally with the prior branch).

    ``forward(images, priors=None)`` takes (B, N, 3, H, W) RGB in [0, 1] (H, W multiples of the patch)
    and returns a dict: ``local_points`` (B, N, H, W, 3), ``points`` (world), ``conf`` logits
    (B, N, H, W, 1), ``camera_poses`` (B, N, 4, 4) camera-to-world; Pi3X adds ``rays`` (unit, B, N, H,
    W, 3) and ``metric`` (B,), already applied to points and translations.
    """

    def __init__(self, cfg: Pi3Config):
        super().__init__()
        self.cfg = cfg
        D, base = cfg.dec_dim, cfg.rope_base
        self.encoder = DinoEncoder(cfg)
        self.decoder = nn.ModuleList(
            Block(D, cfg.dec_heads, layer_scale=0.01, qk_norm=True, rope_base=base) for _ in range(cfg.dec_depth)
        )
        self.register_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_registers, D))
        nn.init.normal_(self.register_token, std=1e-6)
        if cfg.multimodal:
            self.depth_encoder = DinoEncoder(cfg, in_chans=2)
            self.depth_emb = nn.Parameter(torch.zeros(1, 1, cfg.enc_dim))
            self.ray_embed = PatchEmbed(2, cfg.enc_dim, cfg.patch_size)
            nn.init.zeros_(self.ray_embed.proj.weight)
            nn.init.zeros_(self.ray_embed.proj.bias)
            self.pose_inject_blk = nn.ModuleList(PoseInjectBlock(D, cfg.dec_heads, base) for _ in cfg.inject_after)

        def head_decoder(out_dim: int) -> HeadDecoder:
            return HeadDecoder(2 * D, cfg.head_width, cfg.head_heads, cfg.head_depth, out_dim, base)

        self.point_decoder = head_decoder(cfg.head_width)
        self.conf_decoder = head_decoder(cfg.head_width)
        self.camera_decoder = head_decoder(cfg.camera_width)
        self.camera_head = CameraHead(cfg.camera_width)
        if cfg.variant == "pi3":
            self.point_head = LinearPatchHead(cfg.head_width, 3, cfg.patch_size)
            self.conf_head = LinearPatchHead(cfg.head_width, 1, cfg.patch_size)
        else:
            self.point_head = ConvHead(cfg.head_width, cfg.upsample, (2, 1), cfg.last_conv)
            self.conf_head = ConvHead(cfg.head_width, cfg.upsample, (1,), cfg.last_conv)
            self.metric_token = nn.Parameter(torch.zeros(1, 1, 2 * D))
            nn.init.normal_(self.metric_token, std=1e-6)
            self.metric_decoder = MetricDecoder(2 * D, cfg.metric_width, cfg.metric_heads, cfg.metric_depth, base)
            self.metric_head = nn.Linear(cfg.metric_width, 1)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    # -- forward ------------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, priors: Priors | None = None, head_chunk: int = 64) -> dict:
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"`images` must be (B, N, 3, H, W) RGB in [0, 1]; got {tuple(images.shape)}.")
        B, N, _, H, W = images.shape
        p = self.cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}×{W} must be a multiple of the patch size {p} (see working_size).")
        x = (images - self.image_mean) / self.image_std
        tokens = self.encoder(x.reshape(B * N, 3, H, W))
        pose_prior = None
        if priors is not None:
            tokens, pose_prior = self._add_priors(tokens, priors, B, N, H, W)
        hidden, pos = self._decode(tokens, B, N, H // p, W // p, pose_prior)
        return self._heads(hidden, pos, B, N, H, W, head_chunk)

    def _add_priors(self, tokens, priors: Priors, B, N, H, W):
        """Add depth / ray tokens to the frames that have them; return the normalised pose prior as
        (relative c2w (B, N, 4, 4), posed-frame mask (B, N)) or None."""
        if not self.cfg.multimodal:
            raise ValueError("priors were given but this model was built without the multimodal branch "
                             "(use the 'pi3x_multimodal' preset or load_pi3(..., multimodal=True)).")
        dev = tokens.device

        def mask_of(t, m, name):
            if t is None:
                return None
            if m is None:
                return torch.ones(B, N, dtype=torch.bool, device=dev)
            if tuple(m.shape) != (B, N):
                raise ValueError(f"`Priors.{name}` must be ({B}, {N}) bool; got {tuple(m.shape)}.")
            return m.to(dev, torch.bool)

        depth_mask = mask_of(priors.depths, priors.depth_mask, "depth_mask")
        ray_mask = mask_of(priors.intrinsics, priors.ray_mask, "ray_mask")
        pose_mask = mask_of(priors.poses, priors.pose_mask, "pose_mask")
        with torch.autocast(device_type=dev.type, enabled=False):
            factor = torch.ones(B, device=dev)
            if priors.depths is not None:
                depths = priors.depths.to(dev, torch.float32) * depth_mask[..., None, None]
                valid = depths > 0
                count = valid.flatten(1).sum(1)
                factor = torch.where(count > 0, (depths * valid).flatten(1).sum(1) / count.clamp(min=1), factor)
                normed = depths / (factor.view(B, 1, 1, 1) + 1e-8)
            pose_prior = None
            if priors.poses is not None:
                poses = priors.poses.to(dev, torch.float32)
                rel = torch.linalg.inv(poses[:, :1]) @ poses
                rel[..., :3, 3] /= factor.view(B, 1, 1)
                # clips without depth: the translations set the scale (mean norm over the posed frames),
                # unless the camera is static (all translations < 0.02)
                has_depth = depth_mask.any(1) if depth_mask is not None else torch.zeros_like(factor, dtype=torch.bool)
                norms = rel[:, 1:, :3, 3].norm(dim=-1) * pose_mask[:, 1:]
                n_posed = pose_mask[:, 1:].sum(1).clamp(min=1)
                rescale = (norms.amax(1) >= 0.02) & ~has_depth if N > 1 else torch.zeros_like(has_depth)
                scale = torch.where(rescale, norms.sum(1) / n_posed + 1e-8, torch.ones_like(factor))
                rel[..., :3, 3] /= scale.view(B, 1, 1)
                pose_mask = pose_mask & (pose_mask.sum(1, keepdim=True) >= 2)  # one pose fixes nothing
                pose_prior = (rel, pose_mask) if pose_mask.any() else None
        if priors.depths is not None and depth_mask.any():
            depth_in = torch.stack([normed, (normed > 0).float()], dim=2).reshape(B * N, 2, H, W)
            emb = self.depth_encoder(depth_in.to(tokens.dtype)) + self.depth_emb
            tokens = tokens + emb * depth_mask.reshape(B * N, 1, 1)
        if priors.intrinsics is not None and ray_mask.any():
            K = priors.intrinsics.to(dev, torch.float32)
            v, u = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
            pix = torch.stack([u + 0.5, v + 0.5, torch.ones_like(u, dtype=torch.float32)], -1).float()
            rays = torch.einsum("bnij,hwj->bnihw", torch.linalg.inv(K), pix)[:, :, :2]
            emb = self.ray_embed(rays.reshape(B * N, 2, H, W).to(tokens.dtype))
            tokens = tokens + emb * ray_mask.reshape(B * N, 1, 1)
        return tokens, pose_prior

    def _decode(self, tokens, B, N, ph, pw, pose_prior):
        """Alternating frame / global blocks; returns (concat of the last two block outputs, positions)."""
        D, R = self.cfg.dec_dim, self.cfg.dec_registers
        regs = self.register_token.expand(B * N, 1, R, D).reshape(B * N, R, D).to(tokens.dtype)
        hidden = torch.cat([regs, tokens], dim=1)
        hw = hidden.shape[1]
        pos = torch.cat([torch.zeros(R, 2, dtype=torch.long, device=tokens.device),
                         patch_positions(ph, pw, tokens.device) + 1])
        pos_frame = pos.expand(B * N, hw, 2)
        pos_global = pos.repeat(N, 1).expand(B, N * hw, 2)
        inject = {blk: j for j, blk in enumerate(self.cfg.inject_after)}
        previous = None
        for i, blk in enumerate(self.decoder):
            if i % 2 == 0:
                hidden = blk(hidden.reshape(B * N, hw, D), pos_frame)
            else:
                hidden = blk(hidden.reshape(B, N * hw, D), pos_global)
            if pose_prior is not None and i in inject:
                hidden = self._inject_poses(self.pose_inject_blk[inject[i]], hidden, pose_prior, B, N, hw, ph, pw)
            if i == len(self.decoder) - 2:
                previous = hidden.reshape(B * N, hw, D)
        return torch.cat([previous, hidden.reshape(B * N, hw, D)], dim=-1), pos_frame

    def _inject_poses(self, blk, hidden, pose_prior, B, N, hw, ph, pw):
        # Only posed frames attend to each other, so run the block on their patch tokens alone instead of
        # masking an (N·P)² attention matrix; unposed frames receive nothing.
        rel, mask = pose_prior
        R, D = self.cfg.dec_registers, self.cfg.dec_dim
        h4 = hidden.reshape(B, N, hw, D).clone()
        for b in range(B):
            idx = mask[b].nonzero().squeeze(1)
            if len(idx) < 2:
                continue
            x = h4[b, idx, R:].reshape(1, -1, D)
            h4[b, idx, R:] += blk(x, rel[b, idx][None], ph, pw).reshape(len(idx), -1, D)
        return h4.reshape(B, N * hw, D)

    def _heads(self, hidden, pos, B, N, H, W, head_chunk):
        cfg = self.cfg
        R, p = cfg.dec_registers, cfg.patch_size
        ph, pw = H // p, W // p
        point_tok = self.point_decoder(hidden, pos)[:, R:]
        conf_tok = self.conf_decoder(hidden, pos)[:, R:]
        cam_tok = self.camera_decoder(hidden, pos)[:, R:]
        if cfg.variant == "pi3x":
            hw = hidden.shape[1]
            metric_tok = self.metric_decoder(
                self.metric_token.expand(B, 1, -1).to(hidden.dtype), hidden.reshape(B, N * hw, -1),
                torch.zeros(B, 1, 2, dtype=torch.long, device=hidden.device), pos.reshape(B, N * hw, 2))
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            if cfg.variant == "pi3":
                pts = self.point_head(point_tok.float(), ph, pw)
                xy, z = pts[..., :2], pts[..., 2:].exp()
                conf = self.conf_head(conf_tok.float(), ph, pw)
            else:
                outs, confs = [], []
                for s in range(0, B * N, head_chunk):  # the full-resolution conv maps dominate memory
                    xy_c, z_c = self.point_head(point_tok[s:s + head_chunk].float(), ph, pw, p)
                    outs.append(torch.cat([xy_c, z_c], 1).permute(0, 2, 3, 1))
                    confs.append(self.conf_head(conf_tok[s:s + head_chunk].float(), ph, pw, p)[0].permute(0, 2, 3, 1))
                pts, conf = torch.cat(outs), torch.cat(confs)
                xy, z = pts[..., :2], pts[..., 2:].clamp(max=15.0).exp()
            local = torch.cat([xy * z, z], dim=-1).reshape(B, N, H, W, 3)
            c2w = self.camera_head(cam_tok.float()).reshape(B, N, 4, 4)
            out = {"conf": conf.reshape(B, N, H, W, 1)}
            if cfg.variant == "pi3x":
                metric = self.metric_head(metric_tok.float()).reshape(B).exp()
                local = local * metric.view(B, 1, 1, 1, 1)
                c2w = c2w.clone()
                c2w[..., :3, 3] *= metric.view(B, 1, 1)
                out["rays"] = F.normalize(torch.cat([xy, torch.ones_like(z)], -1), dim=-1).reshape(B, N, H, W, 3)
                out["metric"] = metric
            out["local_points"] = local
            out["camera_poses"] = c2w
            out["points"] = torch.einsum("bnij,bnhwj->bnhwi", c2w[..., :3, :3], local) + c2w[..., None, None, :3, 3]
        return out


# --------------------------------------------------------------------------------------------------
# Input size, intrinsics from rays
# --------------------------------------------------------------------------------------------------


def working_size(height: int, width: int, pixel_limit: int = 255_000, patch: int = 14) -> tuple[int, int]:
    """The reference input-size rule: scale to about ``pixel_limit`` pixels, round each side to patches,
    then shrink the side that exceeds the aspect until the area fits. Returns (h, w); 704×1280 → 364×686."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive; got {height}×{width}.")
    scale = math.sqrt(pixel_limit / (width * height))
    wt, ht = width * scale, height * scale
    k, m = round(wt / patch), round(ht / patch)
    while (k * patch) * (m * patch) > pixel_limit:
        if k / m > wt / ht:
            k -= 1
        else:
            m -= 1
    return max(1, m) * patch, max(1, k) * patch


def intrinsics_from_points(local_points: torch.Tensor, principal_point: str = "centre") -> torch.Tensor:
    """Pinhole K from camera-frame points (..., H, W, 3) (or rays), in integer-index pixels of that grid.

    With x̂ = X/|Z|, ŷ = Y/|Z| and pixel indices u = 0…W−1, v = 0…H−1:
    ``'centre'`` fixes cx = (W−1)/2, cy = (H−1)/2 and solves fx = Σ x̂(u−cx) / Σ x̂² (same for y);
    ``'fit'`` solves u = fx·x̂ + cx (and v = fy·ŷ + cy) by 1-D least squares. Computed in float64.
    """
    if principal_point not in ("centre", "fit"):
        raise ValueError(f"`principal_point` must be 'centre' or 'fit'; got {principal_point!r}.")
    pts = local_points.double()
    H, W = pts.shape[-3:-1]
    z = pts[..., 2].abs() + 1e-12
    xh, yh = (pts[..., 0] / z).flatten(-2), (pts[..., 1] / z).flatten(-2)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64, device=pts.device),
                          torch.arange(W, dtype=torch.float64, device=pts.device), indexing="ij")
    u, v = u.flatten(), v.flatten()

    def fit(x, target, centre):
        if centre is not None:
            f = (x * (target - centre)).sum(-1) / (x * x).sum(-1)
            return f, torch.full_like(f, centre)
        xm, tm = x.mean(-1, keepdim=True), target.mean()
        f = ((x - xm) * (target - tm)).sum(-1) / ((x - xm) ** 2).sum(-1)
        return f, tm - f * xm.squeeze(-1)

    centred = principal_point == "centre"
    fx, cx = fit(xh, u, (W - 1) / 2 if centred else None)
    fy, cy = fit(yh, v, (H - 1) / 2 if centred else None)
    K = torch.zeros(*fx.shape, 3, 3, dtype=torch.float64, device=pts.device)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = fx, fy, cx, cy, 1.0
    return K


def rescale_intrinsics(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """K (..., 3, 3) in integer-index pixels of a ``from_hw`` image → the same camera seen by a resized
    ``to_hw`` image. A resize maps pixel centres u + ½ proportionally, so f scales by s and c ↦ (c + ½)s − ½."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    out = np.array(K, dtype=np.float64, copy=True)
    out[..., 0, 0] *= sx
    out[..., 1, 1] *= sy
    out[..., 0, 2] = (out[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 2] = (out[..., 1, 2] + 0.5) * sy - 0.5
    return out


# --------------------------------------------------------------------------------------------------
# Clip-level prediction: resize, chunks with overlap, Sim(3) stitching
# --------------------------------------------------------------------------------------------------


@dataclass
class Pi3Prediction:
    """Per-frame results at the input video's resolution.

    Attributes:
        c2w: (N, 4, 4) float64 camera-to-world, OpenCV; metres for Pi3X, arbitrary units for Pi3.
        K: (N, 3, 3) float64 intrinsics in integer-index pixels of the input frames.
        confidence: (N,) mean sigmoid confidence of each frame's pixels.
        metric: Pi3X's metric factor of the first chunk (already applied to ``c2w``), else None.
        working_hw: the (h, w) the model saw.
        chunks: [(start, end)] frame ranges of the forward passes.
    """

    c2w: np.ndarray
    K: np.ndarray
    confidence: np.ndarray
    metric: float | None
    working_hw: tuple[int, int]
    chunks: list[tuple[int, int]]


def _resize_frames(frames: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    from PIL import Image

    h, w = hw
    if frames.shape[1:3] == (h, w):
        out = frames
    else:
        out = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.LANCZOS)) for f in frames])
    return torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def predict(model: Pi3, frames: np.ndarray, *, frame_budget: int = 64, overlap: int = 8,
            principal_point: str = "centre", pixel_limit: int = 255_000, device: str | torch.device | None = None,
            dtype: torch.dtype = torch.bfloat16, conf_threshold: float = 0.1, max_align_points: int = 200_000,
            known_K: np.ndarray | None = None) -> Pi3Prediction:
    """Poses, intrinsics and confidence for a clip ``frames`` (N, H, W, 3) uint8.

    Frames are resized by :func:`working_size` (LANCZOS, no crop). Clips longer than ``frame_budget``
    run in chunks of ``frame_budget`` frames that overlap by ``overlap``; each chunk is brought into the
    first chunk's frame by a Sim(3) fit of its world points on the overlapping frames (pixels confident
    in both, sigmoid(conf) > ``conf_threshold``). Each frame keeps the values of the first chunk that saw it.
    On CUDA the trunk runs under ``dtype`` autocast (the heads stay fp32).

    ``known_K`` ((N, 3, 3) in integer-index pixels of the input frames) is fed to a multimodal Pi3X as
    its intrinsics prior (moved to the working resolution and to the prior's +½ pixel centres); a model
    without the prior branch refuses it.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 1:
        raise ValueError(f"`frames` must be (N, H, W, 3) uint8 with N ≥ 1; got {frames.shape} {frames.dtype}.")
    if not 0 <= overlap < frame_budget:
        raise ValueError(f"need 0 ≤ overlap < frame_budget; got overlap={overlap}, frame_budget={frame_budget}.")
    if overlap < 2 and len(frames) > frame_budget:
        raise ValueError(f"stitching chunks needs an overlap of ≥ 2 frames; got {overlap}.")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    N, H, W = frames.shape[:3]
    hw = working_size(H, W, pixel_limit, model.cfg.patch_size)
    images = _resize_frames(frames, hw)
    K_prior = None
    if known_K is not None:
        if not model.cfg.multimodal:
            raise ValueError("`known_K` is a prior of the multimodal Pi3X; this model was built without that branch.")
        K_prior = rescale_intrinsics(np.asarray(known_K, np.float64).reshape(N, 3, 3), (H, W), hw)
        K_prior[:, :2, 2] += 0.5  # the prior's rays are K⁻¹[u + ½, v + ½, 1]
        K_prior = torch.from_numpy(K_prior).float()
    c2w = np.zeros((N, 4, 4))
    K = np.zeros((N, 3, 3))
    conf = np.zeros(N)
    metric = None
    chunks: list[tuple[int, int]] = []
    prev_points: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    step = frame_budget - overlap
    for start in range(0, N, step):
        end = min(start + frame_budget, N)
        batch = images[start:end].to(device)[None]
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=device.type == "cuda"):
            priors = None if K_prior is None else Priors(intrinsics=K_prior[start:end].to(device)[None])
            out = model(batch, priors)
        local = out["local_points"][0].float()
        prob = torch.sigmoid(out["conf"][0, ..., 0].float())
        poses = out["camera_poses"][0].double().cpu().numpy()
        points = out["points"][0].float()
        Ks = rescale_intrinsics(intrinsics_from_points(local, principal_point).cpu().numpy(), hw, (H, W))
        if chunks:
            shared = list(range(start, chunks[-1][1]))
            src = points[: len(shared)].reshape(-1, 3).cpu().numpy()  # shared frames are this chunk's first ones
            w_new = prob[: len(shared)].reshape(-1).cpu().numpy()
            dst = np.concatenate([prev_points[j][0] for j in shared])
            w_old = np.concatenate([prev_points[j][1] for j in shared])
            weight = np.where((w_new > conf_threshold) & (w_old > conf_threshold), w_new * w_old, 0.0)
            stride = max(1, len(weight) // max_align_points)
            sim = umeyama_sim3(src[::stride], dst[::stride], weight[::stride])
            poses = apply_sim3(sim, poses)
            points = torch.from_numpy(sim.points(points.reshape(-1, 3).cpu().numpy()).reshape(points.shape)).float()
        elif "metric" in out:
            metric = float(out["metric"][0])
        new = slice(chunks[-1][1] - start if chunks else 0, end - start)
        c2w[start + new.start:end] = poses[new]
        K[start + new.start:end] = Ks[new]
        conf[start + new.start:end] = prob.mean(dim=(1, 2)).cpu().numpy()[new]
        prev_points = {start + j: (points[j].reshape(-1, 3).cpu().numpy(), prob[j].reshape(-1).cpu().numpy())
                       for j in range(max(0, end - start - overlap), end - start)}
        chunks.append((start, end))
        if end == N:
            break
    return Pi3Prediction(c2w, K, conf, metric, hw, chunks)


# --------------------------------------------------------------------------------------------------
# Presets and checkpoint loading
# --------------------------------------------------------------------------------------------------

PRESETS: dict[str, Pi3Config] = {
    "pi3": Pi3Config(variant="pi3"),
    "pi3x": Pi3Config(variant="pi3x"),
    "pi3x_multimodal": Pi3Config(variant="pi3x", multimodal=True),
    # for tests: every module of the real model at toy width and depth (2 heads of 16 channels)
    "tiny": Pi3Config(variant="pi3x", enc_dim=32, enc_depth=2, enc_heads=2, enc_grid=4, dec_dim=32, dec_depth=4,
                      dec_heads=2, head_width=32, head_heads=2, head_depth=1, camera_width=16, upsample=(32, 32, 32),
                      last_conv=8, metric_width=16, metric_heads=2, metric_depth=1, inject_after=(1, 3)),
}


def build_pi3(preset: str = "pi3", **overrides) -> Pi3:
    """A randomly initialised model of a preset (``'tiny'`` takes ``variant='pi3'`` to get linear heads)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown Pi3 preset {preset!r}; expected one of {sorted(PRESETS)}.")
    return Pi3(replace(PRESETS[preset], **overrides))


_KNOWN_CONFIG = {"pos_type": "rope100", "decoder_size": "large"}  # hub-mixin init arguments of the release


def load_pi3(path: str | Path, variant: str, multimodal: bool = False, device: str | torch.device = "cpu",
             preset_config: Pi3Config | None = None) -> Pi3:
    """Load the official weights strictly from a folder with ``model.safetensors`` (+ ``config.json``) or
    from the ``.safetensors`` file itself.

    Args:
        path: folder or file.
        variant: 'pi3' or 'pi3x'; a checkpoint of the other variant is refused.
        multimodal: build Pi3X's prior branch (its keys must then be in the file); when False the
            branch's keys, if present, are dropped and the branch is not built.
        device: where the parameters go.
        preset_config: sizes to build (default: the released sizes of ``variant``); tests pass tiny ones.

    Raises:
        FileNotFoundError: naming the path and the expected files.
        ValueError: wrong variant, missing / unexpected keys or shapes, a contradicting config.json.
    """
    from safetensors import safe_open

    if variant not in ("pi3", "pi3x"):
        raise ValueError(f"`variant` must be 'pi3' or 'pi3x'; got {variant!r}.")
    path = Path(path)
    if path.is_dir():
        weights, config_file = path / "model.safetensors", path / "config.json"
    else:
        weights, config_file = path, path.with_name("config.json")
    if not weights.is_file():
        raise FileNotFoundError(f"no Pi3 checkpoint at {weights}: expected a folder holding model.safetensors "
                                f"(+ config.json) as released for {variant!r}, or the .safetensors file itself.")
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_file} is not valid JSON: {err}") from err
        if not isinstance(config, dict):
            raise ValueError(f"{config_file} must hold a JSON object; got {type(config).__name__}.")
        for key, expected in _KNOWN_CONFIG.items():
            if key in config and config[key] != expected:
                raise ValueError(f"{config_file}: {key} = {config[key]!r}, but only {expected!r} (the released "
                                 f"model) is implemented.")
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())
    is_x = "metric_token" in keys
    if is_x != (variant == "pi3x"):
        found = "pi3x" if is_x else "pi3"
        raise ValueError(f"{weights} holds {found} weights ('metric_token' {'present' if is_x else 'absent'}) but "
                         f"variant {variant!r} was asked for.")
    has_mm = any(k.startswith(MULTIMODAL_PREFIXES) for k in keys)
    if multimodal and not has_mm:
        raise ValueError(f"{weights} has no multimodal keys ({', '.join(MULTIMODAL_PREFIXES)}…); load it with "
                         f"multimodal=False.")
    cfg = replace(preset_config or PRESETS[variant], variant=variant, multimodal=multimodal)
    with torch.device("meta"):
        model = Pi3(cfg)
    expected = model.state_dict()
    state = {}
    with safe_open(str(weights), framework="pt", device=str(device)) as f:
        for k in keys:
            if not multimodal and k.startswith(MULTIMODAL_PREFIXES):
                continue
            state[k] = f.get_tensor(k)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        def show(ks):
            return ", ".join(ks[:8]) + (f" … ({len(ks)} in all)" if len(ks) > 8 else "")
        parts = [f"{label}: {show(ks)}" for label, ks in
                 (("missing", missing), ("unexpected", unexpected),
                  ("wrong shape", [f"{k} {tuple(state[k].shape)} ≠ {tuple(expected[k].shape)}" for k in wrong]))
                 if ks]
        raise ValueError(f"{weights} does not match {variant} ({'with' if multimodal else 'without'} the "
                         f"multimodal branch): " + "; ".join(parts))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()
