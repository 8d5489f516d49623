"""SANA-WM network definitions (no training, data, parallelism or pipeline code)."""

from .sana_wm import CAMERA_RMS_DOWNSCALE_MODES, PRESETS, SanaWM, SanaWMBlock, SanaWMConfig

__all__ = ["CAMERA_RMS_DOWNSCALE_MODES", "PRESETS", "SanaWM", "SanaWMBlock", "SanaWMConfig"]
