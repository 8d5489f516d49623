"""Our SANA-WM beside NVIDIA's own network (their Triton GDN kernels): same process, weights and inputs; one GPU, bf16.

NVIDIA's network is read from a checkout of their public code (github NVlabs/Sana, or the fork HaoyiZhu/NVlabs-Sana)
that you point to with --nvidia-src; nothing of it is kept in this repository and nothing is downloaded. The files
listed in bench/nvidia_files.txt (about 1 MB) are enough: `bash bench/nvidia_subset.sh SRC DST` copies them from a
checkout, or from a git directory at a commit (`bash bench/nvidia_subset.sh GIT_DIR@COMMIT DST`).

What is compared:
  * NVIDIA's model: `SanaMSVideoCamCtrl` (`diffusion/model/nets/sana_multi_scale_video_camctrl.py`) built with the
    keyword arguments their inference CLI derives from `configs/sana_wm/sana_wm_1600m_720p.yaml` (their dataclasses
    and `model_video_camctrl_init_config`), fp32 attention on (`set_fp32_attention`), bf16, eval, their default
    environment flags: the fused Triton GDN camera class in 15 blocks, the softmax camera class in every 4th. For
    the training step it gets the flags of their stage-1 training recipe: `use_autograd_kernel` (their Triton kernels
    with a backward) and per-block non-reentrant checkpointing (what their `set_grad_checkpoint` sets).
  * Ours: `SanaWM` of the `sana_wm_1600m_720p` preset, random init with the zero-initialised camera / Plücker /
    temporal paths given random weights (`dit_step.wake_zero_init_paths`), bf16. Our state dict is NVIDIA's official
    key layout; it goes into NVIDIA's network through torch's own strict `load_state_dict` (not their lenient
    override), after a key and shape check that names every difference. The one key we do not carry, `pos_embed`
    (an all-zero buffer of theirs that RoPE models never read and their own loader drops), keeps NVIDIA's value.
  * `camera_rms_downscale`: ours is built with the mode NVIDIA's checkout computes, read from the classes its model
    builds (`nvidia_downscale_mode`): a camera class downscales when it has their `_downscale_to_reference_rms`,
    unless its camera branch is the fused Triton one (`_forward_cam_branch` of `sana_gdn_blocks_triton.py`, whose
    prep kernel has none). At 40151c8 that is "softmax", from 3f7bc74 on "none" (docs/design/nvidia-fidelity.md).
    --camera-rms-downscale overrides it.
  * Inputs: `dit_step.make_inputs` — random latents and text, and a moving camera through our camera code (DSL,
    camera conditions, Plücker maps: the same as NVIDIA's).

Cases:
  fwd21    forward, 21 latent frames (161 f), B = 2 (one CFG step); also the output difference with no camera input
  fwd121   forward, 121 latent frames (961 f), B = 1
  train21  forward + backward of mean(v²), 21 latent frames, B = 1: NVIDIA's as above; ours once per --ac policy
           ("full" recomputes whole blocks: our training config's default, about NVIDIA's memory; "selective",
           "ffn" (compiled only) and "none" keep more). NVIDIA's step must be a training step: at 40151c8 (the
           release) its Triton GDN kernels write their outputs outside autograd, so the parameters before every GDN
           scan (q/k/v projections, short convs, norms, gates; main and camera branch) get no gradient and its step
           skips the scans' backward. The bench counts the parameters that get a gradient in ours and none in
           NVIDIA's (column "params without grad in NVIDIA's step") and then computes no speed-up. The fork's 5b5cc40 has the kernels with a backward that `use_autograd_kernel`
           selects: run train21 with a subset made at 5b5cc40.
Columns: ms (CUDA events, median of --reps after --warmup), peak GiB (allocator peak less the other model's
parameters, buffers and gradients), MFU (sana_wm.models.flops over 989.4 TFLOP/s), speed-up = NVIDIA ms / ours ms,
and ours against NVIDIA: relative L2 ‖a − b‖ / ‖b‖ and max |a − b| of the output (train21: also of all parameter
gradients as one vector). With --compile our model also runs with per-block torch.compile (`dit_step.set_compiled`);
NVIDIA's runs eager (its network does not survive torch.compile), with the helpers its own code compiles. NVIDIA's
first calls include its Triton autotuning, and at 3f7bc74 the build of its CUDA camera-scan extension (nvcc, their
default `SANA_GDN_CUDA=1`): --warmup must be at least 1. Prints a table, writes JSON (--out) after every case. Never
asserts speed.

Import isolation. NVIDIA's package `__init__`s import their whole code base (schedulers, VAEs, data sets, mmcv), so
none of them runs: the packages `diffusion`, `diffusion.model`, `diffusion.model.nets`, `diffusion.model.wan`,
`diffusion.utils`, `diffusion.distributed` and `diffusion.distributed.context_parallel` are registered in
`sys.modules` as bare packages over the checkout's folders (the checkout is not put on `sys.path`), so only the
module files the network imports run (bench/nvidia_files.txt). Three modules of theirs that compute nothing are
replaced by in-process ones holding the names the network imports: `diffusion.model.builder` (its `MODELS` registry;
the real module imports VAEs and text encoders), `diffusion.utils.dist_utils` (`get_rank`) and `diffusion.utils.logger`
(`get_root_logger`, `get_logger`; both real ones import mmcv and pytz). Where not installed, `mmcv` is a module with
a `Registry` (what `diffusion/model/registry.py` takes from it: `register_module`, `get`), `termcolor` one whose
`colored` returns the text, and `importlib_metadata` the standard library's `importlib.metadata`. Python packages
their network needs: torch, triton, flash-linear-attention (`fla`: ShortConvolution), timm, einops, transformers,
diffusers (their `wan/model.py`), numpy, packaging, pyyaml. `build_nvidia(..., pytorch_gdn=True)` builds their
PyTorch GDN camera class instead of the fused one, for CPU checks (it runs at 40151c8 only; later commits have no
PyTorch GDN forward).

    PYTHONPATH=. python3 bench/nvidia_native.py --nvidia-src .nvidia_sana --compile --warmup 1 --reps 3 --out nv.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import sys
import types
from dataclasses import fields, replace
from pathlib import Path

import torch
from common import cuda_time, markdown_table, write_json
from dit_step import (
    TEXT,
    H,
    W,
    host_grads,
    make_inputs,
    resident_gib,
    run_info,
    set_compiled,
    wake_zero_init_paths,
)

from sana_wm import SanaWM, SanaWMConfig
from sana_wm.models.flops import H100_BF16_PEAK, model_flops
from sana_wm.models.sana_wm import CAMERA_RMS_DOWNSCALE_MODES, PRESETS
from sana_wm.parallel import AC_POLICIES, parallelize, plain_name

# The files whose presence makes a folder a checkout of NVIDIA's SANA-WM code.
CONFIG = "configs/sana_wm/sana_wm_1600m_720p.yaml"
ENTRY_FILES = (
    CONFIG,
    "diffusion/model/nets/sana_multi_scale_video_camctrl.py",
    "diffusion/model/nets/sana_gdn_blocks_triton.py",
    "diffusion/model/nets/sana_gdn_camctrl_blocks.py",
    "diffusion/model/ops/fused_cam_gdn.py",
    "diffusion/utils/camctrl_config.py",
)
FILE_LIST = Path(__file__).with_name("nvidia_files.txt")


def nvidia_files(path: Path = FILE_LIST) -> dict[str, bool]:
    """Every file of theirs this script runs or reads (FILE_LIST, which bench/nvidia_subset.sh copies) → whether
    every commit it was made for has it (False: a "? " line, present at some commits only)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out[line.removeprefix("? ")] = not line.startswith("? ")
    return out


# Packages whose __init__ would import far more than the network: registered bare over their folders instead.
BARE_PACKAGES = ("diffusion", "diffusion.model", "diffusion.model.nets", "diffusion.model.wan", "diffusion.utils",
                 "diffusion.distributed", "diffusion.distributed.context_parallel")
MODEL_MODULE = "diffusion.model.nets.sana_multi_scale_video_camctrl"
NVIDIA_ONLY_KEYS = ("pos_embed",)  # their all-zero sincos table, unused with RoPE; our layout drops it
# What main() builds (a CPU dry run of the flow sets "cpu", "tiny", float32).
DEVICE, PRESET, DTYPE = "cuda", "sana_wm_1600m_720p", torch.bfloat16


class NvidiaSourceError(FileNotFoundError):
    """--nvidia-src is missing or is not a checkout of NVIDIA's SANA-WM code: names the path and the files expected."""


def check_nvidia_src(path: str | Path | None) -> Path:
    """The checkout root `path` after checking that it holds ENTRY_FILES; NvidiaSourceError otherwise."""
    hint = ("a checkout of NVIDIA's public SANA code (github NVlabs/Sana or HaoyiZhu/NVlabs-Sana), or the subset "
            "`bash bench/nvidia_subset.sh SRC DST` copies from one")
    if path is None:
        raise NvidiaSourceError(f"--nvidia-src is required: {hint}, holding {', '.join(ENTRY_FILES)}")
    root = Path(path)
    if not root.is_dir():
        raise NvidiaSourceError(f"--nvidia-src {root}: no such directory; expected {hint}, holding "
                                f"{', '.join(ENTRY_FILES)}")
    missing = [f for f in ENTRY_FILES if not (root / f).is_file()]
    if missing:
        raise NvidiaSourceError(f"--nvidia-src {root} is not a checkout of NVIDIA's SANA-WM code: it lacks "
                                f"{', '.join(missing)} (expected {hint}, holding {', '.join(ENTRY_FILES)})")
    return root


class Registry:
    """What NVIDIA's code uses of mmcv's `Registry`: `register_module()` as a class / function decorator and
    `get(name)` (None for an unknown name, as mmcv)."""

    def __init__(self, name: str):
        self.name, self.module_dict = name, {}

    def register_module(self, name: str | None = None, force: bool = False, module=None):
        def add(obj):
            key = name or obj.__name__
            if key in self.module_dict and not force:
                raise KeyError(f"{key} is already registered in {self.name}")
            self.module_dict[key] = obj
            return obj

        return add(module) if module is not None else add

    def get(self, key: str):
        return self.module_dict.get(key)


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    vars(mod).update(attrs)
    return mod


def _stand_ins() -> dict[str, types.ModuleType]:
    """The in-process modules that replace NVIDIA's non-computing pieces and missing optional packages (docstring)."""
    mods = {
        "diffusion.model.builder": _module("diffusion.model.builder", MODELS=Registry("models")),
        "diffusion.utils.dist_utils": _module(
            "diffusion.utils.dist_utils",
            get_rank=lambda: torch.distributed.get_rank() if torch.distributed.is_initialized() else 0),
        "diffusion.utils.logger": _module(
            "diffusion.utils.logger", get_root_logger=lambda *a, **k: logging.getLogger("nvidia_sana"),
            get_logger=lambda *a, **k: logging.getLogger("nvidia_sana")),
    }
    if importlib.util.find_spec("mmcv") is None:
        mods["mmcv"] = _module("mmcv", Registry=Registry)
    if importlib.util.find_spec("termcolor") is None:
        mods["termcolor"] = _module("termcolor", colored=lambda text, *a, **k: text)
    if not _importable("importlib_metadata"):  # absent, or (seen on the GPU image) present without its own deps
        mods["importlib_metadata"] = importlib.import_module("importlib.metadata")
    return mods


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def import_nvidia(root: str | Path) -> types.ModuleType:
    """Import NVIDIA's model module from the checkout `root` (see "Import isolation" above) and return it. A second
    call with the same root returns the same module; another root in the same process is an error."""
    root = check_nvidia_src(root).resolve()
    pkg = sys.modules.get("diffusion")
    if pkg is not None:
        if list(getattr(pkg, "__path__", [])) != [str(root / "diffusion")]:
            raise RuntimeError(f"a package `diffusion` is already imported from {getattr(pkg, '__path__', pkg)}; "
                               f"run NVIDIA's code from {root} in a fresh process")
        return importlib.import_module(MODEL_MODULE)
    for name in BARE_PACKAGES:
        mod = types.ModuleType(name)
        mod.__path__ = [str(root.joinpath(*name.split(".")))]
        mod.__package__ = name
        sys.modules[name] = mod
        parent, _, leaf = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], leaf, mod)
    for name, mod in _stand_ins().items():
        sys.modules.setdefault(name, mod)
    try:
        return importlib.import_module(MODEL_MODULE)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("diffusion."):
            raise NvidiaSourceError(f"--nvidia-src {root}: NVIDIA's code imports {err.name}, which this checkout lacks "
                                    f"(a subset made for another commit? bench/nvidia_subset.sh copies "
                                    f"the files of {FILE_LIST.name})") from err
        raise


def files_digest(root: str | Path) -> str:
    """SHA-256 over the listed files of NVIDIA's code present under `root` (names and bytes): which code ran."""
    digest = hashlib.sha256()
    for name in sorted(nvidia_files()):
        path = Path(root) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def nvidia_config(root: str | Path) -> dict:
    """NVIDIA's 720p inference config (CONFIG) as a dict of sections."""
    import yaml

    return yaml.safe_load((Path(root) / CONFIG).read_text())


# Our config field → NVIDIA's model keyword argument, for the fields their config sets.
_OURS_TO_NVIDIA = {"in_channels": "in_channels", "caption_channels": "caption_channels",
                   "caption_length": "model_max_length", "mlp_ratio": "mlp_ratio", "softmax_every_n": "softmax_every_n",
                   "conv_kernel_size": "conv_kernel_size", "t_kernel_size": "t_kernel_size",
                   "plucker_channels": "chunk_plucker_channels"}


def nvidia_model_kwargs(root: str | Path, cfg: SanaWMConfig) -> dict:
    """The keyword arguments NVIDIA's inference CLI builds its model with (their dataclasses filled from CONFIG, then
    their `model_video_camctrl_init_config`), for a model of our config's size: for our full preset every size must
    equal their config's (an error names the one that does not); other presets (the CPU check's `tiny`) override
    them. Depth, width and heads are the caller's (their `SanaMSVideoCamCtrl_1600M_P1_D20` fixes them)."""
    import_nvidia(root)
    from diffusion.utils.camctrl_config import ModelVideoCamCtrlConfig, model_video_camctrl_init_config
    from diffusion.utils.config import AEConfig, SchedulerConfig, TextEncoderConfig

    raw = nvidia_config(root)

    def section(cls, key):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw.get(key) or {}) - names)
        if unknown:
            raise ValueError(f"{Path(root) / CONFIG}: {key}.{unknown} are not fields of NVIDIA's {cls.__name__} at "
                             f"this checkout")
        return cls(**(raw.get(key) or {}))

    conf = types.SimpleNamespace(model=section(ModelVideoCamCtrlConfig, "model"),
                                 text_encoder=section(TextEncoderConfig, "text_encoder"),
                                 vae=section(AEConfig, "vae"), scheduler=section(SchedulerConfig, "scheduler"),
                                 work_dir=None)  # no log file (their model logs with print then)
    kwargs = model_video_camctrl_init_config(conf, latent_size=conf.model.image_size // conf.vae.vae_stride[-1])
    mismatched = []
    for ours, theirs in _OURS_TO_NVIDIA.items():
        if kwargs[theirs] != getattr(cfg, ours):
            mismatched.append(f"{ours}={getattr(cfg, ours)} vs their {theirs}={kwargs[theirs]}")
            kwargs[theirs] = getattr(cfg, ours)
    if cfg.head_dim != kwargs["linear_head_dim"]:
        mismatched.append(f"head_dim={cfg.head_dim} vs their linear_head_dim={kwargs['linear_head_dim']}")
    if mismatched and cfg == replace_mode(PRESETS["sana_wm_1600m_720p"], cfg.camera_rms_downscale):
        raise ValueError(f"{Path(root) / CONFIG} does not describe our sana_wm_1600m_720p preset: "
                         + "; ".join(mismatched))
    return kwargs


def replace_mode(cfg: SanaWMConfig, mode: str) -> SanaWMConfig:
    return replace(cfg, camera_rms_downscale=mode)


def build_nvidia(root: str | Path, cfg: SanaWMConfig, device="cuda", pytorch_gdn: bool = False) -> torch.nn.Module:
    """NVIDIA's `SanaMSVideoCamCtrl` of our config's size, built on `device` as their inference CLI builds it (fp32
    attention on), eval mode. pytorch_gdn=True swaps their fused Triton GDN camera class for its PyTorch parent
    (`BidirectionalGDNUCPESinglePathLiteLA`, same keys; for CPU checks only: Triton kernels need a GPU), restoring
    the class afterwards."""
    nets = import_nvidia(root)
    from diffusion.model.nets import sana_gdn_camctrl_blocks
    from diffusion.model.utils import set_fp32_attention

    kwargs = nvidia_model_kwargs(root, cfg)
    saved = []
    if pytorch_gdn:  # the class is chosen by a module-level name (40151c8) or a class attribute (3f7bc74 on)
        slots = [(nets, "BidirectionalGDNUCPESinglePathLiteLABothTriton")]
        if "_camctrl_cls_gdn" in vars(nets.SanaMSVideoCamCtrl):
            slots.append((nets.SanaMSVideoCamCtrl, "_camctrl_cls_gdn"))
        saved = [(obj, name, getattr(obj, name)) for obj, name in slots]
        for obj, name in slots:
            setattr(obj, name, sana_gdn_camctrl_blocks.BidirectionalGDNUCPESinglePathLiteLA)
    try:
        with torch.device(device):
            model = nets.SanaMSVideoCamCtrl(depth=cfg.depth, hidden_size=cfg.hidden_size, patch_size=(1, 1, 1),
                                            num_heads=cfg.num_heads, **kwargs)
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
    if nvidia_config(root)["model"].get("fp32_attention", False):
        set_fp32_attention(model)
    return model.eval()


def camera_classes(model: torch.nn.Module) -> list[type]:
    """The self-attention class of each of NVIDIA's blocks."""
    return [type(block.attn) for block in model.blocks]


def downscales(cls: type) -> bool:
    """Whether NVIDIA's camera attention class `cls` shrinks its UCPE-transformed q/k/v to their pre-UCPE RMS. No when
    its camera branch (`_forward_cam_branch`) is the fused Triton one of `sana_gdn_blocks_triton.py`, whose prep
    kernel has no downscale; otherwise yes when it has their `_downscale_to_reference_rms` (the PyTorch camera
    classes before 3f7bc74, which apply it after UCPE)."""
    branch = next((c for c in cls.__mro__ if "_forward_cam_branch" in vars(c)), None)
    if branch is not None and branch.__module__.endswith("sana_gdn_blocks_triton"):
        return False
    return hasattr(cls, "_downscale_to_reference_rms")


def nvidia_downscale_mode(model: torch.nn.Module, cfg: SanaWMConfig) -> str:
    """Our `camera_rms_downscale` mode that downscales in exactly the blocks where NVIDIA's built `model` does;
    ValueError (naming the blocks) when no mode does."""
    theirs = [downscales(c) for c in camera_classes(model)]
    for mode in CAMERA_RMS_DOWNSCALE_MODES:
        if theirs == [replace_mode(cfg, mode).downscales_camera(i) for i in range(cfg.depth)]:
            return mode
    raise ValueError(f"NVIDIA's model downscales the camera branch in blocks "
                     f"{[i for i, d in enumerate(theirs) if d]}, which no camera_rms_downscale mode "
                     f"{list(CAMERA_RMS_DOWNSCALE_MODES)} reproduces")


def nvidia_state_dict(ours: torch.nn.Module, nvidia: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict (NVIDIA's official layout) for `nvidia`, after checking that the key sets and shapes agree;
    NVIDIA_ONLY_KEYS keep `nvidia`'s own values. ValueError naming every missing, unexpected or misshapen key."""
    state = dict(ours.state_dict())
    want = nvidia.state_dict()
    for key in NVIDIA_ONLY_KEYS:
        if key in want and key not in state:
            state[key] = want[key]
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = [f"{k}: ours {tuple(state[k].shape)} vs NVIDIA {tuple(want[k].shape)}"
              for k in sorted(set(state) & set(want)) if state[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        raise ValueError("our state dict does not fit NVIDIA's network: "
                         f"{len(missing)} missing {missing[:8]}, {len(unexpected)} unexpected {unexpected[:8]}, "
                         f"{len(shapes)} of another shape {shapes[:4]}")
    return state


def load_into_nvidia(ours: torch.nn.Module, nvidia: torch.nn.Module) -> None:
    """Our weights into NVIDIA's network, strictly (torch's own strict load, past their lenient override)."""
    torch.nn.Module.load_state_dict(nvidia, nvidia_state_dict(ours, nvidia), strict=True)


def set_nvidia_training(model: torch.nn.Module, on: bool) -> None:
    """NVIDIA's stage-1 training flags on `model` (`use_autograd_kernel`: their Triton kernels with a backward;
    per-block checkpointing, as their `set_grad_checkpoint`), or their inference flags back.

    In training mode NVIDIA's caption embedder replaces a sample's caption by its null embedding with probability
    `uncond_prob` (0.1) inside the network; ours leaves caption dropout to the training objective. The bench compares
    one step on the same inputs, so that in-network dropout is held at 0 while the flags are on (and restored)."""
    for m in model.modules():
        if hasattr(m, "use_autograd_kernel"):
            m.use_autograd_kernel = on
        if hasattr(m, "uncond_prob"):
            if on:
                m._bench_uncond_prob, m.uncond_prob = m.uncond_prob, 0.0
            elif hasattr(m, "_bench_uncond_prob"):
                m.uncond_prob = m._bench_uncond_prob
                del m._bench_uncond_prob
        m.grad_checkpointing = on
        m.grad_checkpointing_step = 1
    model.train(on)


def forward_fn(model, inp):
    """One forward of either network (they take the same arguments) on `dit_step.make_inputs` inputs; camera inputs
    that are None are left out (NVIDIA's model tests for the key, not the value)."""
    camera = {k: inp[v] for k, v in (("camera_conditions", "cc"), ("chunk_plucker", "pl")) if inp[v] is not None}
    return lambda: model(inp["x"], inp["t"], inp["y"], mask=inp["mask"], **camera)


def difference(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Relative L2 ‖a − b‖ / ‖b‖ and max |a − b|, in float32."""
    a, b = a.detach().float(), b.detach().float()
    return {"rel_l2": ((a - b).norm() / b.norm()).item(), "max_abs": (a - b).abs().max().item()}


def grad_difference(ours: torch.nn.Module, ref: dict[str, torch.Tensor], top: int = 8) -> dict:
    """`difference` of `ours`'s parameter gradients against `ref` (`host_grads` of NVIDIA's), all parameters as one
    vector, matched by unwrapped name (`plain_name`: our checkpointed blocks' parameters carry the wrapper's token);
    names with no gradient on either side (ours' frozen, unused ones) are left out.

    Also: `worst`, the `top` parameters with the largest share of the squared difference, each with its own relative
    L2 and both gradient norms; `only_ours` / `only_nvidia`, the names with a gradient on one side only."""
    sq_diff = sq_ref = max_abs = 0.0
    per_name = []
    names = set()
    for name, p in ours.named_parameters():
        if p.grad is None:
            continue
        name = plain_name(name)
        names.add(name)
        if name not in ref:
            continue
        g = ref[name].to(p.grad.device).float()
        d = p.grad.float() - g
        dd, gg = d.square().sum().item(), g.square().sum().item()
        sq_diff += dd
        sq_ref += gg
        max_abs = max(max_abs, d.abs().max().item())
        per_name.append((dd, name, gg, p.grad.float().square().sum().item()))
    worst = [{"name": n, "share": dd / sq_diff if sq_diff else 0.0, "rel_l2": (dd / gg) ** 0.5 if gg else float("inf"),
              "norm_ours": go ** 0.5, "norm_nvidia": gg ** 0.5} for dd, n, gg, go in sorted(per_name, reverse=True)[:top]]
    return {"rel_l2": (sq_diff / sq_ref) ** 0.5 if sq_ref else float("nan"), "max_abs": max_abs, "worst": worst,
            "only_ours": sorted(names - set(ref)), "only_nvidia": sorted(set(ref) - names)}


def train_step(fn, model):
    """One training step of `model` on the forward `fn`: fresh gradients of mean(v²); returns the output."""

    def step():
        model.zero_grad(set_to_none=True)
        out = fn()
        out.float().square().mean().backward()
        return out

    return step


COLUMNS = {"case": "case", "impl": "impl", "frames": "frames", "ms": "ms", "peak_gib": "peak GiB", "mfu": "MFU",
           "speedup": "speed-up vs NVIDIA", "rel_l2": "rel L2 vs NVIDIA", "max_abs": "max abs vs NVIDIA",
           "grad_rel_l2": "grad rel L2", "nvidia_no_grad": "params without grad in NVIDIA's step"}


class Run:
    """Both models, the options, and the rows written after every case."""

    def __init__(self, args, ours, nvidia, info: dict):
        self.args, self.ours, self.nvidia = args, ours, nvidia
        self.plain_blocks = list(ours.blocks)
        self.rows, self.results = [], dict(info=info)
        self.refs = {}  # NVIDIA's forward output per case, on the host

    def inputs(self, B: int, T: int) -> dict:
        cfg = self.ours.config
        return make_inputs(B, T, text=min(TEXT, cfg.caption_length), in_channels=cfg.in_channels,
                           caption_channels=cfg.caption_channels)

    def time(self, fn, extra_warmup: int = 0):
        return cuda_time(fn, self.args.warmup + extra_warmup, self.args.reps)

    def record(self, case, impl, B, T, ms, gib, **extra) -> dict:
        gib -= resident_gib(self.nvidia if impl.startswith("ours") else self.ours)
        cfg = self.ours.config
        flops = model_flops(cfg, (T, H, W), min(TEXT, cfg.caption_length), batch=B,
                            training=case.startswith("train")).total
        row = dict(case=case, impl=impl, B=B, T=T, frames=8 * (T - 1) + 1, ms=round(ms, 1), peak_gib=round(gib, 2),
                   mfu=f"{100 * flops / (ms * 1e-3) / H100_BF16_PEAK:.1f}%")
        nv = next((r["ms"] for r in self.rows if r["case"] == case and r["impl"] == "nvidia"), None)
        # nvidia_no_grad: parameters that get a gradient in our step and none in NVIDIA's (`grad_difference`'s
        # `only_ours`; its kernels without a backward, e.g. the Triton GDN at 40151c8): unequal work, no speed-up.
        if impl != "nvidia" and nv is not None and not extra.get("nvidia_no_grad"):
            row["speedup"] = round(nv / ms, 3)
        row.update({k: float(f"{v:.4g}") for k, v in extra.items()})
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.dump()
        return row

    def dump(self) -> None:
        self.results["rows"] = self.rows
        write_json(self.args.out, self.results)


FORWARD_CASES = (("fwd21", 2, 21), ("fwd121", 1, 121))


def run_forward(run: Run, compiled: bool) -> None:
    """fwd21 / fwd121: NVIDIA's (on the first pass) and ours, eager or compiled, with the output difference."""
    set_compiled(run.ours, run.plain_blocks, compiled)
    for case, B, T in FORWARD_CASES:
        if case not in run.args.cases:
            continue
        inp = run.inputs(B, T)
        with torch.no_grad():
            if case not in run.refs:
                ms, gib = run.time(forward_fn(run.nvidia, inp))
                run.record(case, "nvidia", B, T, ms, gib)
                run.refs[case] = forward_fn(run.nvidia, inp)().float().cpu()
            fn = forward_fn(run.ours, inp)
            ms, gib = run.time(fn, 1 if compiled else 0)
            out = fn().float().cpu()
            run.record(case, "ours+compile" if compiled else "ours", B, T, ms, gib, **difference(out, run.refs[case]))
        del inp, out
        torch.cuda.empty_cache()
    set_compiled(run.ours, run.plain_blocks, False)


def no_camera_difference(run: Run) -> dict[str, float]:
    """Ours (eager) against NVIDIA's forward at 161 frames, B = 2, without camera inputs: the part of the difference
    that is not the camera branch's."""
    inp = {**run.inputs(2, 21), "cc": None, "pl": None}
    with torch.no_grad():
        out = difference(forward_fn(run.ours, inp)(), forward_fn(run.nvidia, inp)())
    run.results["fwd21_no_camera"] = out
    print(f"fwd21 without a camera, ours vs NVIDIA: {json.dumps(out)}", flush=True)
    return out


def run_train(run: Run) -> None:
    """train21: NVIDIA's step with its training flags, then ours per --ac policy, each with the output and gradient
    difference against NVIDIA's."""
    B, T = 1, 21
    inp = run.inputs(B, T)
    set_nvidia_training(run.nvidia, True)
    run.ours.train()
    nv_step = train_step(forward_fn(run.nvidia, inp), run.nvidia)
    ms, gib = run.time(nv_step)
    run.record("train21", "nvidia", B, T, ms, gib)
    ref = nv_step().detach().float()
    ref_grads = host_grads(run.nvidia)
    run.nvidia.zero_grad(set_to_none=True)
    set_nvidia_training(run.nvidia, False)
    for policy in run.args.ac.split(","):
        set_compiled(run.ours, run.plain_blocks, False)
        parallelize(run.ours, activation_checkpointing=policy != "none",
                    ac_policy="full" if policy == "none" else policy, compile=run.args.compile)
        torch.cuda.empty_cache()
        step = train_step(forward_fn(run.ours, inp), run.ours)
        label = f"ours{'+compile' if run.args.compile else ''} ({policy} AC)"
        try:
            ms, gib = run.time(step, 1 if run.args.compile else 0)
        except torch.OutOfMemoryError:
            print(f"train21: {label} does not fit", flush=True)
            run.ours.zero_grad(set_to_none=True)
            continue
        out = step()
        grads = grad_difference(run.ours, ref_grads)
        if grads["only_ours"]:
            print(f"train21: NVIDIA's step leaves {len(grads['only_ours'])} parameters without a gradient that ours "
                  f"computes (e.g. {grads['only_ours'][:4]}): at this checkout some of its kernels have no backward, "
                  f"so its step is not a training step and no speed-up is computed against it", flush=True)
        run.record("train21", label, B, T, ms, gib, **difference(out, ref), grad_rel_l2=grads["rel_l2"],
                   grad_max_abs=grads["max_abs"], nvidia_no_grad=len(grads["only_ours"]))
        detail = {k: grads[k] for k in ("worst", "only_ours", "only_nvidia")}
        run.results.setdefault("train21_grad_detail", {})[label] = detail
        run.dump()
        print(f"train21 {label}: gradients on one side only: ours {len(detail['only_ours'])} "
              f"{detail['only_ours'][:6]}, NVIDIA {len(detail['only_nvidia'])} {detail['only_nvidia'][:6]}", flush=True)
        for w in detail["worst"]:
            print(f"  {w['name']}: {100 * w['share']:.1f} % of the difference, rel L2 {w['rel_l2']:.3g}, "
                  f"|g| ours {w['norm_ours']:.3g} vs NVIDIA {w['norm_nvidia']:.3g}", flush=True)
        run.ours.zero_grad(set_to_none=True)
    set_compiled(run.ours, run.plain_blocks, False)
    run.ours.eval()


@contextlib.contextmanager
def torch_short_conv():
    """fla's `ShortConvolution.forward` replaced, for the block, by the same depthwise causal convolution in PyTorch:
    fla runs it as a Triton kernel only, which needs a GPU. Supports what NVIDIA's blocks pass (no cache, mask,
    residual or packed sequences); optional SiLU as fla's."""
    from fla.modules import ShortConvolution

    def forward(self, x, residual=None, mask=None, cache=None, output_final_state=False, cu_seqlens=None, **kw):
        if residual is not None or mask is not None or cache is not None or cu_seqlens is not None:
            raise NotImplementedError("torch_short_conv: only plain [B, T, D] inputs (what NVIDIA's blocks pass)")
        K = self.weight.shape[-1]
        y = torch.nn.functional.conv1d(torch.nn.functional.pad(x.transpose(1, 2), (K - 1, 0)), self.weight,
                                       self.bias, groups=x.shape[-1]).transpose(1, 2)
        return (torch.nn.functional.silu(y) if self.activation else y), None

    saved = ShortConvolution.forward
    ShortConvolution.forward = forward
    try:
        yield
    finally:
        ShortConvolution.forward = saved


def reference_gradients(root: str | Path, preset: str = "tiny", T: int = 3, hw: tuple[int, int] = (4, 6)) -> dict:
    """Ours against NVIDIA's PyTorch GDN classes (`build_nvidia(pytorch_gdn=True)`, their 40151c8), float64 on the
    CPU, same weights and inputs: one training-mode forward and backward of mean(v²) each (NVIDIA's training flags,
    caption dropout held at 0). Returns the output and gradient differences (`difference`, `grad_difference`) and the
    parameters NVIDIA's backward left without a gradient. The check of our backward that the GPU bench cannot make
    where NVIDIA's Triton kernels have no backward."""
    cfg = PRESETS[preset]
    nvidia = build_nvidia(root, cfg, "cpu", pytorch_gdn=True)
    mode = nvidia_downscale_mode(nvidia, cfg)
    torch.manual_seed(0)
    ours = SanaWM(replace_mode(cfg, mode))
    wake_zero_init_paths(ours)
    load_into_nvidia(ours, nvidia)
    ours, nvidia = ours.double(), nvidia.double()
    inp = make_inputs(1, T, dtype=torch.float64, hw=hw, text=min(8, cfg.caption_length), in_channels=cfg.in_channels,
                      caption_channels=cfg.caption_channels, device="cpu")
    set_nvidia_training(nvidia, True)
    ours.train()
    outs = []
    with torch_short_conv():
        for model in (ours, nvidia):
            model.zero_grad(set_to_none=True)
            out = forward_fn(model, inp)()
            out.square().mean().backward()
            outs.append(out.detach())
    set_nvidia_training(nvidia, False)
    grads = grad_difference(ours, host_grads(nvidia), top=4)
    return {"preset": preset, "camera_rms_downscale": mode, "output": difference(*outs), "grad_rel_l2": grads["rel_l2"],
            "grad_max_abs": grads["max_abs"], "worst": grads["worst"], "only_ours": grads["only_ours"],
            "only_nvidia": grads["only_nvidia"]}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nvidia-src", default=None,
                    help="checkout of NVIDIA's public SANA code, or the subset bench/nvidia_subset.sh copies")
    ap.add_argument("--cases", default="fwd21,fwd121,train21")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time ours with per-block torch.compile")
    ap.add_argument("--no-eager", action="store_true", help="with --compile: skip our eager forward timings")
    ap.add_argument("--ac", default=None,
                    help="our checkpointing policies for train21 (full, selective, ffn (compiled only), attn, none); "
                         "default full,ffn with --compile, else full,selective")
    ap.add_argument("--camera-rms-downscale", choices=CAMERA_RMS_DOWNSCALE_MODES, default=None,
                    help="our mode (default: the one NVIDIA's checkout computes)")
    ap.add_argument("--preset", default=PRESET, choices=sorted(PRESETS),
                    help="model size of both networks (default the released 2.66 B; `tiny` for a quick check)")
    ap.add_argument("--reference-grads", action="store_true",
                    help="instead of the GPU cases: ours against NVIDIA's PyTorch GDN classes in float64 on the CPU, "
                         "outputs and gradients (`reference_gradients`; needs their 40151c8)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    unknown = sorted(set(args.cases.split(",")) - {"fwd21", "fwd121", "train21"})
    if unknown:
        ap.error(f"--cases {args.cases}: unknown {unknown}; expected a comma list of fwd21, fwd121, train21")
    bad = sorted(set(args.ac.split(",")) - {*AC_POLICIES, "none"}) if args.ac else []
    if bad:
        ap.error(f"--ac {args.ac}: unknown {bad}; expected a comma list of {', '.join(AC_POLICIES)}, none")
    args.cap_gib = None  # dit_step.run_info's memory cap: not used here
    if args.ac is None:
        args.ac = "full,ffn" if args.compile else "full,selective"
    if "ffn" in args.ac.split(",") and not args.compile:
        ap.error("--ac ffn needs --compile (the compiler makes most of its save/recompute choices)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        root = check_nvidia_src(args.nvidia_src)
        import_nvidia(root)
    except NvidiaSourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.reference_grads:
        result = {"nvidia_src": str(root), "nvidia_files_sha256": files_digest(root),
                  **reference_gradients(root, args.preset if args.preset != PRESET else "tiny")}
        print(json.dumps(result, indent=1))
        write_json(args.out, result)
        return 0
    info = run_info(args)
    info.update(nvidia_src=str(root), nvidia_files_sha256=files_digest(root))
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    cfg = PRESETS[args.preset]
    nvidia = build_nvidia(root, cfg, DEVICE)
    found = nvidia_downscale_mode(nvidia, cfg)
    mode = args.camera_rms_downscale or found
    info.update(nvidia_camera_classes=[c.__name__ for c in camera_classes(nvidia)], nvidia_downscale_mode=found,
                camera_rms_downscale=mode)
    print(f"NVIDIA's camera classes downscale like camera_rms_downscale={found!r}; ours runs {mode!r}", flush=True)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        ours = SanaWM(replace_mode(cfg, mode))
    wake_zero_init_paths(ours)
    ours = ours.to(DTYPE).eval()
    load_into_nvidia(ours, nvidia)
    nvidia = nvidia.to(DTYPE)
    run = Run(args, ours, nvidia, info)
    if "fwd21" in args.cases:
        no_camera_difference(run)
    if not (args.compile and args.no_eager):
        run_forward(run, compiled=False)
    if args.compile:
        run_forward(run, compiled=True)
    if "train21" in args.cases:
        run_train(run)
    print("\n" + markdown_table(run.rows, COLUMNS))
    run.dump()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
