"""A tiny random LTX-2 refiner with the release's class layout, for tests and `bench/generate.py --quick`."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def tiny_refiner_components(latent_channels: int = 8, seed: int = 0, text_max_sequence_length: int = 64):
    """Random, CPU-sized stand-ins with the real class layout: (transformer, connectors, text_encoder, tokenizer).

    Gemma-3 with 2 layers of width 32 (+ a 1-layer SigLIP tower so ``Gemma3ForConditionalGeneration`` loads like
    the release), connectors mapping 32 × 3 stacked states to 32 channels with 16 registers, a 2-layer refiner
    transformer of width 16. ``text_max_sequence_length`` must be a multiple of the 16 registers.
    """
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    from sana_wm.encoders.tiny import tiny_tokenizer

    if text_max_sequence_length % 16:
        raise ValueError("text_max_sequence_length must be a multiple of 16 (the tiny connectors' registers)")
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_cfg = Gemma3TextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
            sliding_window=64, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        )
        vision_cfg = SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
        )
        text_encoder = Gemma3ForConditionalGeneration(
            Gemma3Config(
                text_config=text_cfg.to_dict(), vision_config=vision_cfg.to_dict(), mm_tokens_per_image=4,
                image_token_index=5, boi_token_index=6, eoi_token_index=7,
            )
        ).eval()
        connectors = LTX2TextConnectors(
            caption_channels=32, text_proj_in_factor=3,
            video_connector_num_attention_heads=2, video_connector_attention_head_dim=16,
            video_connector_num_layers=1, video_connector_num_learnable_registers=16,
            audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=16,
            audio_connector_num_layers=1, audio_connector_num_learnable_registers=16,
            video_hidden_dim=16, audio_hidden_dim=16,
        ).eval()
        transformer = SanaWMLTX2RefinerTransformer3DModel(
            in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=2, attention_head_dim=8,
            cross_attention_dim=16, num_layers=2, caption_channels=32, audio_in_channels=8, audio_out_channels=8,
            audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16,
        ).eval()
    return transformer, connectors, text_encoder, tokenizer


def save_tiny_refiner(directory: str | os.PathLike, latent_channels: int = 8, seed: int = 0,
                      text_max_sequence_length: int = 64) -> Path:
    """Write :func:`tiny_refiner_components` in the release layout ``<directory>/{transformer,connectors,
    text_encoder,tokenizer}/`` plus a ``model_index.json`` carrying ``text_max_sequence_length``."""
    import json

    root = Path(directory)
    transformer, connectors, text_encoder, tokenizer = tiny_refiner_components(
        latent_channels, seed, text_max_sequence_length
    )
    transformer.save_pretrained(root / "transformer")
    connectors.save_pretrained(root / "connectors")
    text_encoder.save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "model_index.json").write_text(json.dumps({"text_max_sequence_length": text_max_sequence_length}))
    return root
