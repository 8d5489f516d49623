"""Frozen latent codec: the LTX-2 video VAE (diffusers ``AutoencoderKLLTX2Video``) with SANA-WM's
latent normalisation.

Pixel video (B, 3, F, H, W) in [−1, 1], F = 8k + 1, H and W multiples of 32
    ⇄ normalised latent (B, C, T, H/32, W/32) with T = (F − 1)/8 + 1 and C = 128 for the real VAE.

The VAE is causal in time: latent frame 0 encodes pixel frame 0 alone, latent frame i ≥ 1 encodes
pixel frames 8i − 7 … 8i (docs/design/camera.md §2). A single image is the F = 1 case.

Normalisation (docs/design/pipeline.md §4), per channel c, using the posterior *mode*:
    z = (z_raw − latents_mean[c]) · scaling_factor / latents_std[c]
and its inverse before decoding. ``latents_mean``/``latents_std`` are buffers stored in the VAE
checkpoint, ``scaling_factor`` is a VAE config key. The normalisation is computed in float32.

Pitfall handled here (docs/design/libraries.md §1): diffusers derives
``spatial/temporal_compression_ratio`` as 64/16 for the LTX-2 layout when the config leaves them
unset, and its tiling code reads those attributes. :class:`LatentCodec` derives the true ratios from
the down-sampling layout (32/8 for LTX-2) and writes them into the VAE explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["LatentCodec", "compression_from_config"]

# down/upsample_type → (temporal factor, spatial factor) of one scaling stage (diffusers LTX-2 blocks).
_STAGE_FACTORS = {"conv": (2, 2), "spatiotemporal": (2, 2), "spatial": (1, 2), "temporal": (2, 1)}


def _per_block(flag: Any, n: int) -> list[bool]:
    return [bool(flag)] * n if isinstance(flag, bool) else [bool(f) for f in flag]


def compression_from_config(config: dict[str, Any] | Any) -> tuple[int, int]:
    """True (spatial, temporal) compression of an ``AutoencoderKLLTX2Video`` config.

    Encoder: patch_size (spatial) and patch_size_t (temporal) times 2 per scaling down-block, where a
    ``"spatial"`` block only halves H and W, ``"temporal"`` only T and ``"spatiotemporal"``/``"conv"``
    both. The decoder's up-sampling layout must give the same factors, otherwise the config is not a
    valid autoencoder and a ValueError is raised.

    Returns:
        (spatial, temporal), e.g. (32, 8) for LTX-2.
    """
    cfg = dict(config)
    ps, pt = int(cfg.get("patch_size", 4)), int(cfg.get("patch_size_t", 1))

    def stages(types, flags) -> tuple[int, int]:
        s, t = ps, pt
        for kind, on in zip(types, flags, strict=False):
            if kind not in _STAGE_FACTORS:
                raise ValueError(
                    f"unknown LTX-2 VAE resampling type {kind!r}; expected one of {sorted(_STAGE_FACTORS)}"
                )
            if on:
                ft, fs = _STAGE_FACTORS[kind]
                s, t = s * fs, t * ft
        return s, t

    n_enc = len(cfg["layers_per_block"]) - 1
    n_dec = len(cfg["decoder_layers_per_block"]) - 1
    enc = stages(cfg["downsample_type"], _per_block(cfg["spatio_temporal_scaling"], n_enc))
    dec = stages(cfg["upsample_type"], _per_block(cfg["decoder_spatio_temporal_scaling"], n_dec))
    if enc != dec:
        raise ValueError(
            f"VAE config is inconsistent: encoder compresses (spatial, temporal) = {enc} but the decoder "
            f"expands {dec} (keys downsample_type / upsample_type / *spatio_temporal_scaling)"
        )
    return enc


def _resolve_vae_dir(path: str | os.PathLike) -> Path:
    """Accept the VAE folder itself (``config.json`` inside) or a pipeline root with a ``vae/`` subfolder."""
    p = Path(path)
    if (p / "config.json").is_file():
        return p
    if (p / "vae" / "config.json").is_file():
        return p / "vae"
    raise FileNotFoundError(
        f"no LTX-2 VAE found at {str(p)!r}: expected '<dir>/config.json' or '<dir>/vae/config.json' in the "
        "diffusers layout (models are never downloaded; pass a local directory)"
    )


class LatentCodec(nn.Module):
    """Frozen LTX-2 VAE wrapper: validated, normalised encode/decode.

    Args:
        vae: a ``diffusers.AutoencoderKLLTX2Video``. It is put in eval mode and frozen, and its
            ``spatial/temporal_compression_ratio`` attributes are overwritten with the true values.

    Attributes:
        vae: the wrapped model.
        latent_channels (int): C (128 for the released VAE).
        spatial_compression (int): 32 for LTX-2.
        temporal_compression (int): 8 for LTX-2.
        scaling_factor (float): from the VAE config.
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        from diffusers import AutoencoderKLLTX2Video

        if not isinstance(vae, AutoencoderKLLTX2Video):
            raise TypeError(
                f"LatentCodec expects a diffusers AutoencoderKLLTX2Video, got {type(vae).__name__}"
            )
        cfg = vae.config
        if cfg.get("timestep_conditioning", False):
            raise ValueError(
                "LatentCodec: VAE config has timestep_conditioning=True; SANA-WM decodes without a decode "
                "timestep (as the diffusers port does), so this VAE is not supported"
            )
        spatial, temporal = compression_from_config(cfg)
        for key, true in (("spatial_compression_ratio", spatial), ("temporal_compression_ratio", temporal)):
            stored = cfg.get(key)
            if stored is not None and int(stored) != true:
                raise ValueError(
                    f"LatentCodec: VAE config sets {key}={stored} but its layout compresses by {true}; "
                    "fix the config (diffusers' default for an unset value is wrong for LTX-2)"
                )
        # Force the real ratios: diffusers' tiling code reads these attributes.
        vae.spatial_compression_ratio = spatial
        vae.temporal_compression_ratio = temporal
        vae.requires_grad_(False).eval()
        self.vae = vae
        self.latent_channels = int(cfg["latent_channels"])
        self.spatial_compression = spatial
        self.temporal_compression = temporal
        self.scaling_factor = float(cfg.get("scaling_factor", 1.0))

    # ------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> LatentCodec:
        """Load from a local diffusers-layout directory (never downloads).

        Args:
            path: the VAE folder (``config.json`` + weights) or a pipeline root containing ``vae/``.
            dtype: parameter dtype (bf16 on GPU in production; the latent normalisation stays fp32).
            device: where to put the model.
        """
        from diffusers import AutoencoderKLLTX2Video

        vae_dir = _resolve_vae_dir(path)
        spatial, temporal = compression_from_config(AutoencoderKLLTX2Video.load_config(vae_dir))
        vae = AutoencoderKLLTX2Video.from_pretrained(
            vae_dir,
            torch_dtype=dtype,
            local_files_only=True,
            spatial_compression_ratio=spatial,
            temporal_compression_ratio=temporal,
        )
        codec = cls(vae)
        return codec.to(device) if device is not None else codec

    def train(self, mode: bool = True) -> LatentCodec:
        """The codec is frozen: it always stays in eval mode."""
        return super().train(False)

    # -------------------------------------------------------------------------------------- shapes

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def device(self) -> torch.device:
        return self.vae.device

    def latent_num_frames(self, num_frames: int) -> int:
        """T = (F − 1)/8 + 1 for F = 8k + 1 pixel frames."""
        self._check_num_frames(num_frames, "num_frames")
        return (num_frames - 1) // self.temporal_compression + 1

    def pixel_num_frames(self, latent_frames: int) -> int:
        """F = 8(T − 1) + 1 for T latent frames."""
        if latent_frames < 1:
            raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
        return (latent_frames - 1) * self.temporal_compression + 1

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T, H/32, W/32) of the latent of an (F, H, W) video, after validating F, H, W."""
        self._check_num_frames(num_frames, "num_frames")
        self._check_hw(height, width, "height/width")
        s = self.spatial_compression
        return (self.latent_channels, self.latent_num_frames(num_frames), height // s, width // s)

    def _check_num_frames(self, f: int, what: str) -> None:
        t = self.temporal_compression
        if f < 1 or (f - 1) % t != 0:
            raise ValueError(
                f"LatentCodec: {what}={f} is not of the form {t}k+1 (e.g. 1, {t + 1}, {2 * t + 1}, 161); the causal "
                f"LTX-2 VAE encodes frame 0 alone and then groups of {t}"
            )

    def _check_hw(self, h: int, w: int, what: str) -> None:
        s = self.spatial_compression
        if h <= 0 or w <= 0 or h % s or w % s:
            raise ValueError(
                f"LatentCodec: {what} = {h}x{w} must be positive multiples of {s} (e.g. 704x1280)"
            )

    # ------------------------------------------------------------------------------ encode/decode

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.vae.latents_mean.float().view(1, -1, 1, 1, 1)
        std = self.vae.latents_std.float().view(1, -1, 1, 1, 1)
        return mean, std

    def normalize(self, z_raw: torch.Tensor) -> torch.Tensor:
        """Raw VAE latent (B, C, T, h, w) → model latent (z − mean)·scaling_factor/std, float32."""
        mean, std = self._stats()
        return (z_raw.float() - mean.to(z_raw.device)) * self.scaling_factor / std.to(z_raw.device)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Model latent (B, C, T, h, w) → raw VAE latent z·std/scaling_factor + mean, float32."""
        mean, std = self._stats()
        return z.float() / self.scaling_factor * std.to(z.device) + mean.to(z.device)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode pixels to normalised latents (deterministic: posterior mode).

        Args:
            video: (B, 3, F, H, W) float in [−1, 1]; F = 8k + 1 (1 for a single image); H, W multiples of 32.

        Returns:
            z: (B, C, (F − 1)/8 + 1, H/32, W/32) float32, normalised per channel.
        """
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(
                f"LatentCodec.encode: video must have shape (B, 3, F, H, W), got {tuple(video.shape)}; "
                "add the frame axis for a single image: image[:, :, None]"
            )
        if not video.is_floating_point():
            raise ValueError(
                f"LatentCodec.encode: video must be a float tensor in [-1, 1], got dtype {video.dtype}"
            )
        _, _, f, h, w = video.shape
        self._check_num_frames(f, "number of frames F")
        self._check_hw(h, w, "frame size H x W")
        lo, hi = video.aminmax()
        if lo.item() < -1.01 or hi.item() > 1.01:
            raise ValueError(
                f"LatentCodec.encode: video values span [{lo.item():.3g}, {hi.item():.3g}], expected [-1, 1] "
                "(map uint8 pixels with x / 127.5 - 1)"
            )
        z_raw = self.vae.encode(video.to(device=self.device, dtype=self.dtype)).latent_dist.mode()
        return self.normalize(z_raw)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """Decode normalised latents to pixels.

        Args:
            z: (B, C, T, h, w) normalised latent (as returned by :meth:`encode` or a sampler).
            clamp: clamp the output to [−1, 1] (the decoder can overshoot slightly).

        Returns:
            video: (B, 3, 8(T − 1) + 1, 32h, 32w) float32, in [−1, 1] when ``clamp``.
        """
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"LatentCodec.decode: z must have shape (B, {self.latent_channels}, T, h, w), got {tuple(z.shape)}"
            )
        if self.vae.config.get("decoder_spatial_padding_mode", "zeros") == "reflect" and min(z.shape[3:]) < 2:
            raise ValueError(
                f"LatentCodec.decode: latent size {z.shape[3]}x{z.shape[4]} is too small; the decoder's reflect "
                "padding needs h, w >= 2 (frames of at least 64x64 pixels)"
            )
        video = self.vae.decode(self.denormalize(z).to(device=self.device, dtype=self.dtype)).sample.float()
        return video.clamp(-1.0, 1.0) if clamp else video

    # ----------------------------------------------------------------------------------- tiling

    def enable_framewise_tiling(self, tile_frames: int = 96, stride_frames: int = 64) -> None:
        """Encode/decode long videos in overlapping temporal tiles (blended), to bound memory.

        NVIDIA's CLI uses 96-frame tiles with stride 64; the diffusers port leaves
        tiling off, so tiled output is *not* bit-identical to the port's single-pass decode. Tiling
        only kicks in for clips longer than one tile. diffusers 0.42.1 gates its tiled *encode* on the
        decoding flag, so this switches both.

        Args:
            tile_frames: pixel frames per tile, a multiple of 8.
            stride_frames: pixel frames between tile starts, a multiple of 8, < tile_frames.
        """
        t = self.temporal_compression
        if (
            tile_frames <= 0
            or stride_frames <= 0
            or tile_frames % t
            or stride_frames % t
            or stride_frames >= tile_frames
        ):
            raise ValueError(
                f"enable_framewise_tiling: need positive multiples of {t} with stride < tile, got "
                f"tile_frames={tile_frames}, stride_frames={stride_frames}"
            )
        self.vae.use_framewise_encoding = True
        self.vae.use_framewise_decoding = True
        self.vae.tile_sample_min_num_frames = tile_frames
        self.vae.tile_sample_stride_num_frames = stride_frames

    def disable_framewise_tiling(self) -> None:
        """Back to single-pass encode/decode (the port's behaviour)."""
        self.vae.use_framewise_encoding = False
        self.vae.use_framewise_decoding = False

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`encode` so the codec can be used as a module."""
        return self.encode(video)
