"""The on/off switch of one family of Triton kernels, shared by the op packages."""

from __future__ import annotations

import os

import torch

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class KernelSwitch:
    """Whether an op family runs its Triton kernels for a tensor: Triton imported (`available`), switched on (the
    environment variable `env` ≠ "0" at import, then `set`), and the tensor on CUDA in a dtype the kernels take.
    The switch is the A/B knob of bench/ and a safety valve if a kernel misbehaves on some card."""

    def __init__(self, env: str, available: bool):
        self.env, self.available = env, available
        self.enabled = os.environ.get(env, "1") != "0"

    def set(self, enabled: bool) -> bool:
        """Turn the kernels on/off process-wide; returns the previous setting."""
        previous, self.enabled = self.enabled, bool(enabled)
        return previous

    def use(self, x: torch.Tensor) -> bool:
        return self.available and self.enabled and x.is_cuda and x.dtype in KERNEL_DTYPES
