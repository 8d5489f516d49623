"""LoRA fine-tuning of the SANA-WM DiT with peft: attach, save, load and merge adapters.

Targets are regular expressions over module names (`re.fullmatch`), resolved against the model *before* peft sees
them so that a pattern matching nothing, or a module LoRA cannot act on, is an error rather than a silent no-op:

* `nn.Linear` layers (attention q/k/v/o, cross-attention, camera-branch projections, the Plücker injection) use
  peft's own LoRA layer;
* the FFN's 1×1 convolutions are `PointwiseConv` (a conv-shaped weight applied as a Linear on tokens); they get
  :class:`PointwiseConvLora`, registered with peft's custom-module hook, whose merge reshapes the delta to the
  conv weight;
* modules whose weight the model reads directly instead of calling them (the FFN temporal conv `mlp.t_conv`) and
  checkpoint-only modules (frozen at construction, never reached by forward) are rejected with the reason.

peft initialises B = 0, so a freshly attached adapter leaves the model's output unchanged (the camera branch
included); only adapter weights are trainable.

Adapter files are safetensors with the adapter-name-free keys (``blocks.0.attn.qkv.lora_A.weight``) and metadata:
``format`` (``sana-wm-lora/1``), ``base_sha256`` (the :func:`checkpoint_digest` of the base the adapter was trained
on: a hash of its tensors, so a re-saved copy of the same weights is the same base),
``lora_config`` (rank, alpha, dropout, the resolved target modules, init) and ``sana_wm_config``. Loading an adapter
onto a different base raises :class:`LoraError` before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sana_wm.parallel import plain_name

__all__ = [
    "LoraError",
    "LoraSpec",
    "resolve_lora_targets",
    "add_lora",
    "has_lora",
    "lora_state_dict",
    "save_lora",
    "read_lora",
    "load_lora",
    "merge_lora",
    "file_sha256",
    "checkpoint_digest",
    "same_base",
    "state_fingerprint",
]

ADAPTER_FORMAT = "sana-wm-lora/1"
_ADAPTER = "default"  # peft adapter name; never written to files


class LoraError(ValueError):
    """An adapter or LoRA target specification does not fit the model; the message says which and why."""


# ---------------------------------------------------------------------------------------------------------------------
# Hashes of the base weights
# ---------------------------------------------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike, bufsize: int = 1 << 22) -> str:
    """sha256 of a file's bytes. Not a base's identity (see :func:`checkpoint_digest`): kept to recognise adapters
    written when bases were identified by their file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _hash_tensor(h: hashlib._Hash, name: str, t: torch.Tensor) -> None:
    h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}|".encode())
    h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())  # the buffer, not a copy


def checkpoint_digest(path: str | os.PathLike) -> str:
    """The identity of a base checkpoint: what it holds, not how the file is laid out.

    sha256 over every tensor's name (normalised as `sana_wm.checkpoint.load_checkpoint` reads it: no ``model.``
    prefix, official names), dtype, shape and bytes, in name order; prefixed ``tensors:``. Header metadata and its
    order, tensor order in the file, and the container (.safetensors or .pt) do not change it, so re-saving an
    unchanged base keeps its adapters valid, while any changed value, dtype or shape gives a different digest.
    """
    from sana_wm.checkpoint import normalize_keys, read_state_dict

    path = Path(path)
    h = hashlib.sha256()
    if path.suffix == ".safetensors" and path.is_file():
        with safe_open(str(path), framework="pt") as f:  # one tensor at a time: a 2.6 B-parameter base stays on disk
            stored_as, _ = normalize_keys({k: k for k in f.keys()})  # normalised name -> name in the file
            for name in sorted(stored_as):
                _hash_tensor(h, name, f.get_tensor(stored_as[name]))
    else:
        state, _ = normalize_keys(read_state_dict(path))
        for name in sorted(state):
            _hash_tensor(h, name, state[name])
    return "tensors:" + h.hexdigest()


def same_base(recorded: str | None, digest: str, base_file: str | os.PathLike | None = None) -> bool:
    """Whether an adapter's recorded base (``recorded``) is the base whose :func:`checkpoint_digest` (or
    :func:`state_fingerprint`) is ``digest``. An adapter written before bases were identified by content records the
    sha256 of the base file's bytes; that is compared with ``base_file``'s bytes, when the file is known."""
    if recorded == digest:
        return True
    legacy = recorded is not None and re.fullmatch(r"[0-9a-f]{64}", recorded) is not None
    return legacy and base_file is not None and Path(base_file).is_file() and recorded == file_sha256(base_file)


def state_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, shapes and float32 values of a model's state dict, LoRA tensors excluded.

    Identifies a base model that was not loaded from a file (random initialisation); prefixed ``state:`` so it is
    never confused with a file hash.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if ".lora_" in name:
            continue
        h.update(name.replace(".base_layer", "").encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "state:" + h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# The custom LoRA layer for PointwiseConv
# ---------------------------------------------------------------------------------------------------------------------


def _pointwise_lora_class():
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    class PointwiseConvLora(PeftLoraLinear):
        """peft LoRA for `PointwiseConv`: tokens [..., C_in] → [..., C_out], weight stored as [C_out, C_in, 1, …]."""

        def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
            return int(module.weight.shape[1]), int(module.weight.shape[0])

        def get_delta_weight(self, adapter: str) -> torch.Tensor:
            # B·A is [C_out, C_in]; the base weight carries trailing unit kernel axes.
            return super().get_delta_weight(adapter).reshape(self.get_base_layer().weight.shape)

    return PointwiseConvLora


def __getattr__(name: str):  # lazy, so importing this module does not import peft
    if name == "PointwiseConvLora":
        return _pointwise_lora_class()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------------------------------
# Attaching adapters
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraSpec:
    """What an adapter is: rank, alpha (scale alpha/rank), dropout, init and the exact module names it wraps."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    init: str = "zero"

    def to_json(self) -> str:
        return json.dumps(
            {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets), "init": self.init}
        )

    @classmethod
    def from_json(cls, text: str) -> LoraSpec:
        d = json.loads(text)
        return cls(int(d["rank"]), float(d["alpha"]), float(d["dropout"]), tuple(d["targets"]), d.get("init", "zero"))


def _supported_types() -> tuple[type, ...]:
    from sana_wm.models.sana_wm import PointwiseConv

    return (nn.Linear, PointwiseConv)


# Modules whose parameters the model uses without calling the module (a LoRA wrapper would never run).
_DIRECT_WEIGHT_USE = (re.compile(r".*\.mlp\.t_conv$"),)


def resolve_lora_targets(model: nn.Module, patterns: Sequence[str]) -> tuple[str, ...]:
    """Module names of `model` matched (fullmatch) by any of `patterns`, validated.

    Raises:
        LoraError: a pattern is not a valid regex or matches no module, or a matched module cannot carry LoRA
            (unsupported type, weight read directly by the model, or a frozen checkpoint-only module).
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as err:
            raise LoraError(f"lora.target_modules: {p!r} is not a valid regular expression ({err})") from None
    supported = _supported_types()
    modules = dict(model.named_modules())
    names, used = [], set()
    for name, module in modules.items():
        hits = [p.pattern for p in compiled if p.fullmatch(name)]
        if not hits:
            continue
        used.update(hits)
        if any(r.match(name) for r in _DIRECT_WEIGHT_USE):
            raise LoraError(
                f"lora.target_modules: {name!r} (matched by {hits[0]!r}) is read by weight, not called, so LoRA on it "
                "would do nothing; remove it from the targets"
            )
        if not isinstance(module, supported):
            raise LoraError(
                f"lora.target_modules: {name!r} (matched by {hits[0]!r}) is a {type(module).__name__}; LoRA supports "
                f"{[t.__name__ for t in supported]} — target its linear sub-layers instead"
            )
        if not module.weight.requires_grad:
            raise LoraError(
                f"lora.target_modules: {name!r} is a checkpoint-only module that the forward pass never uses "
                "(e.g. GDN gates of a softmax block); exclude it"
            )
        names.append(name)
    unused = [p.pattern for p in compiled if p.pattern not in used]
    if unused:
        raise LoraError(
            f"lora.target_modules: pattern(s) {' ; '.join(unused)} match no module of {type(model).__name__}; module names look "
            "like 'blocks.0.attn.qkv', 'blocks.0.mlp.inverted_conv.conv', 'blocks.0.attn.q_proj_cam'"
        )
    return tuple(names)


def has_lora(model: nn.Module) -> bool:
    """True when LoRA layers are attached."""
    from peft.tuners.lora.layer import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def add_lora(
    model: nn.Module,
    rank: int = 32,
    alpha: float = 32.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    init: str = "zero",
    *,
    spec: LoraSpec | None = None,
) -> LoraSpec:
    """Attach LoRA adapters to `model` in place; afterwards only adapter weights are trainable.

    Args:
        model: a `SanaWM` (not wrapped for checkpointing/compile/FSDP yet).
        rank, alpha, dropout: LoRA hyper-parameters (scale = alpha / rank).
        target_modules: regexes over module names (default `sana_wm.training.config.DEFAULT_LORA_TARGETS`).
        init: ``zero`` (peft default: A Kaiming-uniform, B = 0) or ``gaussian`` (A normal, B = 0); both leave the
            output unchanged at step 0.
        spec: attach exactly this spec instead (used when loading an adapter file).

    Returns:
        The resolved :class:`LoraSpec`.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    from sana_wm.models.sana_wm import PointwiseConv
    from sana_wm.training.config import DEFAULT_LORA_TARGETS

    if has_lora(model):
        raise LoraError("the model already has LoRA adapters attached; merge or rebuild it before adding new ones")
    if spec is None:
        if rank < 1:
            raise LoraError(f"lora.rank must be >= 1, got {rank}")
        if init not in ("zero", "gaussian"):
            raise LoraError(f"lora.init must be 'zero' or 'gaussian', got {init!r}")
        targets = resolve_lora_targets(model, target_modules or DEFAULT_LORA_TARGETS)
        spec = LoraSpec(int(rank), float(alpha), float(dropout), targets, init)
    else:
        missing = [t for t in spec.targets if t not in dict(model.named_modules())]
        if missing:
            raise LoraError(f"adapter targets {missing[:5]} do not exist in this model (a different architecture?)")
    config = PeftLoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules="^(?:" + "|".join(re.escape(t) for t in spec.targets) + ")$",
        init_lora_weights=True if spec.init == "zero" else "gaussian",
    )
    config._register_custom_module({PointwiseConv: _pointwise_lora_class()})
    inject_adapter_in_model(config, model, adapter_name=_ADAPTER)
    model._sana_lora_spec = spec
    return spec


# ---------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------------------------------


def _file_key(name: str) -> str:
    # 'blocks.0.attn.qkv.lora_A.default.weight' → 'blocks.0.attn.qkv.lora_A.weight'; wrapper tokens removed so the
    # keys do not depend on activation checkpointing / compile / DDP wrapping.
    return plain_name(name).replace("module.", "").replace(f".{_ADAPTER}.", ".")


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of `model` with file keys (see module docstring), detached, on CPU, contiguous."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, t in model.state_dict().items():
        if ".lora_" in name:
            if isinstance(t, DTensor):  # FSDP2 shard: gathered whole (a collective: every rank must call this)
                t = t.full_tensor()
            out[_file_key(name)] = t.detach().to("cpu").contiguous()
    if not out:
        raise LoraError("the model has no LoRA adapters to save")
    return out


def save_lora(
    model: nn.Module,
    path: str | os.PathLike,
    base_sha256: str,
    extra_metadata: dict[str, str] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the adapters of `model` (safetensors) with the base hash, the LoRA spec and the model config.
    tensors: `lora_state_dict(model)` when the caller already gathered it (FSDP2: on every rank)."""
    spec = getattr(model, "_sana_lora_spec", None)
    if spec is None:
        raise LoraError("the model has no LoRA spec (attach adapters with sana_wm.training.lora.add_lora)")
    meta = {"format": ADAPTER_FORMAT, "base_sha256": str(base_sha256), "lora_config": spec.to_json()}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        meta["sana_wm_config"] = json.dumps(config.to_dict())
    meta.update(extra_metadata or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(lora_state_dict(model) if tensors is None else tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # never leave a truncated adapter under the real name
    return path


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of an adapter file; raises LoraError if it is not a SANA-WM adapter."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA adapter not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != ADAPTER_FORMAT:
        raise LoraError(
            f"{path} is not a SANA-WM LoRA adapter (metadata format={meta.get('format')!r}, expected {ADAPTER_FORMAT!r})"
        )
    for key in ("base_sha256", "lora_config"):
        if key not in meta:
            raise LoraError(f"{path}: adapter metadata lacks {key!r}")
    return tensors, meta


def load_lora(
    model: nn.Module, path: str | os.PathLike, base_sha256: str | None = None, check_config: bool = True,
    base_file: str | os.PathLike | None = None,
) -> LoraSpec:
    """Attach (if needed) and load an adapter into `model`, after checking it was trained on this base.

    Args:
        model: the base `SanaWM`, with or without adapters attached.
        path: adapter safetensors written by :func:`save_lora`.
        base_sha256: identity of the base the model was loaded from (:func:`checkpoint_digest` of its file, or
            :func:`state_fingerprint` for a random base); None skips the check (not recommended).
        check_config: also require the adapter's recorded model config to equal ``model.config``.
        base_file: the base's file, to recognise adapters that recorded its bytes' sha256 (see :func:`same_base`).

    Raises:
        LoraError: different base, different architecture, or keys/shapes that do not fit.
    """
    tensors, meta = read_lora(path)
    if base_sha256 is not None and not same_base(meta["base_sha256"], base_sha256, base_file):
        raise LoraError(
            f"{path} was trained on base {meta['base_sha256'][:23]}… but the base model here is {base_sha256[:23]}…; "
            "load the base checkpoint the adapter was trained on (model.init_checkpoint / --base)"
        )
    config = getattr(model, "config", None)
    if check_config and "sana_wm_config" in meta and config is not None and hasattr(config, "to_dict"):
        theirs, ours = json.loads(meta["sana_wm_config"]), config.to_dict()
        # Adapters written before the model recorded `camera_rms_downscale` were trained with the clamp in every
        # block (the only behaviour then): compare them as "all", so the error names the setting that fits them.
        theirs.setdefault("camera_rms_downscale", "all")
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        if diff:
            raise LoraError(
                f"{path} was trained on a model with a different config: "
                + ", ".join(f"{k}: adapter {theirs.get(k)!r} vs model {ours.get(k)!r}" for k in diff[:5])
            )
    spec = LoraSpec.from_json(meta["lora_config"])
    current = getattr(model, "_sana_lora_spec", None)
    if current is None:
        add_lora(model, spec=spec)
    elif (current.rank, current.targets) != (spec.rank, spec.targets):
        raise LoraError(
            f"{path} has rank {spec.rank} on {len(spec.targets)} modules but the attached adapters have rank "
            f"{current.rank} on {len(current.targets)}; set lora.rank / lora.target_modules to match or detach"
        )
    own = {_file_key(k): (k, v) for k, v in model.state_dict().items() if ".lora_" in k}
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(own[k][1].shape)}"
             for k in tensors if k in own and tensors[k].shape != own[k][1].shape]
    if missing or unexpected or wrong:
        raise LoraError(
            f"{path} does not fit the attached adapters: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"shape mismatches {wrong[:3]}"
        )
    with torch.no_grad():
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        for key, (name, _) in own.items():
            target = params.get(name, buffers.get(name))
            target.copy_(tensors[key].to(target.dtype))
    return spec


# ---------------------------------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------------------------------


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W ← W + (alpha/rank)·B·A) and remove the LoRA layers, in place.

    Afterwards the model has exactly the original module tree and state-dict keys (official layout), so
    `sana_wm.checkpoint.save_checkpoint` writes a full checkpoint. All parameters are left trainable-as-before
    (requires_grad restored from the base's construction-time flags is not attempted: the result is for export).
    """
    from peft.tuners.lora.layer import LoraLayer

    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    if not wrapped:
        raise LoraError("merge_lora: the model has no LoRA adapters")
    for name, m in wrapped:
        m.merge(safe_merge=True)  # raises if the merged weight has NaN/Inf
        _set_submodule(model, name, m.get_base_layer())
    for attr in ("_sana_lora_spec", "peft_config"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model
