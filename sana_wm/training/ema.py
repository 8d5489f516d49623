"""Exponential moving average of trained weights (DiT-style), kept outside the module tree.

The shadow copies live in a plain dict, not in `nn.Module` buffers: they must not be broadcast by DDP, sharded by
FSDP, counted by the optimizer or written into the model's state dict. The LightningModule saves them in the
checkpoint under ``"ema"`` and restores them on resume.

Sharding: the shadows mirror whatever tensors `named_parameters()` returns at the time of the first update — full
tensors under DDP and ZeRO-2 — so the update is always local and needs no communication. Under weight sharding
(FSDP, ZeRO-3) those tensors are shards or empty placeholders that a rank-0 checkpoint cannot hold whole, so the
config refuses EMA with those strategies (`sana_wm.training.config.validate_config`). Shadows are float32 whatever the training dtype, so small updates (1 − decay ≈ 1e-4) are not lost
to bf16 rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from sana_wm.parallel import plain_name

__all__ = ["EMA"]


class EMA:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ over the trainable parameters of a model.

    Args:
        decay: per update, in [0, 1).
    """

    def __init__(self, decay: float = 0.9999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.shadow: dict[str, torch.Tensor] = {}
        self.num_updates = 0

    @staticmethod
    def _params(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in model.named_parameters():
            if p.requires_grad:
                yield plain_name(name), p  # EMA keys must not depend on wrapping

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start the average at the current weights."""
        self.shadow = {name: p.detach().float().clone() for name, p in self._params(model)}
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """One EMA step towards the current weights (initialises on the first call)."""
        if not self.shadow:
            self.reset(model)
            return
        d = self.decay if decay is None else decay
        for name, p in self._params(model):
            s = self.shadow.get(name)
            if s is None:
                raise KeyError(f"EMA has no shadow for parameter {name!r}; the set of trained parameters changed")
            s.lerp_(p.detach().to(s.dtype), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's trainable parameters with the EMA weights (cast to each parameter's dtype)."""
        for name, p in self._params(model):
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module):
        """Context manager: EMA weights inside, the training weights restored on exit (for validation/export)."""
        if not self.shadow:
            yield model
            return
        backup = {name: p.detach().clone() for name, p in self._params(model)}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in self._params(model):
                    p.copy_(backup[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.shadow = {k: v.to(device) if device is not None else v for k, v in state["shadow"].items()}

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self
