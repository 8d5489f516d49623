"""SANA-WM: train, fine-tune, annotate for, evaluate and run the camera-controlled video world model.

Public surface:
    SanaWM, SanaWMConfig, PRESETS       the DiT (`SanaWM.from_preset("sana_wm_1600m_720p" | "tiny")`)
    save_checkpoint, load_checkpoint    official (NVIDIA) safetensors layout in, official or diffusers layout out/in
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .models import PRESETS, SanaWM, SanaWMConfig

__version__ = "0.1.0"
__all__ = ["PRESETS", "SanaWM", "SanaWMConfig", "load_checkpoint", "save_checkpoint", "__version__"]
