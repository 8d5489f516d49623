"""AdamW with parameter groups, and the warm-up + constant/cosine learning-rate schedule.

Parameter groups (the released recipe has weight decay 0; this only matters for recipes that turn decay on): weight
decay applies to weight matrices; biases, norm scales, the AdaLN `scale_shift_table`s and gate parameters (GDN
`A_log`, `dt_bias`, `gate_proj`, `output_gate`, …) are excluded — decaying a gate or a norm towards 0 changes what the
layer computes rather than regularising it. Frozen parameters (checkpoint-only tensors, the LoRA base) are left out.

The schedule is a `LambdaLR` over optimizer steps: linear warm-up from 0 to the base lr over `warmup_steps`, then
constant, or cosine down to `min_lr_ratio`·lr at `decay_steps`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from sana_wm.training.config import OptimConfig

__all__ = ["param_groups", "build_optimizer", "LRSchedule", "build_scheduler"]


def _is_no_decay(name: str, param: torch.Tensor, keywords: Iterable[str]) -> bool:
    # 1-D tensors are biases, norm scales or per-head gate vectors in this model; keywords catch the 2-D ones
    # (scale_shift_table, gate projections).
    return param.ndim <= 1 or any(k in name for k in keywords)


def param_groups(model: nn.Module, weight_decay: float, no_decay: Iterable[str]) -> list[dict]:
    """Split the trainable parameters of `model` into a decayed and a non-decayed group.

    Returns:
        ``[{"params": [...], "weight_decay": wd, "names": [...]}, {"params": [...], "weight_decay": 0.0, ...}]``;
        empty groups are dropped. Parameter order follows `named_parameters()` (deterministic).
    """
    no_decay = tuple(no_decay)
    decay, keep = ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        names, params = keep if _is_no_decay(name, p, no_decay) else decay
        names.append(name)
        params.append(p)
    groups = []
    if decay[1]:
        groups.append({"params": decay[1], "weight_decay": float(weight_decay), "names": decay[0]})
    if keep[1]:
        groups.append({"params": keep[1], "weight_decay": 0.0, "names": keep[0]})
    if not groups:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameters (all requires_grad=False); with LoRA, check that "
            "lora.target_modules matches some module names"
        )
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW(lr, betas, eps) over `param_groups(model, cfg.weight_decay, cfg.no_decay)`."""
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay)
    # `names` is bookkeeping for logs/tests; torch keeps unknown group keys in the state dict, which is harmless.
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=cfg.foreach
    )


class LRSchedule:
    """Multiplier of the base lr at optimizer step `step` (picklable, so LambdaLR can save it).

    Args:
        warmup_steps: linear ramp 0 → 1 over this many steps (step 0 already gets 1/warmup_steps, never 0).
        kind: ``constant`` or ``cosine``.
        decay_steps: step at which the cosine reaches `min_lr_ratio` (it stays there afterwards).
        min_lr_ratio: floor of the cosine, as a fraction of the base lr.
    """

    def __init__(self, warmup_steps: int = 0, kind: str = "constant", decay_steps: int | None = None,
                 min_lr_ratio: float = 0.0):
        if kind not in ("constant", "cosine"):
            raise ValueError(f"optim.scheduler={kind!r}; expected 'constant' or 'cosine'")
        if kind == "cosine" and (decay_steps is None or decay_steps <= warmup_steps):
            raise ValueError(
                f"a cosine schedule needs decay_steps > warmup_steps (got decay_steps={decay_steps}, "
                f"warmup_steps={warmup_steps}); set optim.decay_steps or trainer.max_steps"
            )
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.decay_steps = decay_steps
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (self.decay_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int | None = None):
    """LambdaLR(LRSchedule) stepped once per optimizer step; decay_steps defaults to `max_steps`."""
    decay_steps = cfg.decay_steps if cfg.decay_steps is not None else (max_steps if max_steps and max_steps > 0 else None)
    schedule = LRSchedule(cfg.warmup_steps, cfg.scheduler, decay_steps, cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
