"""Start an LTX-2 VAE from the principal components of its training clips (a codec in seconds on a CPU).

A small ``AutoencoderKLLTX2Video`` trained from random weights on a CPU learns slowly: for minutes it reconstructs
little more than a flat colour (bench/RESULTS.md, "The CPU demo's codec"). Yet a *linear* code of pixel blocks —
principal components — already reconstructs the synthetic world well. :func:`pca_init_ltx2_vae` writes such a code
into the LTX-2 class's own parameters, so the result is an ordinary diffusers VAE that the codec interface
(:class:`~sana_wm.encoders.vae.LatentCodec`), the latent cache and the pipeline use unchanged.

It needs the *patch layout* (:func:`patch_ltx2_vae`): all spatial compression in the patchifier (``patch_size`` =
spatial compression) and three temporal stages whose widths double — ``2C, 4C, 8C`` for ``C`` latent channels on
both sides — so each stage's residual path stacks two frames' features exactly (encoder) or unstacks them
(decoder). With every residual branch (the resnets' second convolution, the resamplers' convolution) set to zero,
each side reduces to one linear map at each end plus the per-position RMS norm and SiLU before its last convolution:

* encoder ``conv_in``: per frame, the top ``C - 1`` principal components of the ``p × p × 3`` pixel patches, plus one
  constant channel; the stages stack 8 frames into ``8C`` features;
* encoder ``conv_out``: the top ``C`` principal components of those stacked features → the latent (one common
  scale, so channel 0 carries the most variance);
* decoder ``conv_in``: least squares from the latent back to the stacked per-frame components (same order);
* decoder ``conv_out``: least squares from the decoder's normalised features back to the pixel patches.

The per-frame components enter scaled by ``signal_scale`` next to a constant of 1, so the RMS norms divide by an
almost constant value and the SiLUs work near their linear part: the whole codec is then close to the linear
two-stage PCA code, and the two least-squares fits absorb what remains. Only the centre tap of each initialised
convolution is set (the current frame: the last tap of a causal convolution, the middle one otherwise).
"""

from __future__ import annotations

import torch

__all__ = ["patch_ltx2_vae", "pca_init_ltx2_vae", "set_latent_statistics"]

# The stacked order of the 8 frames of one latent frame in the temporal stages' channels: channel c * 8 + j holds
# frame _FRAME_SLOT.index(j) of the group (each of the three stages interleaves its pair innermost).
_FRAME_SLOT = (0, 4, 2, 6, 1, 5, 3, 7)
#: Smallest raw channel std, relative to the largest, that :func:`set_latent_statistics` normalises by.
MIN_RELATIVE_STD = 1e-3


def patch_ltx2_vae(latent_channels: int = 32, *, spatial_compression: int = 8, seed: int = 0):
    """An ``AutoencoderKLLTX2Video`` in the patch layout that :func:`pca_init_ltx2_vae` initialises.

    ``patch_size`` = ``spatial_compression``; three ``"temporal"`` stages (8× temporal compression) with widths
    ``2C, 4C, 8C`` in the encoder and the decoder, one resnet per stage, reflect-padded encoder. 32 latent channels
    at 8× give about 13 M parameters.

    Args:
        latent_channels: C.
        spatial_compression: the patch size (4, 8, 16 or 32); the latent grid is H/s × W/s.
        seed: initialisation seed of the weights that :func:`pca_init_ltx2_vae` leaves random.
    """
    from diffusers import AutoencoderKLLTX2Video

    C, s = int(latent_channels), int(spatial_compression)
    if C < 2:
        raise ValueError(f"patch_ltx2_vae: latent_channels must be >= 2; got {latent_channels!r}")
    if s not in (4, 8, 16, 32):
        raise ValueError(f"patch_ltx2_vae: spatial_compression must be 4, 8, 16 or 32; got {spatial_compression!r}")
    widths = (2 * C, 4 * C, 8 * C)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLLTX2Video(
            latent_channels=C,
            patch_size=s,
            block_out_channels=widths,
            decoder_block_out_channels=widths,
            down_block_types=("LTX2VideoDownBlock3D",) * 3,
            layers_per_block=(1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            spatio_temporal_scaling=(True,) * 3,
            decoder_spatio_temporal_scaling=(True,) * 3,
            decoder_inject_noise=(False,) * 4,
            downsample_type=("temporal",) * 3,
            upsample_type=("temporal",) * 3,
            upsample_residual=(True,) * 3,
            upsample_factor=(2, 2, 2),
            encoder_spatial_padding_mode="reflect",
            spatial_compression_ratio=s,
            temporal_compression_ratio=8,
        )
    return vae.eval()


def _check_layout(vae) -> None:
    cfg = vae.config
    C = int(cfg["latent_channels"])
    want = {
        "patch_size_t": 1,
        "block_out_channels": (2 * C, 4 * C, 8 * C),
        "decoder_block_out_channels": (2 * C, 4 * C, 8 * C),
        "downsample_type": ("temporal",) * 3,
        "upsample_type": ("temporal",) * 3,
        "upsample_factor": (2, 2, 2),
        "timestep_conditioning": False,
    }
    for key, value in want.items():
        got = cfg[key]
        if (tuple(got) if isinstance(got, list | tuple) else got) != value:
            raise ValueError(
                f"pca_init_ltx2_vae: VAE config {key}={got!r} but the patch layout needs {value!r} "
                "(build the VAE with sana_wm.encoders.pca_init.patch_ltx2_vae)"
            )
    for key in ("spatio_temporal_scaling", "decoder_spatio_temporal_scaling", "upsample_residual"):
        flags = cfg[key]
        if not all(flags if isinstance(flags, list | tuple) else [flags]):
            raise ValueError(f"pca_init_ltx2_vae: VAE config {key}={flags!r} must be all True for the patch layout")
    if any(cfg["decoder_inject_noise"] if isinstance(cfg["decoder_inject_noise"], list | tuple)
           else [cfg["decoder_inject_noise"]]):
        raise ValueError("pca_init_ltx2_vae: decoder_inject_noise must be off for the patch layout")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, D, ...) → (B · ..., D) float64."""
    return x.movedim(1, -1).reshape(-1, x.shape[1]).double()


def _least_squares(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W, b minimising |X W + b − Y|², solved on centred, unit-variance columns (constant columns get weight 0):
    the inputs mix near-constant columns of size 1 with signal columns a thousand times smaller."""
    m, sd = X.mean(0), X.std(0)
    keep = sd > 1e-9 * sd.max()
    W = torch.zeros(X.shape[1], Y.shape[1], dtype=X.dtype)
    W[keep] = torch.linalg.lstsq((X[:, keep] - m[keep]) / sd[keep], Y - Y.mean(0), driver="gelsd").solution
    W[keep] /= sd[keep, None]
    return W, Y.mean(0) - m @ W


def _share(singular_values: torch.Tensor, k: int) -> float:
    """Share of the variance in the top ``k`` principal components."""
    energy = singular_values.square()
    return float(energy[:k].sum() / energy.sum())


def _set_centre_tap(conv, weight: torch.Tensor, bias: torch.Tensor, causal: bool) -> None:
    """Zero a LTX-2 causal conv3d and set its current-frame, centre-pixel tap to ``weight`` (out, in) + ``bias``."""
    w = torch.zeros_like(conv.conv.weight)
    kt, kh, kw = w.shape[2:]
    w[:, :, kt - 1 if causal else (kt - 1) // 2, kh // 2, kw // 2] = weight.to(w.dtype)
    conv.conv.weight.copy_(w)
    conv.conv.bias.copy_(bias.to(w.dtype))


@torch.no_grad()
def pca_init_ltx2_vae(vae, clips: torch.Tensor, *, signal_scale: float = 1e-3, max_patches: int = 60_000) -> dict:
    """Set a patch-layout LTX-2 VAE (:func:`patch_ltx2_vae`) to the two-stage PCA code of ``clips`` (module
    docstring). Weights not named there keep their random values; ``latents_mean``/``latents_std`` are left alone:
    over ``clips`` the raw latent channels already have mean 0, and their variances, in decreasing order, average 1.

    Args:
        vae: ``AutoencoderKLLTX2Video`` in the patch layout (checked: a ValueError names the first key that differs).
        clips: (N, 3, F, H, W) float in [-1, 1]; F = 8k + 1, H and W multiples of the patch size.
        signal_scale: size of the principal components next to the constant channel (module docstring).
        max_patches: pixel patches used for the per-frame components (an even subsample of all of them).

    Returns:
        {"patch_variance_kept": share of the pixel patches' variance in the C − 1 per-frame components,
        "group_variance_kept": share of the stacked 8-frame features' variance in the C latent channels}.
    """
    _check_layout(vae)
    if clips.ndim != 5 or clips.shape[1] != 3 or (clips.shape[2] - 1) % 8:
        raise ValueError(f"pca_init_ltx2_vae: clips must be (N, 3, 8k+1, H, W); got {tuple(clips.shape)}")
    cfg = vae.config
    C, p = int(cfg["latent_channels"]), int(cfg["patch_size"])
    if clips.shape[3] % p or clips.shape[4] % p:
        raise ValueError(f"pca_init_ltx2_vae: frame size {tuple(clips.shape[3:])} is not a multiple of patch_size={p}")
    enc, dec = vae.encoder, vae.decoder
    enc_causal, dec_causal = bool(cfg["encoder_causal"]), bool(cfg["decoder_causal"])
    vae.eval()
    for m in vae.modules():  # every residual branch starts at zero: the trunks become exact (un)stacking
        name = type(m).__name__
        if name == "LTX2VideoResnetBlock3d":
            m.conv2.conv.weight.zero_()
            m.conv2.conv.bias.zero_()
        elif name in ("LTX2VideoDownsampler3d", "LTX2VideoUpsampler3d"):
            m.conv.conv.weight.zero_()
            m.conv.conv.bias.zero_()

    def patchify(x: torch.Tensor) -> torch.Tensor:  # the encoder's own patch order: (B, 3·p·p, F, H/p, W/p)
        B, c, F, H, W = x.shape
        return x.reshape(B, c, F, 1, H // p, p, W // p, p).permute(0, 1, 3, 7, 5, 2, 4, 6).flatten(1, 4)

    # 1. per-frame principal components of the pixel patches → encoder conv_in (C - 1 of them + a constant)
    P = torch.cat([_rows(patchify(clips[i:i + 1])) for i in range(len(clips))])
    sub = P[:: max(1, len(P) // max_patches)]
    mu = sub.mean(0)
    sv = torch.linalg.svd(sub - mu, full_matrices=False)
    V = sv.Vh[: C - 1]  # (C-1, 3pp)
    a = float(signal_scale)
    _set_centre_tap(enc.conv_in, torch.cat([torch.zeros(1, V.shape[1], dtype=V.dtype), a * V]),
                    torch.cat([torch.ones(1, dtype=V.dtype), -a * (V @ mu)]), enc_causal)

    # 2. principal components of the stacked, normalised 8-frame features → encoder conv_out (mean part)
    feats: list[torch.Tensor] = []
    hook = enc.conv_out.register_forward_hook(lambda _m, i, _o: feats.append(i[0].double()))
    for i in range(len(clips)):
        enc(clips[i:i + 1])
    hook.remove()
    Fe = torch.cat([_rows(f) for f in feats])
    m2 = Fe.mean(0)
    sv2 = torch.linalg.svd(Fe - m2, full_matrices=False)
    W2 = sv2.Vh[:C]  # (C, 8C)
    # One scale for all channels (mean variance 1): the latent keeps the components' energy order, so a diffusion
    # model's loss weighs the channels that carry most of the picture most, not the faint detail ones.
    scale = ((Fe - m2) @ W2.T).square().mean().sqrt()
    w_out = torch.zeros(C + 1, Fe.shape[1], dtype=Fe.dtype)
    w_out[:C] = W2 / scale
    b_out = torch.zeros(C + 1, dtype=Fe.dtype)
    b_out[:C] = -(W2 @ m2) / scale  # the last channel (log-variance) stays 0
    _set_centre_tap(enc.conv_out, w_out, b_out, enc_causal)

    # 3. decoder conv_in: latent → the stacked per-frame components (constant 1, then a · components)
    def stacked_components(x: torch.Tensor) -> torch.Tensor:
        comp = torch.einsum("bkfhw,jk->bjfhw", patchify(x).double() - mu[None, :, None, None, None], V)
        comp = torch.cat([comp[:, :, :1].expand(-1, -1, 8, -1, -1), comp[:, :, 1:]], dim=2)  # frame 0 fills a group
        B, _, F8, h, w = comp.shape
        full = torch.cat([torch.ones(B, 1, F8, h, w, dtype=comp.dtype), a * comp], 1).reshape(B, C, F8 // 8, 8, h, w)
        out = torch.empty(B, C, 8, F8 // 8, h, w, dtype=comp.dtype)
        for f, slot in enumerate(_FRAME_SLOT):
            out[:, :, slot] = full[:, :, :, f]
        return out.flatten(1, 2)  # channel c * 8 + slot

    # the encoder's output (posterior mode) from the features just taken: conv_out has only its centre tap
    latents = [(torch.einsum("bdthw,cd->bcthw", f, w_out[:C]) + b_out[:C, None, None, None]).float() for f in feats]
    Z = torch.cat([_rows(z) for z in latents])
    T = torch.cat([_rows(stacked_components(clips[i:i + 1])) for i in range(len(clips))])
    W3, b3 = _least_squares(Z, T)
    _set_centre_tap(dec.conv_in, W3.T, b3, dec_causal)

    # 4. decoder conv_out: the decoder's normalised per-frame features → pixel patches
    feats.clear()
    hook = dec.conv_out.register_forward_hook(lambda _m, i, _o: feats.append(_rows(i[0])))
    for z in latents:
        dec(z)
    hook.remove()
    W4, b4 = _least_squares(torch.cat(feats), P)
    _set_centre_tap(dec.conv_out, W4.T, b4, dec_causal)

    return {"patch_variance_kept": _share(sv.S, C - 1), "group_variance_kept": _share(sv2.S, C)}


@torch.no_grad()
def set_latent_statistics(vae, clips: torch.Tensor, whiten: float = 1.0) -> dict:
    """Set the VAE's ``latents_mean`` / ``latents_std`` (the per-channel normalisation that
    :class:`~sana_wm.encoders.vae.LatentCodec` applies after encoding and undoes before decoding) from the raw latents
    of ``clips`` (N, 3, F, H, W) in [-1, 1].

    ``whiten`` = w sets ``latents_std[c] = k · std_c ** w`` with k such that the normalised channels' variances average
    1: w = 1 gives every channel unit variance; w = 0 one common scale (the principal-component order of the variances
    kept). Why it matters for a diffusion model on this codec: a channel's normalised error reaches the pixels
    multiplied by ``latents_std[c]``; with one common scale, the noise a partly trained DiT leaves in the many faint
    channels decodes at full strength, as blocks of the codec's patch size (docs/demo.md).

    Returns:
        {"latent_std": the raw channels' standard deviations (list; floored at :data:`MIN_RELATIVE_STD` of the
        largest), "latent_whiten": w}.
    """
    if not 0.0 <= whiten <= 1.0:
        raise ValueError(f"set_latent_statistics: whiten must be in [0, 1]; got {whiten!r}")
    z = torch.cat([_rows(vae.encode(clips[i:i + 1]).latent_dist.mode().double()) for i in range(len(clips))])
    mean, std = z.mean(0), z.std(0)
    # a channel the clips leave (nearly) empty is not blown up to unit variance: its rounding noise would decode
    std = std.clamp_min(MIN_RELATIVE_STD * float(std.max()))
    k = std.pow(2 * (1 - whiten)).mean().sqrt()
    vae.latents_mean.copy_(mean.to(vae.latents_mean.dtype))
    vae.latents_std.copy_((k * std.pow(whiten)).to(vae.latents_std.dtype))
    return {"latent_std": [round(float(s), 6) for s in std], "latent_whiten": float(whiten)}
