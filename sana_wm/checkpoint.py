"""Checkpoint I/O for the SANA-WM DiT: NVIDIA's official layout and the diffusers layout, through one key map.

Official layout (`dit/sana_wm_1600m_720p.safetensors`, key list in docs/design/architecture.md §12) is our native
state dict. The loader accepts:
  * optional wrappers: a top-level `generator` or `state_dict` dict (`.pt`/`.pth` training checkpoints);
  * a leading `model.` prefix on every key (FSDP/Accelerate saves), and a stray `pos_embed` (dropped);
  * the diffusers layout (`SanaWMTransformer3DModel`): `t_embedder.linear_1/2` instead of `t_embedder.mlp.0/2`, no
    `y_embedder.y_embedding` (our null-caption table is then kept as initialised, and we say so).
Everything else is strict: a missing or unexpected key, or a shape mismatch, raises an error that lists them and
names the file. Saving writes the official layout with safetensors (contiguous tensors, metadata with the config).

The camera branch's post-UCPE RMS clamp changes what the same weights compute (docs/design/nvidia-fidelity.md), so a
checkpoint records the model's `camera_rms_downscale` and loading refuses one recorded with another value. NVIDIA's
own file records nothing and loads with the value the model was built with.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

# official name ↔ diffusers name (the only renames between the two layouts)
DIFFUSERS_RENAMES = {
    "t_embedder.mlp.0.weight": "t_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "t_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "t_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "t_embedder.linear_2.bias",
}
OFFICIAL_ONLY = ("y_embedder.y_embedding",)  # buffers the diffusers layout lacks
DROPPED = ("pos_embed",)  # fixed tables some NVIDIA checkpoints carry; we rebuild them


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: names the file and the offending keys."""


def to_diffusers_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official → diffusers key names (drops the official-only buffers)."""
    return {DIFFUSERS_RENAMES.get(k, k): v for k, v in state.items() if k not in OFFICIAL_ONLY}


def from_diffusers_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diffusers → official key names."""
    inverse = {v: k for k, v in DIFFUSERS_RENAMES.items()}
    return {inverse.get(k, k): v for k, v in state.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a raw state dict from .safetensors or a torch pickle (.pt/.pth/.bin), unwrapping known wrappers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in ("generator", "state_dict", "model", "module"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors, got {type(state).__name__}")
    return dict(state)


def normalize_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Strip a `model.`/`module.` prefix, drop `pos_embed`, map diffusers names. Returns (state, detected layout)."""
    out = {}
    for k, v in state.items():
        for prefix in ("model.", "module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        if k in DROPPED:
            continue
        out[k] = v
    layout = "diffusers" if any(k in out for k in DIFFUSERS_RENAMES.values()) else "official"
    return (from_diffusers_layout(out) if layout == "diffusers" else out), layout


def recorded_camera_rms_downscale(path: str | os.PathLike) -> str | None:
    """The `camera_rms_downscale` a safetensors checkpoint of ours records (its own metadata key, else the one in its
    `sana_wm_config`); None when it records none (NVIDIA's file, a torch pickle)."""
    if Path(path).suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "camera_rms_downscale" in meta:
        return meta["camera_rms_downscale"]
    try:
        return json.loads(meta.get("sana_wm_config", "{}")).get("camera_rms_downscale")
    except ValueError as err:
        raise CheckpointError(f"{path}: bad sana_wm_config metadata: {err}") from err


def check_camera_rms_downscale(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Refuse a checkpoint recorded with another `camera_rms_downscale` than `model` is configured with."""
    recorded = recorded_camera_rms_downscale(path)
    config = getattr(model, "config", None)
    wanted = getattr(config, "camera_rms_downscale", None)
    if recorded is not None and wanted is not None and recorded != wanted:
        raise CheckpointError(
            f"{path} was saved from a model with camera_rms_downscale={recorded!r} but the model here is configured "
            f"with camera_rms_downscale={wanted!r}; the same weights compute differently under the two, so build the "
            f"model with camera_rms_downscale={recorded!r} (model.camera_rms_downscale in a training config, "
            "model.sana_wm_config in a model root's config.yaml)"
        )


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, strict: bool = True) -> str:
    """Load an official or diffusers-layout SANA-WM checkpoint into `model`. Returns the detected layout.

    Strict: every model key must be present (except `y_embedder.y_embedding` for the diffusers layout, which has no
    null-caption table) with the right shape, and no unknown key may remain. A checkpoint that records another
    `camera_rms_downscale` than `model.config` is refused (`check_camera_rms_downscale`).
    """
    check_camera_rms_downscale(model, path)
    state, layout = normalize_keys(read_state_dict(path))
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (layout == "diffusers" and k in OFFICIAL_ONLY)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    if strict and (missing or unexpected or wrong):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[:3]})")
        raise CheckpointError(f"{path} ({layout} layout) does not fit the model: " + "; ".join(parts))
    if layout == "diffusers":
        log.info("%s: diffusers layout has no null-caption table; keeping y_embedder.y_embedding as is", path)
    result = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    if strict and [k for k in result.missing_keys if k not in OFFICIAL_ONLY]:
        raise CheckpointError(f"{path}: keys not loaded: {result.missing_keys[:5]}")
    return layout


def save_checkpoint(
    model: torch.nn.Module, path: str | os.PathLike, layout: str = "official", dtype: torch.dtype | None = None
) -> Path:
    """Write the model in the official (default) or diffusers layout as safetensors; never a partial file."""
    path = Path(path)
    if layout not in ("official", "diffusers"):
        raise ValueError(f"layout must be 'official' or 'diffusers', got {layout!r}")
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    if layout == "diffusers":
        state = to_diffusers_layout(state)
    meta = {"format": "pt", "layout": layout}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        meta["sana_wm_config"] = json.dumps(config.to_dict())
    if getattr(config, "camera_rms_downscale", None) is not None:
        meta["camera_rms_downscale"] = config.camera_rms_downscale
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)  # atomic: a crash never leaves a truncated checkpoint under the real name
    return path
