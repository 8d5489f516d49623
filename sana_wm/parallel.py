"""The one place where parallelism and memory tricks are applied to a SANA-WM model, from outside the model code.

`parallelize(model, ...)` applies, in order: per-block activation checkpointing (non-reentrant), per-block
`torch.compile`, and FSDP2 sharding (`fully_shard` per block, then the root) over a device mesh. Lightning's
`ModelParallelStrategy` calls it from `LightningModule.configure_model`; DDP / FSDP1 / DeepSpeed strategies wrap the
model themselves and only use the checkpointing part.

Not implemented yet: context parallelism over the latent-time axis (REFERENCE §7.3: distributed prefix scan of the
GDN states, halo exchange of the short convs). `parallelize` raises if asked for it rather than silently ignoring it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no `blocks` ModuleList to parallelise")
    return blocks


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute each block in the backward pass (non-reentrant). State-dict keys are unchanged."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    blocks = _blocks(model)
    for i, block in enumerate(blocks):
        if not getattr(block, "_sana_checkpointed", False):
            wrapped = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
            wrapped._sana_checkpointed = True
            blocks[i] = wrapped
    return model


def apply_compile(model: nn.Module, **compile_kwargs) -> nn.Module:
    """Compile each block separately: identical blocks share one graph, and the Python glue stays eager."""
    blocks = _blocks(model)
    for i, block in enumerate(blocks):
        blocks[i] = torch.compile(block, **compile_kwargs)
    return model


def apply_fsdp(model: nn.Module, mesh, param_dtype=torch.bfloat16, reduce_dtype=torch.float32) -> nn.Module:
    """FSDP2: shard every block, then the root (bf16 compute, fp32 gradient reduction, fp32 master weights)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for block in _blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    return model


def parallelize(
    model: nn.Module,
    *,
    activation_checkpointing: bool = False,
    compile: bool = False,
    fsdp_mesh=None,
    context_parallel: int = 1,
    param_dtype: torch.dtype = torch.bfloat16,
) -> nn.Module:
    """Apply checkpointing → compile → FSDP2 to `model` in place and return it."""
    if context_parallel != 1:
        raise NotImplementedError(
            f"context_parallel={context_parallel}: context parallelism is not implemented yet; use 1"
        )
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model)
    if fsdp_mesh is not None:
        apply_fsdp(model, fsdp_mesh, param_dtype=param_dtype)
    log.info("parallelize: checkpointing=%s compile=%s fsdp=%s", activation_checkpointing, compile, fsdp_mesh)
    return model
