"""`python -m sana_wm.training.export`: write a full DiT checkpoint in the official (or diffusers) layout.

Two sub-commands:

``checkpoint``  a Lightning training checkpoint (``last.ckpt``, ``best.ckpt``, a DeepSpeed folder) → safetensors.
                EMA weights are used when the checkpoint has them (``--no-ema`` for the raw weights). A LoRA run's
                checkpoint holds adapters only: the base comes from the run's ``model.init_checkpoint`` or ``--base``
                and the adapters are merged.
``merge``       ``--base`` full checkpoint + ``--adapter`` LoRA safetensors → merged safetensors. The adapter's
                recorded base must be this base: the same tensors (names, dtypes, shapes, values), whatever the
                file's header.

The written file loads with `sana_wm.checkpoint.load_checkpoint` / `infer.py --checkpoint`; its metadata carries
the model config.

Examples::

    python -m sana_wm.training.export checkpoint outputs/run/checkpoints/last.ckpt --out dit.safetensors
    python -m sana_wm.training.export merge --base models/.../dit/sana_wm_1600m_720p.safetensors \\
        --adapter outputs/lora/adapters/last.safetensors --out merged.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from sana_wm.checkpoint import CheckpointError, save_checkpoint
from sana_wm.models import PRESETS, SanaWM, SanaWMConfig
from sana_wm.parallel import plain_name

from .lora import LoraError, add_lora, checkpoint_digest, load_lora, merge_lora, read_lora, same_base

__all__ = ["model_from_checkpoint_file", "infer_preset", "export_training_checkpoint", "merge_adapter", "main"]


def _config_from_safetensors(path: str | os.PathLike) -> SanaWMConfig | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "sana_wm_config" in meta:
        return SanaWMConfig(**json.loads(meta["sana_wm_config"]))
    return None


def _file_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name (normalised as `load_checkpoint` reads it) → shape, without loading a safetensors file's data."""
    from sana_wm.checkpoint import normalize_keys, read_state_dict

    if str(path).endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    else:
        raw = {k: tuple(v.shape) for k, v in read_state_dict(path).items()}
    return normalize_keys(raw)[0]


def _misfit(cfg: SanaWMConfig, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """How a file's tensor shapes differ from the model `cfg` describes (empty when they fit)."""
    from sana_wm.checkpoint import OFFICIAL_ONLY

    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in SanaWM(cfg).state_dict().items()}
    missing = [k for k in own if k not in shapes and k not in OFFICIAL_ONLY]
    unexpected = [k for k in shapes if k not in own]
    wrong = [f"{k}: file {shapes[k]} vs {own[k]}" for k in shapes if k in own and shapes[k] != own[k]]
    return [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected] + wrong


def infer_preset(path: str | os.PathLike) -> str:
    """The preset whose tensor shapes a config-less checkpoint (NVIDIA's release file) has exactly.

    Raises:
        CheckpointError: no preset, or more than one, fits; the message names ``--preset`` and how each preset differs.
    """
    shapes = _file_shapes(path)
    misfits = {name: _misfit(cfg, shapes) for name, cfg in PRESETS.items()}
    fitting = [name for name, diff in misfits.items() if not diff]
    if len(fitting) == 1:
        return fitting[0]
    why = "; ".join(f"{name}: {len(d)} differences, e.g. {d[:2]}" for name, d in misfits.items() if d)
    raise CheckpointError(
        f"{path} carries no model config in its metadata and its tensor shapes fit "
        + (f"several presets {fitting}" if fitting else f"no preset ({why})")
        + f"; pass --preset <name> (one of {sorted(PRESETS)}) or export from a file written by save_checkpoint"
    )


def model_from_checkpoint_file(
    path: str | os.PathLike, preset: str | None = None, config: SanaWMConfig | None = None
) -> SanaWM:
    """Build the DiT a checkpoint file holds and load it strictly.

    The architecture comes from, in order: the file's own metadata (files written by `save_checkpoint`), `preset`,
    `config` (e.g. the one an adapter recorded) when the file's shapes fit it, and otherwise the one preset whose
    tensor shapes the file has (NVIDIA's release file carries no metadata: see :func:`infer_preset`).
    """
    from sana_wm.checkpoint import load_checkpoint

    cfg = _config_from_safetensors(path) if str(path).endswith(".safetensors") else None
    if cfg is None and preset is not None:
        cfg = _preset_config(preset)
    if cfg is None and config is not None and not _misfit(config, _file_shapes(path)):
        cfg = config
    if cfg is None:
        cfg = _preset_config(infer_preset(path))
    model = SanaWM(cfg)
    load_checkpoint(model, path)
    return model


def _preset_config(name: str) -> SanaWMConfig:
    if name not in PRESETS:
        raise CheckpointError(f"--preset {name!r} is not a preset; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def _read_training_checkpoint(path: Path) -> dict:
    if path.is_dir() and (path / ".metadata").exists():
        # torch.distributed.checkpoint folder (strategy=fsdp2): the tensors from every rank's shard, Lightning's
        # other entries from its meta.pt.
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        tmp = path.parent / (path.name + ".consolidated.pt")
        dcp_to_torch_save(path, tmp)
        ckpt = torch.load(tmp, map_location="cpu", weights_only=False)  # written by us just now
        tmp.unlink()
        meta = path / "meta.pt"
        return {**(torch.load(meta, map_location="cpu", weights_only=False) if meta.exists() else {}), **ckpt}
    if path.is_dir():
        # DeepSpeed ZeRO folder: consolidate the shards into one fp32 state dict first.
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        tmp = path.parent / (path.name + ".consolidated.pt")
        convert_zero_checkpoint_to_fp32_state_dict(str(path), str(tmp))
        ckpt = torch.load(tmp, map_location="cpu", weights_only=False)  # written by us just now
        tmp.unlink()
        return ckpt
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def export_training_checkpoint(
    ckpt_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: str = "official",
    use_ema: bool = True,
    base: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Lightning checkpoint of `SanaWMLitModule` → full DiT safetensors (see module docstring)."""
    from sana_wm.training.config import ModelConfig

    path = Path(ckpt_path)
    ckpt = _read_training_checkpoint(path)
    hp = ckpt.get("hyper_parameters", {})
    if "model" not in hp or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a SanaWMLitModule checkpoint (no hyper_parameters['model'] / state_dict)")
    mcfg = ModelConfig(**{k: v for k, v in hp["model"].items() if k in ModelConfig.__dataclass_fields__})
    meta = ckpt.get("sana_wm", {})
    state = {plain_name(k[len("model."):]): v
             for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    lora = bool(hp.get("lora", {}).get("enabled", False))
    if lora:
        base = base or mcfg.init_checkpoint
        if not base:
            raise CheckpointError(f"{path} is a LoRA checkpoint (adapters only); pass --base <full checkpoint>")
        model = model_from_checkpoint_file(base, config=replace(PRESETS[mcfg.preset], **mcfg.overrides()))
        digest = checkpoint_digest(base)
        if meta.get("base_sha256") is not None and not same_base(meta["base_sha256"], digest, base):
            raise LoraError(f"{path} was trained on base {meta['base_sha256'][:23]}… but --base {base} is {digest[:23]}…")
        lh = hp["lora"]
        add_lora(model, lh["rank"], lh["alpha"], lh["dropout"], lh["target_modules"], lh.get("init", "zero"))
        own = dict(model.named_parameters())
        ema = ckpt.get("ema", {}).get("shadow", {}) if use_ema else {}
        with torch.no_grad():
            for k, v in state.items():
                if ".lora_" in k:
                    if k not in own:
                        raise CheckpointError(f"{path}: adapter tensor {k!r} has no place in the model")
                    own[k].copy_(ema.get(k, v).to(own[k].dtype))
        merge_lora(model)
    else:
        with torch.device("meta"):  # every tensor comes from the checkpoint: skip a random initialisation
            model = SanaWM.from_preset(mcfg.preset, **mcfg.overrides())
        if use_ema and "ema" in ckpt:
            for k, v in ckpt["ema"]["shadow"].items():
                if k in state and v.shape == state[k].shape:  # sharded (FSDP) shadows cannot be used here
                    state[k] = v.to(state[k].dtype)
        own = set(model.state_dict())
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        if missing or unexpected:
            raise CheckpointError(f"{path}: state dict does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.load_state_dict(state, strict=True, assign=True)
    return save_checkpoint(model, out, layout=layout, dtype=dtype)


def merge_adapter(
    base: str | os.PathLike, adapter: str | os.PathLike, out: str | os.PathLike, *, layout: str = "official",
    preset: str | None = None, dtype: torch.dtype | None = None,
) -> Path:
    """Base checkpoint + LoRA adapter → merged full checkpoint (hash-checked)."""
    _, meta = read_lora(adapter)  # fails early on a non-adapter file
    recorded = SanaWMConfig(**json.loads(meta["sana_wm_config"])) if "sana_wm_config" in meta else None
    model = model_from_checkpoint_file(base, preset, recorded)
    load_lora(model, adapter, base_sha256=checkpoint_digest(base), base_file=base)
    merge_lora(model)
    return save_checkpoint(model, out, layout=layout, dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sana_wm.training.export", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("checkpoint", help="Lightning training checkpoint → full DiT safetensors")
    c.add_argument("ckpt", help="last.ckpt / best.ckpt / step_XXXXXXX.ckpt / DeepSpeed checkpoint folder")
    c.add_argument("--out", required=True)
    c.add_argument("--layout", choices=("official", "diffusers"), default="official")
    c.add_argument("--no-ema", action="store_true", help="export the raw weights even if the checkpoint has EMA")
    c.add_argument("--base", default=None, help="LoRA runs: the base checkpoint (default: the run's init_checkpoint)")
    m = sub.add_parser("merge", help="base checkpoint + LoRA adapter → merged full checkpoint")
    m.add_argument("--base", required=True)
    m.add_argument("--adapter", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--layout", choices=("official", "diffusers"), default="official")
    m.add_argument("--preset", default=None,
                   help="model preset of a base file without config metadata (NVIDIA's); default: the adapter's "
                        "recorded config, else the preset the tensor shapes fit")
    for q in (c, m):
        q.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="cast the written tensors")
    a = p.parse_args(argv)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: None}[a.dtype]
    try:
        if a.cmd == "checkpoint":
            path = export_training_checkpoint(a.ckpt, a.out, layout=a.layout, use_ema=not a.no_ema, base=a.base,
                                              dtype=dtype)
        else:
            path = merge_adapter(a.base, a.adapter, a.out, layout=a.layout, preset=a.preset, dtype=dtype)
    except (CheckpointError, LoraError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
