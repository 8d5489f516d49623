"""Tests for sana_wm.encoders.vae.LatentCodec on a tiny random LTX-2 VAE (offline, CPU)."""

from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import pytest
import torch

from sana_wm.encoders.tiny import save_tiny_vae, tiny_ltx2_vae
from sana_wm.encoders.vae import LatentCodec, compression_from_config


@pytest.fixture(scope="module")
def codec() -> LatentCodec:
    return LatentCodec(tiny_ltx2_vae(latent_channels=8, scaling_factor=0.7))


def _video(f=9, h=64, w=96, b=1, seed=0):
    return torch.rand(b, 3, f, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_compression_from_config_real_and_tiny_layouts():
    from diffusers import AutoencoderKLLTX2Video

    defaults = {
        k: p.default
        for k, p in inspect.signature(AutoencoderKLLTX2Video.__init__).parameters.items()
        if k != "self"
    }
    assert compression_from_config(defaults) == (32, 8)  # the released LTX-2 layout
    assert compression_from_config(tiny_ltx2_vae().config) == (32, 8)
    bad = dict(defaults, upsample_type=("spatial", "spatiotemporal", "spatiotemporal"))
    with pytest.raises(ValueError, match="inconsistent"):
        compression_from_config(bad)


def test_codec_forces_true_compression_and_is_frozen():
    from diffusers import AutoencoderKLLTX2Video

    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(  # ratios left unset: diffusers records the wrong 64/16
        latent_channels=4,
        block_out_channels=(16, 32, 64, 128),
        decoder_block_out_channels=(16, 32, 64),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
    )
    assert vae.spatial_compression_ratio == 64
    codec = LatentCodec(vae)
    assert (codec.spatial_compression, codec.temporal_compression, codec.latent_channels) == (32, 8, 4)
    assert (vae.spatial_compression_ratio, vae.temporal_compression_ratio) == (32, 8)
    assert not any(p.requires_grad for p in codec.parameters())
    codec.train()
    assert not codec.training and not codec.vae.training
    assert codec.latent_shape(161, 704, 1280) == (4, 21, 22, 40)
    assert codec.pixel_num_frames(21) == 161 and codec.latent_num_frames(1) == 1


def test_encode_is_normalised_posterior_mode(codec):
    x = _video()
    z = codec.encode(x)
    assert z.shape == (1, 8, 2, 2, 3) and z.dtype == torch.float32
    raw = codec.vae.encode(x).latent_dist.mode()
    mean = codec.vae.latents_mean.view(1, -1, 1, 1, 1)
    std = codec.vae.latents_std.view(1, -1, 1, 1, 1)
    assert torch.allclose(z, (raw - mean) * 0.7 / std, atol=1e-6)
    assert not torch.allclose(z, raw, atol=1e-2), "normalisation must change the latent"
    assert torch.allclose(codec.denormalize(codec.normalize(raw)), raw, atol=1e-6)


def test_encode_and_decode_match_the_diffusers_port(codec):
    from diffusers.pipelines.sana_wm.pipeline_sana_wm import SanaWMPipeline

    port = SimpleNamespace(vae=codec.vae, _execution_device=torch.device("cpu"))
    image = _video(f=1)[:, :, 0]  # the port encodes a (1, 3, H, W) first frame
    z_port = SanaWMPipeline._encode_first_frame(port, image, torch.device("cpu"), torch.float32)
    z = codec.encode(image[:, :, None])
    assert z.shape == (1, 8, 1, 2, 3)
    assert torch.allclose(z, z_port, atol=1e-6)

    latent = torch.randn(1, 8, 3, 2, 3, generator=torch.Generator().manual_seed(1))
    video_port = SanaWMPipeline._decode_latents(port, latent)
    video = codec.decode(latent, clamp=False)
    assert video.shape == (1, 3, 17, 64, 96)
    assert torch.allclose(video, video_port, atol=1e-5)
    clamped = codec.decode(latent)
    assert clamped.min() >= -1 and clamped.max() <= 1


@pytest.mark.parametrize(
    "shape, scale, match",
    [
        ((1, 3, 8, 64, 64), 1.0, "8k\\+1"),
        ((1, 3, 9, 48, 64), 1.0, "multiples of 32"),
        ((1, 4, 9, 64, 64), 1.0, r"\(B, 3, F, H, W\)"),
        ((1, 3, 9, 64, 64), 255.0, r"expected \[-1, 1\]"),
    ],
)
def test_encode_rejects_bad_video(codec, shape, scale, match):
    with pytest.raises(ValueError, match=match):
        codec.encode(torch.rand(shape) * scale)


def test_decode_rejects_bad_latent(codec):
    with pytest.raises(ValueError, match=r"\(B, 8, T, h, w\)"):
        codec.decode(torch.zeros(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match="too small"):
        codec.decode(torch.zeros(1, 8, 2, 1, 2))


def test_save_and_load_roundtrip_in_diffusers_layout(tmp_path, codec):
    vae_dir = save_tiny_vae(tmp_path, latent_channels=8, scaling_factor=0.7)
    # Simulate a checkpoint whose config leaves the ratios unset (diffusers would then say 64/16).
    cfg_path = vae_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["spatial_compression_ratio"] = cfg["temporal_compression_ratio"] = None
    cfg_path.write_text(json.dumps(cfg))
    x = _video(seed=2)
    for path in (tmp_path, vae_dir):  # pipeline root or the vae folder itself
        loaded = LatentCodec.from_pretrained(path, dtype=torch.float32, device="cpu")
        assert (loaded.vae.spatial_compression_ratio, loaded.vae.temporal_compression_ratio) == (32, 8)
        assert torch.equal(loaded.encode(x), codec.encode(x))
    with pytest.raises(FileNotFoundError, match="config.json"):
        LatentCodec.from_pretrained(tmp_path / "missing")


def test_framewise_tiling_keeps_shapes_and_first_tile():
    codec = LatentCodec(tiny_ltx2_vae())
    z = torch.randn(1, 8, 3, 2, 2, generator=torch.Generator().manual_seed(3))  # 17 pixel frames
    full = codec.decode(z, clamp=False)
    codec.enable_framewise_tiling(tile_frames=16, stride_frames=8)
    tiled = codec.decode(z, clamp=False)
    assert tiled.shape == full.shape == (1, 3, 17, 64, 64)
    # The causal decoder makes the first tile (up to stride + 1 frames) exact; later tiles are blended.
    assert torch.equal(tiled[:, :, :9], full[:, :, :9])
    assert not torch.allclose(tiled, full)
    assert codec.encode(_video(f=17, h=64, w=64)).shape == (1, 8, 3, 2, 2)
    codec.disable_framewise_tiling()
    assert torch.equal(codec.decode(z, clamp=False), full)
    with pytest.raises(ValueError, match="multiples of 8"):
        codec.enable_framewise_tiling(tile_frames=96, stride_frames=100)


@pytest.mark.parametrize("stride", [8, 16])
def test_tiny_vae_with_a_finer_latent_grid(tmp_path, stride):
    """The 16x / 8x layouts keep 8x temporal compression; the codec reads the true strides from the saved config."""
    tiny_ltx2_vae(latent_channels=4, spatial_compression=stride).save_pretrained(tmp_path / "vae")
    c = LatentCodec.from_pretrained(tmp_path / "vae")
    assert (c.spatial_compression, c.temporal_compression) == (stride, 8)
    z = c.encode(_video(f=9, h=32, w=48))
    assert z.shape == (1, 4, 2, 32 // stride, 48 // stride)
    assert c.decode(z).shape == (1, 3, 9, 32, 48)
    with pytest.raises(ValueError, match="spatial_compression must be one of \\[8, 16, 32\\]; got 4"):
        tiny_ltx2_vae(spatial_compression=4)
