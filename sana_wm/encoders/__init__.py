"""Frozen encoders: the LTX-2 latent codec (`vae`) and the Gemma-2 text encoder (`text`).

Exports are resolved lazily so that importing one encoder does not import the other's heavy
dependency (diffusers vs transformers). The tiny presets (`encoders.kind=tiny_random`, tests) live in `encoders.tiny`;
`encoders.pca_init` sets an LTX-2 VAE to the principal components of its clips (the CPU demo's codec).
"""

from __future__ import annotations

import importlib

__all__ = ["LatentCodec", "GemmaTextEncoder", "CHI_PROMPT"]

_WHERE = {"LatentCodec": ".vae", "GemmaTextEncoder": ".text", "CHI_PROMPT": ".text"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
