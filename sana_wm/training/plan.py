"""The plan of a distributed run, computed without starting it: `python train.py ... dry_run=true`.

`training_plan(cfg, world)` gives the (dp × cp) mesh, the latent frames and tokens per rank, and the memory per GPU of
an FSDP2 run (parameters, gradients, AdamW states, the checkpointed activations); `cp_exchange_volumes` gives the
bytes each context-parallel exchange moves per block (`bench/cp_volumes.py` tabulates them for the real preset).

Memory model (per GPU, FSDP2 over every rank, batch `data.batch_size` per dp rank):
    master weights 4 B · P / world, gradients 4 B · P_trainable / world, AdamW 8 B · P_trainable / world,
    gathered bf16 weights of the block being computed and the one prefetched: 2 · 2 B · P_block,
    checkpointed activations (model.activation_checkpointing): every block's bf16 input, 2 B · C · tokens_local · depth.
One block's own recompute working set comes on top of the last line and is not modelled here (bench/RESULTS.md
has measured peaks); without checkpointing the activations are not estimated.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cp_exchange_volumes", "training_plan", "latent_grid"]


def latent_grid(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Pixel clip → latent (T, H, W) of the LTX-2 VAE (8× in time after the first frame, 32× in space)."""
    return (frames - 1) // 8 + 1, height // 32, width // 32


def cp_exchange_volumes(config, grid: tuple[int, int, int], cp: int, act_bytes: int = 2) -> list[dict]:
    """Bytes one rank receives per exchange of one block, forward (the backward mirrors each: the same bytes back).

    The worst rank (an interior one) is counted; the clip is right-padded to a multiple of cp, and the softmax K/V
    all-gather moves the padded tokens too. Rows: dict(block, exchange, bytes)."""
    T, H, W = grid
    L = math.ceil(T / cp)
    S, C, Hd, D = H * W, config.hidden_size, config.num_heads, config.head_dim
    K = config.conv_kernel_size
    others = cp - 1
    neighbours = min(2, others)  # an interior rank has two
    f32 = 4
    rows = []
    gdn_main = Hd * (2 * D * D + 2 * D + 2 * D * D) * f32  # numerator (M, h, k: 3 D²) + normaliser (M: D², h, k: D)
    gdn_cam = Hd * 3 * D * D * f32
    rows.append({"block": "GDN", "exchange": "GDN composites, main branch (all-gather, fp32)",
                 "bytes": others * gdn_main})
    rows.append({"block": "GDN", "exchange": "GDN composites, camera branch (all-gather, fp32)",
                 "bytes": others * gdn_cam})
    halo = min(K - 1, L * others)
    rows.append({"block": "GDN", "exchange": f"key short-conv halos, main + camera ({K - 1} frames a side, p2p)",
                 "bytes": 2 * neighbours * halo * S * C * act_bytes})
    rows.append({"block": "all", "exchange": "FFN temporal-conv halo (1 frame a side, p2p)",
                 "bytes": neighbours * (config.t_kernel_size // 2) * S * C * act_bytes})
    kv = 2 * others * L * S * C * 2  # K and V, bf16, every other rank's slice
    rows.append({"block": "softmax", "exchange": "K/V all-gather, main branch (bf16)", "bytes": kv})
    rows.append({"block": "softmax", "exchange": "K/V all-gather, camera branch (bf16)", "bytes": kv})
    return rows


def _mesh(cfg, world: int) -> tuple[int, int]:
    cp = cfg.strategy.cp_size if cfg.strategy.name == "fsdp2" else 1
    if world % cp:
        raise ValueError(f"strategy.cp_size={cp} does not divide {world} GPUs")
    return world // cp, cp


def training_plan(cfg, world: int) -> str:
    """A text plan of `cfg` (a typed TrainConfig) on `world` GPUs."""
    from sana_wm.models import SanaWM

    with torch.device("meta"):
        model = SanaWM.from_preset(cfg.model.preset, **cfg.model.overrides())
    mc = model.config
    P = sum(p.numel() for p in model.parameters())
    P_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    P_block = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
    d = cfg.data
    grid = latent_grid(d.num_frames, d.height, d.width)
    T, H, W = grid
    dp, cp = _mesh(cfg, world)
    L = math.ceil(T / cp)
    tokens = L * H * W
    B = d.batch_size
    shard = world if cfg.strategy.name in ("fsdp2", "fsdp") else 1
    gib = 2**30
    mem = {
        "master weights (fp32)": 4 * P / shard,
        "gradients (fp32)": 4 * P_train / shard,
        "AdamW states (fp32 m, v)": 8 * P_train / shard,
        "gathered bf16 block weights (current + prefetched)": 2 * 2 * P_block if shard > 1 else 0,
    }
    if cfg.model.activation_checkpointing:
        mem["checkpointed activations (bf16 block inputs)"] = 2 * mc.hidden_size * tokens * mc.depth * B
    lines = [f"plan for {world} GPUs: strategy={cfg.strategy.name}, mesh dp={dp} × cp={cp}",
             f"  clip (data.num_frames / height / width; for cached latents set them to the shards' clip): "
             f"{d.num_frames} frames {d.height}×{d.width} → latent grid {grid} = {T * H * W} tokens; "
             f"per rank {L} latent frames ({L * cp - T} padded in the last slice(s)), {tokens} tokens, batch {B}",
             f"  parameters: {P:,} ({P_train:,} trained), largest block {P_block:,}"]
    lines += [f"  {k}: {v / gib:.2f} GiB" for k, v in mem.items()]
    lines.append(f"  total modelled: {sum(mem.values()) / gib:.2f} GiB per GPU"
                 + ("" if cfg.model.activation_checkpointing else " (activations not modelled without checkpointing)"))
    if cp > 1:
        per_block = {}
        for row in cp_exchange_volumes(mc, grid, cp):
            per_block.setdefault(row["block"], 0)
            per_block[row["block"]] += row["bytes"]
        lines.append("  CP exchange per block, forward (received per rank): "
                     + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in per_block.items()))
    return "\n".join(lines)
