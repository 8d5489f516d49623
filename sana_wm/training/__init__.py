"""Training and fine-tuning of SANA-WM with Lightning + Hydra.

Modules:
    module     `SanaWMLitModule` — the rectified-flow objective, optimisation hooks, checkpoint state
    optim      AdamW parameter groups and the warm-up + constant/cosine schedule
    ema        `EMA` of the trained weights
    lora       peft LoRA: attach / save / load / merge adapters (base-hash checked)
    data       `TrainDataModule` (pre-flight checks, mid-epoch resume) over `data.SanaWMDataModule`
    callbacks  throughput/MFU, adapter and export writers, rank agreement, validation videos
    launch     typed config → Lightning objects; `train(cfg)`
    cache      `python -m sana_wm.training.cache`: video shards → cached-latent shards
    export     `python -m sana_wm.training.export`: training checkpoint / base + adapter → official safetensors

Attributes are imported lazily so `import sana_wm.training.lora` does not pull in Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SanaWMLitModule": "module",
    "build_model": "module",
    "EMA": "ema",
    "param_groups": "optim",
    "build_optimizer": "optim",
    "build_scheduler": "optim",
    "add_lora": "lora",
    "save_lora": "lora",
    "load_lora": "lora",
    "merge_lora": "lora",
    "TrainDataModule": "data",
    "train": "launch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'sana_wm.training' has no attribute {name!r}")
