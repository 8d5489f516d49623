"""SANA-WM: train, fine-tune, annotate for, evaluate and run the camera-controlled video world model.

Public surface:
    SanaWM, SanaWMConfig, PRESETS       the DiT (`SanaWM.from_preset("sana_wm_1600m_720p" | "tiny")`)
    save_checkpoint, load_checkpoint    official (NVIDIA) safetensors layout in, official or diffusers layout out/in
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Resolved on first use, so that `import sana_wm.camera` (annotation, data) does not build the model modules.
_EXPORTS = {
    "PRESETS": ".models",
    "SanaWM": ".models",
    "SanaWMConfig": ".models",
    "load_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
}
__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'sana_wm' has no attribute {name!r}")
