"""`sana_wm.encoders.pca_init`: an LTX-2 VAE in the patch layout set to the principal components of its clips is an
ordinary codec (LatentCodec) that reconstructs clips inside its principal subspace, moving ones included."""

from __future__ import annotations

import pytest
import torch

from sana_wm.encoders.pca_init import patch_ltx2_vae, pca_init_ltx2_vae, set_latent_statistics
from sana_wm.encoders.tiny import tiny_ltx2_vae
from sana_wm.encoders.vae import LatentCodec


def _low_rank_clips(n: int = 2, frames: int = 17, size: tuple[int, int] = (32, 48)) -> torch.Tensor:
    """Clips whose 8 × 8 patches are mean + α·A + β·B with β fixed per patch and α drifting over time: per frame two
    components, per 8-frame group three (α's start, α's drift, β)."""
    g = torch.Generator().manual_seed(0)
    A, B, M = (0.1 * torch.randn(3, 8, 8, generator=g) for _ in range(3))
    h, w = size[0] // 8, size[1] // 8
    a0, da, b = (torch.rand(n, h, w, generator=g) - 0.5 for _ in range(3))
    t = torch.arange(frames).float()[None, :, None, None] / frames
    alpha = a0[:, None] + 2 * da[:, None] * t  # (n, F, h, w)
    beta = b[:, None].expand_as(alpha)
    patches = M + alpha[..., None, None, None] * A + beta[..., None, None, None] * B  # (n, F, h, w, 3, 8, 8)
    clips = patches.permute(0, 4, 1, 2, 5, 3, 6).reshape(n, 3, frames, *size)
    assert clips.abs().max() <= 1  # inside [-1, 1] without clamping, so exactly of low rank
    return clips


def test_the_patch_layout_is_an_8x_8x_codec():
    codec = LatentCodec(patch_ltx2_vae(8))
    assert (codec.latent_channels, codec.spatial_compression, codec.temporal_compression) == (8, 8, 8)
    assert codec.latent_shape(33, 64, 112) == (8, 5, 8, 14)


def test_pca_start_reconstructs_moving_clips_of_its_subspace():
    clips = _low_rank_clips()
    vae = patch_ltx2_vae(4, seed=1)
    info = pca_init_ltx2_vae(vae, clips)
    # the subspace is 2-d per frame and 3-d per 8-frame group; the 3 components and 4 channels hold all of it
    assert info["patch_variance_kept"] == pytest.approx(1.0, abs=1e-9)
    assert info["group_variance_kept"] == pytest.approx(1.0, abs=1e-6)

    def psnr(x):
        with torch.no_grad():
            rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        return float(10 * torch.log10(4 / (rec - x).square().mean()))

    assert psnr(clips) > 45.0
    assert psnr(_low_rank_clips(n=3)[2:]) > 40.0  # a clip the fit never saw, inside the same subspace


def test_pca_start_refuses_other_layouts_and_bad_clips():
    with pytest.raises(ValueError, match="block_out_channels"):
        pca_init_ltx2_vae(tiny_ltx2_vae(8, spatial_compression=8), _low_rank_clips())
    with pytest.raises(ValueError, match=r"\(N, 3, 8k\+1, H, W\)"):
        pca_init_ltx2_vae(patch_ltx2_vae(4), _low_rank_clips(frames=17)[:, :, :16])
    with pytest.raises(ValueError, match="patch_size=8"):
        pca_init_ltx2_vae(patch_ltx2_vae(4), _low_rank_clips()[..., :36])


@pytest.mark.parametrize("whiten", [1.0, 0.5, 0.0])
def test_latent_statistics_set_the_codecs_per_channel_normalisation(whiten):
    """After set_latent_statistics the codec's normalised latents of the fitted clips have mean 0 per channel and
    std ∝ raw std^(1 − whiten) with mean variance 1; decoding undoes the normalisation, so reconstructions do not
    change."""
    clips = _low_rank_clips(n=3)
    vae = patch_ltx2_vae(4, seed=1)
    pca_init_ltx2_vae(vae, clips)
    codec = LatentCodec(vae)
    with torch.no_grad():
        before = codec.decode(codec.encode(clips))
        info = set_latent_statistics(vae, clips, whiten=whiten)
        z = codec.encode(clips)
        after = codec.decode(z)
    raw = torch.tensor(info["latent_std"], dtype=torch.float64)
    assert info["latent_whiten"] == whiten
    # the clips span 3 dimensions per group: the 4th channel is empty up to rounding, floored at 1e-3 of the largest
    assert raw[3] == pytest.approx(1e-3 * float(raw.max()), rel=1e-3)
    std = z.double().std(dim=(0, 2, 3, 4))
    expected = raw.pow(1 - whiten) / raw.pow(2 * (1 - whiten)).mean().sqrt()
    torch.testing.assert_close(std[:3], expected[:3], rtol=1e-3, atol=1e-4)
    assert std[3] < expected[3]
    torch.testing.assert_close(z.double().mean(dim=(0, 2, 3, 4))[:3], torch.zeros(3, dtype=torch.float64), rtol=0,
                               atol=1e-4)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="whiten must be in \\[0, 1\\]; got 1.5"):
        set_latent_statistics(vae, clips, whiten=1.5)
