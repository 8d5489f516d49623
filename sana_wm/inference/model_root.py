"""Where the weights are: the release folder layout, our own checkpoints, and `config.yaml`.

Everything is read from local disk; nothing is ever downloaded. Two ways to name the stage-1 model:

* the official release layout (``Efficient-Large-Model/SANA-WM_bidirectional``, docs/design/pipeline.md §6)::

      <model_root>/config.yaml                    model / vae / text_encoder / scheduler sections
      <model_root>/dit/*.safetensors              the DiT (sana_wm_1600m_720p.safetensors)
      <model_root>/vae/                           diffusers AutoencoderKLLTX2Video
      <model_root>/refiner/{transformer,connectors,text_encoder}/ (+ tokenizer/)   LTX-2 refiner
      <model_root>/text_encoder/                  optional: the stage-1 Gemma-2 (shipped separately upstream)

* our own checkpoint: ``--checkpoint path.safetensors`` (written by :func:`sana_wm.checkpoint.save_checkpoint`,
  whose metadata carries the model config) plus, where needed, ``--model_config`` and ``--model_root`` for the
  VAE / refiner / config.yaml.

:func:`resolve_model_paths` checks that every file the run will open exists — before anything is loaded —
and names the first missing one. :func:`load_inference_config` turns config.yaml (and checkpoint metadata)
into a typed :class:`InferenceConfig`.

config.yaml keys read (all optional except where a model must be described):
  model.model                 NVIDIA registry name (``SanaMSVideoCamCtrl_1600M_P1_D20``) or one of our presets
  model.sana_wm_config        mapping of :class:`~sana_wm.models.SanaWMConfig` field overrides (our extension)
  model.mlp_ratio, softmax_every_n, conv_kernel_size, t_kernel_size, chunk_plucker_channels, linear_head_dim
  model.image_size            720 → 704 × 1280;  model.sample_size: [H, W] (our extension) wins over it
  vae.use_framewise_decoding, tile_sample_min_num_frames, tile_sample_stride_num_frames, vae_stride
  text_encoder.model_max_length, text_encoder.chi_prompt (list of lines, joined with "\\n")
  scheduler.inference_flow_shift
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from sana_wm.models import PRESETS, SanaWMConfig

log = logging.getLogger(__name__)

__all__ = [
    "ModelRootError",
    "RefinerPaths",
    "ModelPaths",
    "InferenceConfig",
    "resolve_model_paths",
    "resolve_refiner_paths",
    "load_inference_config",
    "REGISTRY_TO_PRESET",
    "IMAGE_SIZE_TO_HW",
]

#: NVIDIA's model-registry names (config.yaml ``model.model``) → our presets.
REGISTRY_TO_PRESET = {"SanaMSVideoCamCtrl_1600M_P1_D20": "sana_wm_1600m_720p"}
#: config.yaml ``model.image_size`` → the fixed (H, W) the pipeline crops to (the 720p release: 704 × 1280).
IMAGE_SIZE_TO_HW = {720: (704, 1280)}
#: Released keys that map one-to-one onto SanaWMConfig fields.
_YAML_TO_FIELD = {
    "mlp_ratio": "mlp_ratio",
    "softmax_every_n": "softmax_every_n",
    "conv_kernel_size": "conv_kernel_size",
    "t_kernel_size": "t_kernel_size",
    "chunk_plucker_channels": "plucker_channels",
}
_PREFERRED_DIT = "sana_wm_1600m_720p.safetensors"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class ModelRootError(FileNotFoundError):
    """A weight/config file the run needs is missing or ambiguous; the message names it."""


# ---------------------------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefinerPaths:
    """Folders of the LTX-2 refiner components (each a diffusers / transformers ``from_pretrained`` folder)."""

    root: Path
    transformer: Path
    connectors: Path
    text_encoder: Path
    tokenizer: Path
    text_max_sequence_length: int = 1024


@dataclass(frozen=True)
class ModelPaths:
    """Every file/folder a generation run opens. ``None`` marks a component that is not needed."""

    dit: Path
    vae: Path
    text_encoder: Path | None
    refiner: RefinerPaths | None
    config_file: Path | None
    model_config_file: Path | None = None


def _need_dir(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise ModelRootError(f"missing {what}: directory {str(path)!r} does not exist{hint}")
    return path


def _need_file(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_file():
        raise ModelRootError(f"missing {what}: file {str(path)!r} does not exist{hint}")
    return path


def _need_weights(folder: Path, what: str) -> None:
    """A from_pretrained folder: config.json plus at least one weight file (or a sharded index)."""
    _need_file(folder / "config.json", f"{what} config")
    if not any(p.suffix in _WEIGHT_SUFFIXES or p.name.endswith(".index.json") for p in folder.iterdir()):
        raise ModelRootError(
            f"missing {what} weights: no *.safetensors / *.bin file in {str(folder)!r}"
        )


def _has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in _TOKENIZER_FILES)


def _find_dit(model_root: Path) -> Path:
    dit_dir = _need_dir(model_root / "dit", "DiT weights folder", " (expected <model_root>/dit/*.safetensors)")
    candidates = sorted(dit_dir.glob("*.safetensors"))
    if not candidates:
        raise ModelRootError(f"missing DiT weights: no *.safetensors file in {str(dit_dir)!r}")
    if len(candidates) == 1:
        return candidates[0]
    preferred = dit_dir / _PREFERRED_DIT
    if preferred in candidates:
        return preferred
    raise ModelRootError(
        f"ambiguous DiT weights: {len(candidates)} *.safetensors files in {str(dit_dir)!r} "
        f"({[p.name for p in candidates]}); pass one with --checkpoint"
    )


def _stage1_text_encoder(path: Path) -> Path:
    """Return what :meth:`GemmaTextEncoder.from_pretrained` should get for ``path`` and check the files are there.

    Accepts a plain HF model folder (config.json + weights + tokenizer files together) or a diffusers-style root
    holding ``text_encoder/`` (+ ``tokenizer/``).
    """
    if (path / "text_encoder" / "config.json").is_file():
        model_dir = path / "text_encoder"
        tok_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else model_dir
        arg = path if (path / "tokenizer").is_dir() else model_dir
    else:
        model_dir = tok_dir = arg = path
    _need_dir(path, "stage-1 text encoder (Gemma-2)", " (pass --text_encoder_root)")
    _need_weights(model_dir, "stage-1 text encoder (Gemma-2)")
    if not _has_tokenizer(tok_dir):
        raise ModelRootError(
            f"missing stage-1 tokenizer: none of {list(_TOKENIZER_FILES)} in {str(tok_dir)!r}"
        )
    return arg


def resolve_refiner_paths(refiner_root: str | os.PathLike) -> RefinerPaths:
    """Check the refiner layout ``{transformer,connectors,text_encoder}/`` (+ ``tokenizer/`` or tokenizer files
    inside ``text_encoder/``) and read ``text_max_sequence_length`` from ``model_index.json`` when present."""
    root = _need_dir(Path(refiner_root), "refiner folder", " (pass --refiner_root, or --no_refiner to skip stage 2)")
    parts = {}
    for name in ("transformer", "connectors", "text_encoder"):
        folder = _need_dir(root / name, f"refiner {name}")
        _need_weights(folder, f"refiner {name}")
        parts[name] = folder
    tokenizer = root / "tokenizer" if _has_tokenizer(root / "tokenizer") else parts["text_encoder"]
    if not _has_tokenizer(tokenizer):
        raise ModelRootError(
            f"missing refiner tokenizer: none of {list(_TOKENIZER_FILES)} in {str(root / 'tokenizer')!r} "
            f"or {str(parts['text_encoder'])!r}"
        )
    max_len = 1024  # the released refiner's Gemma-3 window
    index = root / "model_index.json"
    if index.is_file():
        try:
            max_len = int(json.loads(index.read_text()).get("text_max_sequence_length", max_len))
        except (ValueError, TypeError) as err:
            raise ModelRootError(f"unreadable refiner index {str(index)!r}: {err}") from err
    return RefinerPaths(root, parts["transformer"], parts["connectors"], parts["text_encoder"], tokenizer, max_len)


def resolve_model_paths(
    model_root: str | os.PathLike | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    model_config: str | os.PathLike | None = None,
    vae_root: str | os.PathLike | None = None,
    text_encoder_root: str | os.PathLike | None = None,
    refiner_root: str | os.PathLike | None = None,
    need_refiner: bool = True,
    need_text_encoder: bool = True,
) -> ModelPaths:
    """Locate every file of a run and check it exists, without loading anything.

    Args:
        model_root: release-layout folder (see module docstring). Optional when ``checkpoint``, ``vae_root``
            (and ``text_encoder_root`` / ``refiner_root`` if needed) are all given.
        checkpoint: a DiT ``.safetensors`` (official or diffusers layout, or ours); overrides ``<root>/dit``.
        model_config: a YAML/JSON file describing the DiT (config.yaml layout, or flat SanaWMConfig fields).
        vae_root: LTX-2 VAE folder; default ``<model_root>/vae``.
        text_encoder_root: stage-1 Gemma-2; default ``<model_root>/text_encoder`` if present.
        refiner_root: default ``<model_root>/refiner``.
        need_refiner / need_text_encoder: whether those components must exist.

    Raises:
        ModelRootError: naming the first missing file or folder.
    """
    root = Path(model_root) if model_root is not None else None
    if root is not None:
        _need_dir(root, "model root", " (pass --model_root <folder with dit/, vae/, config.yaml>)")
    if checkpoint is not None:
        dit = _need_file(Path(checkpoint), "DiT checkpoint (--checkpoint)")
    elif root is not None:
        dit = _find_dit(root)
    else:
        raise ModelRootError("no DiT weights: pass --model_root (release layout) or --checkpoint <file.safetensors>")

    if vae_root is not None:
        vae = Path(vae_root)
        vae = vae / "vae" if (vae / "vae" / "config.json").is_file() else vae
    elif root is not None:
        vae = root / "vae"
    else:
        raise ModelRootError("no VAE: pass --model_root (with vae/) or --vae_root")
    _need_dir(vae, "LTX-2 VAE folder")
    _need_weights(vae, "LTX-2 VAE")

    text_encoder = None
    if need_text_encoder:
        if text_encoder_root is not None:
            text_encoder = _stage1_text_encoder(Path(text_encoder_root))
        elif root is not None and (root / "text_encoder").is_dir():
            text_encoder = _stage1_text_encoder(root / "text_encoder")
        else:
            where = f"{str(root / 'text_encoder')!r} does not exist" if root is not None else "no --model_root given"
            raise ModelRootError(
                f"missing stage-1 text encoder (Gemma-2-2B-it): {where}; pass --text_encoder_root <folder>"
            )

    refiner = None
    if need_refiner:
        if refiner_root is not None:
            refiner = resolve_refiner_paths(refiner_root)
        elif root is not None:
            refiner = resolve_refiner_paths(root / "refiner")
        else:
            raise ModelRootError("no refiner: pass --refiner_root, or --no_refiner to decode stage-1 latents directly")

    config_file = None
    if root is not None and (root / "config.yaml").is_file():
        config_file = root / "config.yaml"
    model_config_file = _need_file(Path(model_config), "model config (--model_config)") if model_config else None
    return ModelPaths(dit, vae, text_encoder, refiner, config_file, model_config_file)


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceConfig:
    """What the pipeline needs besides weights.

    model: the DiT architecture. height, width: model resolution in pixels. flow_shift: stage-1 σ-grid shift.
    text_max_length: Gemma-2 tokens seen by the DiT (300). chi_prompt: positive-prompt prefix (None → built-in).
    vae_framewise / vae_tile_frames / vae_tile_stride: temporal VAE tiling (96 / 64 in the release).
    vae_stride: (temporal, spatial, spatial) compression config.yaml declares for the VAE (LTX-2: 8, 32, 32); the
    pipeline checks it against the VAE it loads.
    """

    model: SanaWMConfig
    height: int = 704
    width: int = 1280
    flow_shift: float = 9.8
    text_max_length: int = 300
    chi_prompt: str | None = None
    vae_framewise: bool = True
    vae_tile_frames: int = 96
    vae_tile_stride: int = 64
    vae_stride: tuple[int, int, int] = (8, 32, 32)
    source: str = ""


def _read_mapping(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ModelRootError(f"cannot parse {str(path)!r}: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ModelRootError(f"{str(path)!r}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _section(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ModelRootError(f"{str(path)!r}: key {key!r} must be a mapping, got {type(value).__name__}")
    return value


def _apply_overrides(cfg: SanaWMConfig, overrides: dict[str, Any], where: str) -> SanaWMConfig:
    valid = {f.name for f in fields(SanaWMConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ModelRootError(f"{where}: unknown SanaWMConfig field(s) {unknown}; valid fields: {sorted(valid)}")
    return replace(cfg, **overrides)


def _model_from_section(model: dict[str, Any], where: str) -> SanaWMConfig:
    """DiT config from a config.yaml ``model`` section (or a flat mapping of SanaWMConfig fields)."""
    valid = {f.name for f in fields(SanaWMConfig)}
    if "model" not in model and "sana_wm_config" not in model:
        if model and set(model) <= valid:  # a flat SanaWMConfig dump (e.g. --model_config of ours)
            return SanaWMConfig(**model)
        raise ModelRootError(f"{where}: no 'model.model' entry naming the architecture (e.g. SanaMSVideoCamCtrl_1600M_P1_D20)")
    name = str(model.get("model", "sana_wm_1600m_720p"))
    preset = REGISTRY_TO_PRESET.get(name, name)
    if preset not in PRESETS:
        raise ModelRootError(
            f"{where}: model.model = {name!r} is not a known architecture; expected one of "
            f"{sorted(REGISTRY_TO_PRESET) + sorted(PRESETS)}"
        )
    cfg = PRESETS[preset]
    released = {_YAML_TO_FIELD[k]: model[k] for k in _YAML_TO_FIELD if k in model}
    cfg = _apply_overrides(cfg, released, f"{where} (model section)")
    extra = model.get("sana_wm_config") or {}
    if not isinstance(extra, dict):
        raise ModelRootError(f"{where}: model.sana_wm_config must be a mapping of SanaWMConfig fields")
    cfg = _apply_overrides(cfg, extra, f"{where} (model.sana_wm_config)")
    if "linear_head_dim" in model and int(model["linear_head_dim"]) != cfg.head_dim:
        raise ModelRootError(
            f"{where}: model.linear_head_dim = {model['linear_head_dim']} but hidden_size / num_heads = {cfg.head_dim}"
        )
    return cfg


def _checkpoint_config(path: Path) -> SanaWMConfig | None:
    """The config our save_checkpoint stores in safetensors metadata (``sana_wm_config``), if any."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # a corrupt header: name the file
        raise ModelRootError(f"cannot read safetensors header of {str(path)!r}: {err}") from err
    if "sana_wm_config" not in meta:
        return None
    try:
        return SanaWMConfig(**json.loads(meta["sana_wm_config"]))
    except (TypeError, ValueError) as err:
        raise ModelRootError(f"{str(path)!r}: bad sana_wm_config metadata: {err}") from err


def load_inference_config(paths: ModelPaths) -> InferenceConfig:
    """Build the :class:`InferenceConfig` of a run.

    DiT architecture, by priority: ``--model_config`` file > the checkpoint's own metadata > config.yaml's
    ``model`` section. Everything else comes from config.yaml when present, else the release defaults.
    """
    data: dict[str, Any] = _read_mapping(paths.config_file) if paths.config_file is not None else {}
    where = str(paths.config_file) if paths.config_file is not None else "<defaults>"
    model_sec = _section(data, "model", paths.config_file or Path(where))
    vae_sec = _section(data, "vae", paths.config_file or Path(where))
    text_sec = _section(data, "text_encoder", paths.config_file or Path(where))
    sched_sec = _section(data, "scheduler", paths.config_file or Path(where))

    model_cfg: SanaWMConfig | None = None
    source = ""
    if paths.model_config_file is not None:
        mc = _read_mapping(paths.model_config_file)
        section = mc["model"] if isinstance(mc.get("model"), dict) else mc
        model_cfg = _model_from_section(section, str(paths.model_config_file))
        source = str(paths.model_config_file)
        # A full config.yaml passed as --model_config also supplies the other sections.
        for key, sec in (("vae", vae_sec), ("text_encoder", text_sec), ("scheduler", sched_sec)):
            if isinstance(mc.get(key), dict):
                sec.update(mc[key])
        if isinstance(mc.get("model"), dict):
            model_sec = {**model_sec, **mc["model"]}
    if model_cfg is None:
        model_cfg = _checkpoint_config(paths.dit)
        source = f"{paths.dit} (metadata)" if model_cfg is not None else ""
        if model_cfg is not None and model_sec:
            try:
                yaml_cfg = _model_from_section(model_sec, where)
            except ModelRootError:
                yaml_cfg = None
            if yaml_cfg is not None and yaml_cfg != model_cfg:
                log.warning("checkpoint metadata config differs from %s; using the checkpoint's", where)
    if model_cfg is None:
        if not model_sec:
            raise ModelRootError(
                f"no model config for {str(paths.dit)!r}: it carries no sana_wm_config metadata and there is no "
                "config.yaml with a 'model' section; pass --model_config <config.yaml> (or --model_root with config.yaml)"
            )
        model_cfg = _model_from_section(model_sec, where)
        source = where

    vae_stride = (8, 32, 32)
    stride = vae_sec.get("vae_stride")
    if stride is not None:
        ok = (isinstance(stride, (list, tuple)) and len(stride) == 3 and all(isinstance(v, int) and v > 0 for v in stride)
              and stride[1] == stride[2] and int(stride[0]) == 8)
        if not ok:
            # The DiT's chunk-Plücker input packs 8 frames per latent frame, so the temporal stride is fixed at 8;
            # the spatial one follows the VAE (32 for LTX-2, 8 for the CPU demo's codec).
            raise ModelRootError(
                f"{where}: vae.vae_stride must be [8, s, s] with s a positive integer (LTX-2: [8, 32, 32]); got {stride!r}"
            )
        vae_stride = (int(stride[0]), int(stride[1]), int(stride[2]))
    s = vae_stride[1]

    height, width = 704, 1280
    if "sample_size" in model_sec:
        size = model_sec["sample_size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(int(v) > 0 and int(v) % s == 0 for v in size)):
            raise ModelRootError(
                f"{where}: model.sample_size must be [H, W], multiples of the VAE stride {s} (vae.vae_stride); "
                f"got {size!r}"
            )
        height, width = int(size[0]), int(size[1])
    elif "image_size" in model_sec:
        size = int(model_sec["image_size"])
        if size not in IMAGE_SIZE_TO_HW:
            raise ModelRootError(
                f"{where}: model.image_size = {size} has no known video resolution; known: {sorted(IMAGE_SIZE_TO_HW)} "
                "(or give model.sample_size: [H, W])"
            )
        height, width = IMAGE_SIZE_TO_HW[size]


    chi = text_sec.get("chi_prompt")
    if chi is not None:
        if isinstance(chi, str):
            chi_prompt = chi
        elif isinstance(chi, list) and all(isinstance(line, str) for line in chi):
            chi_prompt = "\n".join(chi)
        else:
            raise ModelRootError(f"{where}: text_encoder.chi_prompt must be a list of strings")
    else:
        chi_prompt = None

    return InferenceConfig(
        model=model_cfg,
        height=height,
        width=width,
        flow_shift=float(sched_sec.get("inference_flow_shift", sched_sec.get("flow_shift", 9.8))),
        text_max_length=int(text_sec.get("model_max_length", 300)),
        chi_prompt=chi_prompt,
        vae_framewise=bool(vae_sec.get("use_framewise_decoding", True)),
        vae_tile_frames=int(vae_sec.get("tile_sample_min_num_frames", 96)),
        vae_tile_stride=int(vae_sec.get("tile_sample_stride_num_frames", 64)),
        vae_stride=vae_stride,
        source=source,
    )
