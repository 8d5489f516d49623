"""Context parallelism (CP) over latent frames, installed on a SANA-WM model from outside its code.

`apply_context_parallel(model, group)` (called by `sana_wm.parallel.parallelize(cp_mesh=...)`) makes every rank of a
CP group compute one contiguous slice of the clip's latent frames. Every rank of the group calls the model with the
same whole sample; the model then returns this rank's slice of the velocity, [B, C_out, L, H, W], L = ⌈T / size⌉
(the clip right-padded to size·L frames, the padding masked out of every frame-mixing op). What is installed:

* a forward pre-hook on the model that pads and slices its frame-indexed inputs (latents, per-frame timesteps,
  camera poses, Plücker maps); the ray frames and Plücker embeddings the model derives from them are per frame, so
  computing them from the slice equals slicing the global ones;
* a wrapper around each block's forward that gives it RoPE tables cut from the whole clip's (a slice's own table
  would restart the time positions at 0) and makes the block's frame-mixing ops frame-parallel while it runs
  (also when activation checkpointing re-runs it in the backward pass; the slice layout is pinned on the forward's
  attention context, so a recompute sees the layout of its own forward);
* the frame-mixing ops, swapped in the attention module for dispatchers that fall through to the plain ops outside
  a CP block: the bidirectional GDN scans of both branches (`sana_wm.ops.cp`: one all-gather of per-slice state
  composites, local correction), the keys' short conv (a halo of K−1 frames from the neighbours), softmax attention
  (K and V all-gathered, padded keys dropped, so every query sees every real frame); and each FFN's temporal conv,
  wrapped per block instance (a one-frame halo).

The loss: `ContextParallel.shard_frames` slices a target like the inputs and `frame_mask` marks the real frames; a
loss summed over this rank's real tokens and divided by the whole clip's token count is this rank's share, and
summing the parameter gradients over the group (FSDP2 over a mesh that includes the CP ranks reduces over them)
gives the whole clip's. `gather_frames` gives the whole output (for a loss every rank computes identically).

With torch.compile: blocks compiled before CP is installed (`parallelize`'s order) trace the dispatchers and the
collectives into their graphs (Dynamo's point-to-point tracing switched on for the halos; the CP block wrapper, which
pushes the layout, stays eager around the compiled forward). Compiled blocks that are also checkpointed are refused
(`check_compile_checkpointing` says why; a one-rank group, which runs its blocks as they are, is allowed).

At cp_size 1 (`parallelize` installs nothing then; `apply_context_parallel(..., force=True)` installs everything over
the one rank) every block runs as the plain model's: the block wrapper decides it, once (`_wrap_block`), and the
frame helpers return their input (a one-rank slice is the whole clip, unpadded).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import torch
import torch.distributed as dist
from torch import nn

from sana_wm.ops.cp import (
    FrameShard,
    cp_bidirectional_delta,
    cp_bidirectional_gdn,
    gather_frames,
    gather_sum,
    halo_exchange,
)

__all__ = ["ContextParallel", "apply_context_parallel", "check_compile_checkpointing", "context_parallel_of"]

# The frame layout of the CP block running now (innermost last); empty outside CP blocks.
_ACTIVE: list[FrameShard] = []


def _cp_gdn(shard, orig, *args, **kwargs):
    return cp_bidirectional_gdn(shard, *args, **kwargs)


def _cp_delta(shard, orig, *args, **kwargs):
    return cp_bidirectional_delta(shard, *args, **kwargs)


def _cp_short_conv(shard, orig, x, weight):
    """x [B, L, S, C]: the K−1 frames either side from the neighbours, the plain conv, the slice cut back out."""
    halo = weight.shape[1] - 1
    ext = halo_exchange(shard.mask_frames(x, 1), shard, halo, 1)
    return orig(ext, weight).narrow(1, halo, shard.frames).contiguous()


def _cp_sdpa(shard, orig, q, k, v, scale, to_bf16):
    """q, k, v [B, N_local, Hd, D]: K and V of every rank (in bf16 when the attention casts to it: half the bytes),
    the padded frames' keys dropped, then the plain attention of the local queries."""
    if to_bf16:
        k, v = k.to(torch.bfloat16), v.to(torch.bfloat16)
    every = gather_sum(torch.stack([k, v]), shard)  # [size, 2, B, N_local, Hd, D]
    kv = every.permute(1, 2, 0, 3, 4, 5).flatten(2, 3)  # [2, B, size·N_local, Hd, D]
    real = shard.valid * (k.shape[1] // shard.frames)
    return orig(q, kv[0, :, :real], kv[1, :, :real], scale, to_bf16)


# Names in `sana_wm.models.attention` that CP blocks run frame-parallel, and their CP versions.
_DISPATCHED = {"bidirectional_gdn": _cp_gdn, "bidirectional_delta": _cp_delta,
               "bidirectional_short_conv": _cp_short_conv, "_sdpa": _cp_sdpa}


def _install_dispatchers() -> None:
    """Swap each `_DISPATCHED` name of the attention module for a dispatcher (idempotent, process-wide; outside a CP
    block it calls the plain op, so models without CP in the same process are unaffected)."""
    from sana_wm.models import attention

    for name, cp_impl in _DISPATCHED.items():
        orig = getattr(attention, name, None)
        if orig is None:
            raise RuntimeError(f"context parallelism: sana_wm.models.attention has no `{name}` to make "
                               f"frame-parallel; update sana_wm/context_parallel.py::_DISPATCHED")
        if getattr(orig, "_sana_cp_plain", None) is not None:
            continue

        def dispatch(*args, _orig=orig, _cp=cp_impl, **kwargs):
            if _ACTIVE:
                return _cp(_ACTIVE[-1], _orig, *args, **kwargs)
            return _orig(*args, **kwargs)

        functools.update_wrapper(dispatch, orig)
        dispatch._sana_cp_plain = orig
        setattr(attention, name, dispatch)


def _pad_frames(x: torch.Tensor, dim: int, frames: int, edge: bool) -> torch.Tensor:
    """x right-padded along `dim` to `frames` with zeros or (edge) copies of its last frame."""
    pad = frames - x.shape[dim]
    if pad == 0:
        return x
    if edge:
        tail = x.narrow(dim, x.shape[dim] - 1, 1)
        return torch.cat([x, tail.expand(*[pad if d == dim % x.dim() else -1 for d in range(x.dim())])], dim=dim)
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class ContextParallel:
    """The CP state of one model: its group and the frame layout of the latest forward.

    group: the CP process group (all ranks holding slices of the same clip)."""

    def __init__(self, model: nn.Module, group):
        self.group = group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        self.head_dim = model.config.head_dim
        self.shard: FrameShard | None = None
        self._tables: dict = {}

    def layout(self, frames: int) -> FrameShard:
        """The slice layout of a clip of `frames` latent frames; a clip shorter than the group is refused (every rank
        checks its own input, before any collective)."""
        if frames < self.size:
            raise ValueError(f"context parallelism over {self.size} ranks needs at least {self.size} latent frames; "
                             f"got a clip of {frames} (lower parallel.cp_size or train on longer clips)")
        return FrameShard(self.group, self.rank, self.size, math.ceil(frames / self.size), frames)

    def shard_frames(self, x: torch.Tensor, dim: int, edge: bool = False):
        """This rank's slice (along `dim`) of a whole-clip tensor, padded with zeros or (edge) its last frame; x itself
        in a one-rank group (its slice is the whole clip, unpadded: `FrameShard` checks it)."""
        s = self.shard
        if x.shape[dim] != s.valid:
            raise ValueError(f"context parallelism: a whole-clip tensor of {s.valid} frames along dim {dim} expected "
                             f"(the model's latest input), got shape {list(x.shape)}")
        if s.size == 1:
            return x
        x = _pad_frames(x, dim, s.size * s.frames, edge)
        return x.narrow(dim, s.start, s.frames)

    def gather_frames(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The whole clip's real frames from each rank's slice (see `sana_wm.ops.cp.gather_frames`)."""
        return gather_frames(x, self.shard, dim)

    def frame_mask(self, device, dtype=torch.float32) -> torch.Tensor:
        """[L]: 1 on this rank's real frames, 0 on padding."""
        return self.shard.frame_mask(device, dtype)

    def tables(self, ctx, shard: FrameShard) -> dict:
        """The attention context's RoPE tables cut from the whole (padded) clip's, for this rank's tokens."""
        from sana_wm.models.rope import cached_camera_table, cached_rope_table

        T, H, W = ctx.grid
        device = ctx.rope.cos.device
        key = (shard.size * T, H, W, shard.rank, device, ctx.cam_rope is not None)
        if key not in self._tables:
            full = (shard.size * T, H, W)
            rows = slice(shard.rank * T * H * W, (shard.rank + 1) * T * H * W)
            cut = lambda tab: type(tab)(tab.cos[rows], tab.sin[rows])  # noqa: E731
            out = {"rope": cut(cached_rope_table(full, self.head_dim, device))}
            if ctx.cam_rope is not None:
                out["cam_rope"] = cut(cached_camera_table(full, self.head_dim, device))
            self._tables = {key: out}  # one clip shape at a time; a new one replaces it
        return self._tables[key]

    # -- installed hooks ---------------------------------------------------------------------------------------------
    def _model_pre_hook(self, signature, module, args, kwargs):
        bound = signature.bind(module, *args, **kwargs)
        a = bound.arguments
        x = a["x"]
        if x.dim() != 5:
            raise ValueError(f"x: expected [B, C, T, H, W], got {list(x.shape)}")
        T = x.shape[2]
        self.shard = self.layout(T)
        a["x"] = self.shard_frames(x, 2)
        t = torch.as_tensor(a["timestep"], device=x.device)
        if t.dim() == 3 and t.shape[1] == 1:
            t = t[:, 0]
        if t.dim() == 2 and t.shape[1] == T and T > 1:  # one timestep per frame; [B] and [B, 1] broadcast as they are
            t = self.shard_frames(t, 1, edge=True)
        a["timestep"] = t
        if a.get("camera_conditions") is not None:  # padded frames repeat the last pose: finite rays, never read
            a["camera_conditions"] = self.shard_frames(a["camera_conditions"], 1, edge=True)
        if a.get("chunk_plucker") is not None:
            a["chunk_plucker"] = self.shard_frames(a["chunk_plucker"], 2)
        return tuple(bound.args[1:]), dict(bound.kwargs)

    def _wrap_block(self, block: nn.Module) -> None:
        orig = block.forward
        sig = inspect.signature(orig)

        @functools.wraps(orig)
        def forward(*args, **kwargs):
            if self.size == 1:
                # The one place where CP sends a one-rank group to the plain ops. Such a group has no neighbour: every
                # incoming GDN state and halo frame is zero and the K/V gather returns the rank's own, so each
                # frame-parallel op is exactly its plain op (the composite scan with zero incoming states is the
                # plain scan, only slower), and the whole clip's RoPE tables are the block's own. So the block runs
                # as it is, on the fused kernels and with no collective: with no CP block active, the dispatchers
                # and the FFN's temporal-conv wrapper fall through to the plain ops.
                return orig(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            ctx = bound.arguments["ctx"]
            # Pinned on the forward's context, so that a checkpointed block recomputed in the backward pass uses the
            # layout of its own forward even if another forward ran in between (gradient accumulation).
            shard = ctx.__dict__.setdefault("_sana_cp_shard", self.shard)
            bound.arguments["ctx"] = dataclasses.replace(ctx, **self.tables(ctx, shard))
            _ACTIVE.append(shard)
            try:
                return orig(*bound.args, **bound.kwargs)
            finally:
                _ACTIVE.pop()

        forward._sana_cp = True
        block.forward = forward

    @staticmethod
    def _wrap_temporal(mlp: nn.Module) -> None:
        orig = mlp._temporal
        halo = mlp.t_conv.kernel_size[0] // 2

        @functools.wraps(orig)
        def temporal(y):  # y [B, L, S, C]
            if not _ACTIVE:
                return orig(y)
            shard = _ACTIVE[-1]
            return orig(halo_exchange(shard.mask_frames(y, 1), shard, halo, 1)).narrow(1, halo, shard.frames)

        mlp._temporal = temporal


def check_compile_checkpointing(cp_size: int, compiled: bool, checkpointed: bool, settings: str,
                                error: type[Exception] = NotImplementedError) -> None:
    """Refuse context parallelism over two or more ranks on blocks that are both compiled and checkpointed, before
    anything is applied and before any collective (every rank checks the same settings). The one copy of this rule:
    the config check (`sana_wm.training.config`), `sana_wm.parallel.parallelize` and `apply_context_parallel` (blocks
    compiled and checkpointed by hand) call it. `settings` names the offending settings as the caller's user wrote
    them; `error` the exception type to raise.

    Why: with torch 2.13 Dynamo refuses the CP block wrapper's side effects (the layout pushed and pinned) inside a
    compiled checkpoint region, and with the wrapper outside it the recomputed frame exchanges gave NaN gradients
    (bench/RESULTS.md). A one-rank group is allowed: its block wrapper runs the block as it is (`_wrap_block`)."""
    if cp_size > 1 and compiled and checkpointed:
        raise error(f"{settings} is not supported (torch 2.13: Dynamo refuses the CP block wrapper's side effects "
                    "inside a compiled checkpoint region, and with the wrapper outside it the recomputed frame "
                    "exchanges gave NaN gradients; see sana_wm/context_parallel.py); turn off compile or activation "
                    "checkpointing")


def _inner_blocks(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no `blocks` ModuleList to make context-parallel")
    return [getattr(b, "_checkpoint_wrapped_module", b) for b in blocks]


def apply_context_parallel(model: nn.Module, group, force: bool = False) -> nn.Module:
    """Install frame-parallel execution over the process group `group` (or a 1-D DeviceMesh) on `model` in place;
    idempotent. A group of one rank installs nothing (the plain model is the CP model at size 1) unless `force`:
    then the hooks, wrappers and dispatchers are installed over the one rank and its blocks run the plain ops with no
    collective (`_wrap_block`); `bench/dit_step.py`'s cp1 case times that against the plain model, and tests/models
    check it gives the plain model's output and gradients bit for bit."""
    if hasattr(group, "get_group"):  # a DeviceMesh
        group = group.get_group()
    if getattr(model, "_sana_context_parallel", None) is not None:
        return model
    size = dist.get_world_size(group)
    if size == 1 and not force:
        return model
    for name in ("config", "blocks"):
        if not hasattr(model, name):
            raise TypeError(f"context parallelism needs a SanaWM-like model with `{name}`; got {type(model).__name__}")
    compiled = [i for i, b in enumerate(model.blocks) if "forward" in vars(b)]  # `sana_wm.parallel.apply_compile`
    checkpointed = [i for i, b in enumerate(model.blocks) if hasattr(b, "_checkpoint_wrapped_module")]
    both = bool(set(compiled) & set(checkpointed))
    check_compile_checkpointing(size, both, both, f"context parallelism ({size} ranks) over compiled, checkpointed blocks")
    if compiled:
        # The halo exchanges are point-to-point sends and receives, which Dynamo traces only when told to (torch
        # 2.13; without it: a graph break at each exchange, and fullgraph=True fails). The all-gathers trace as they
        # are. The CP block wrapper stays outside the compiled forward (compile comes first, see `parallelize`).
        # Older torch (2.11) has no such switch and graph-breaks at the exchanges instead.
        if hasattr(torch._dynamo.config, "enable_p2p_compilation"):
            torch._dynamo.config.enable_p2p_compilation = True
    cp = ContextParallel(model, group)
    _install_dispatchers()
    for block in _inner_blocks(model):
        if not hasattr(getattr(block, "mlp", None), "_temporal"):
            raise TypeError(f"context parallelism: {type(block).__name__}.mlp has no `_temporal` (the FFN's temporal "
                            "conv) to give a frame halo; update sana_wm/context_parallel.py")
        cp._wrap_block(block)
        cp._wrap_temporal(block.mlp)
    signature = inspect.signature(type(model).forward)
    model.register_forward_pre_hook(functools.partial(cp._model_pre_hook, signature), with_kwargs=True)
    model._sana_context_parallel = cp
    return model


def context_parallel_of(model: nn.Module) -> ContextParallel | None:
    """The `ContextParallel` installed on `model` (None without CP)."""
    return getattr(model, "_sana_context_parallel", None)
