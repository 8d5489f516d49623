"""SANA-WM network definitions (no training, data, parallelism or pipeline code)."""

from .sana_wm import PRESETS, SanaWM, SanaWMBlock, SanaWMConfig

__all__ = ["PRESETS", "SanaWM", "SanaWMBlock", "SanaWMConfig"]
