"""The encoders' `tiny` presets: seeded, randomly initialised LTX-2 VAE, Gemma-2 and tokenizer.

Used by `encoders.kind=tiny_random` (CPU training configs), the demo's text encoder and the tests, the way
`SanaWM`'s `tiny` preset is: a real architecture at a size a laptop CPU runs.

Everything is built in-process and offline: an LTX-2 VAE with a few thousand parameters per block,
a 2-layer Gemma-2, and a byte-level BPE tokenizer trained on a handful of strings. Shapes and
conventions match the real models (32×/8× compression by default, BOS-prefixed right-padded tokenisation);
only the sizes and the weights differ. Builders are seeded, so two calls give identical models.

Helpers ``save_tiny_vae`` / ``save_tiny_text_encoder`` write the diffusers layout
(``<dir>/vae``, ``<dir>/text_encoder``, ``<dir>/tokenizer``) that
:meth:`LatentCodec.from_pretrained` and :meth:`GemmaTextEncoder.from_pretrained` read.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .text import CHI_PROMPT

__all__ = [
    "VAE_LAYOUTS",
    "tiny_ltx2_vae",
    "save_tiny_vae",
    "tiny_tokenizer",
    "tiny_gemma2",
    "save_tiny_text_encoder",
]

# Gemma's special-token ids: <pad>=0, <eos>=1, <bos>=2, <unk>=3.
_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]

_TOKENIZER_CORPUS = [
    CHI_PROMPT,
    "A car driving across a vast desert plain at golden hour.",
    "A first-person walk through a quiet forest path with tall pine trees and soft morning light.",
    "The camera moves forward along a busy city street at dusk, neon signs and wet asphalt.",
    "A snowy mountain village, wooden houses, smoke rising from chimneys, clear blue sky.",
]


#: Spatial compression → (encoder downsample_type, decoder upsample_type) of a four-stage LTX-2 VAE with a 4×
#: patchifier and 8× temporal compression. 32 is the released layout; 16 and 8 trade stages that halve H and W for
#: stages that halve only T, so the latent grid is finer while the temporal layout (which the DiT's 8-frame
#: chunk-Plücker input assumes) is unchanged.
VAE_LAYOUTS: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    32: (("spatial", "temporal", "spatiotemporal", "spatiotemporal"), ("spatiotemporal", "spatiotemporal", "spatiotemporal")),
    16: (("spatial", "temporal", "spatiotemporal", "temporal"), ("spatiotemporal", "spatiotemporal", "temporal")),
    8: (("spatial", "temporal", "temporal", "temporal"), ("spatiotemporal", "temporal", "temporal")),
}


def tiny_ltx2_vae(
    latent_channels: int = 8,
    *,
    scaling_factor: float = 1.0,
    seed: int = 0,
    random_stats: bool = True,
    spatial_compression: int = 32,
    encoder_spatial_padding_mode: str = "zeros",
):
    """A ~2 M-parameter ``AutoencoderKLLTX2Video`` with 8× temporal and ``spatial_compression``× spatial compression.

    The decoder channels must double per stage: its up-sampling halves them (docs/design/libraries.md §1), so its
    last stage works with half of its first stage's 16 channels. The compression ratios are passed
    explicitly (diffusers would otherwise record 64/16).

    Args:
        latent_channels: C of the latent (128 for the real VAE).
        scaling_factor: the config's ``scaling_factor``.
        seed: weight-initialisation seed.
        random_stats: fill ``latents_mean`` / ``latents_std`` with non-trivial per-channel values (the
            real VAE ships them) so that tests exercise the normalisation; False keeps 0 / 1.
        spatial_compression: 32 (the real LTX-2 layout), 16 or 8 (see :data:`VAE_LAYOUTS`).
        encoder_spatial_padding_mode: ``"zeros"`` (the LTX-2 config) or ``"reflect"``. Trained from scratch at this
            size, a zero-padded encoder stalls near MSE 0.1 (it cannot even overfit one batch) while a reflect-padded
            one keeps learning (bench/RESULTS.md, "The CPU demo's codec").

    Returns:
        ``diffusers.AutoencoderKLLTX2Video`` in eval mode, float32, on CPU.
    """
    from diffusers import AutoencoderKLLTX2Video

    if spatial_compression not in VAE_LAYOUTS:
        raise ValueError(f"spatial_compression must be one of {sorted(VAE_LAYOUTS)}; got {spatial_compression!r}")
    down, up = VAE_LAYOUTS[spatial_compression]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLLTX2Video(
            latent_channels=latent_channels,
            block_out_channels=(16, 32, 64, 128),
            decoder_block_out_channels=(16, 32, 64),
            encoder_spatial_padding_mode=encoder_spatial_padding_mode,
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            downsample_type=down,
            upsample_type=up,
            scaling_factor=scaling_factor,
            spatial_compression_ratio=spatial_compression,
            temporal_compression_ratio=8,
        )
        if random_stats:
            g = torch.Generator().manual_seed(seed + 1)
            vae.latents_mean.copy_(0.5 * torch.randn(latent_channels, generator=g))
            vae.latents_std.copy_(0.5 + torch.rand(latent_channels, generator=g))
    return vae.eval()


def save_tiny_vae(directory: str | os.PathLike, **kwargs) -> Path:
    """Build :func:`tiny_ltx2_vae` (``kwargs`` forwarded) and save it to ``<directory>/vae``; returns that path."""
    out = Path(directory) / "vae"
    tiny_ltx2_vae(**kwargs).save_pretrained(out)
    return out


def tiny_tokenizer(vocab_size: int = 384, corpus: list[str] | None = None):
    """A byte-level BPE tokenizer trained in-process, wrapped as a transformers fast tokenizer.

    It behaves like Gemma's where it matters here: it prepends ``<bos>`` (id 2) to every text, pads
    with ``<pad>`` (id 0), and can encode any string (byte-level, no unknown tokens).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or _TOKENIZER_CORPUS, trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_gemma2(hidden: int = 32, *, vocab_size: int = 384, seed: int = 0, max_positions: int = 1024):
    """A 2-layer ``Gemma2ForCausalLM`` (hidden ``hidden``, 2 heads of 16, 1 KV head), eager attention.

    ``max_positions`` must exceed the chi-prompt window (prefix tokens + 298), about 600 with
    :func:`tiny_tokenizer`.
    """
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=max_positions,
        sliding_window=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma2ForCausalLM(cfg)
    return model.eval()


def save_tiny_text_encoder(directory: str | os.PathLike, hidden: int = 32, seed: int = 0) -> Path:
    """Save a tiny Gemma-2 to ``<directory>/text_encoder`` and its tokenizer to ``<directory>/tokenizer``.

    Returns ``directory``, which :meth:`GemmaTextEncoder.from_pretrained` accepts.
    """
    root = Path(directory)
    tokenizer = tiny_tokenizer()
    tiny_gemma2(hidden, vocab_size=len(tokenizer), seed=seed).save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    return root
