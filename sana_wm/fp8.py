"""Float8 (FP8) GEMMs for the SANA-WM DiT on Ada / Hopper GPUs (compute capability 8.9+), through torchao.

torchao is an optional dependency (the ``fp8`` extra, ``torchao==0.18.0``); nothing here imports it until a
function that needs it runs, and then a missing torchao or an older GPU is a :class:`Fp8Unavailable` error naming the
requirement. No FP8 GEMM is written here: every converted layer multiplies through torchao.

Which GEMMs (:func:`fp8_targets`): the ones that run on every video token of every block — attention ``qkv``,
``proj`` and ``output_gate``, the camera branch's four projections, ``plucker_proj``, cross-attention ``q_linear``
and ``proj``, the FFN's two 1×1 convs and its temporal conv's taps — provided both feature counts are multiples of 16
(the FP8 tensor-core GEMM's requirement). Their row count is B·T·H·W (18,480 at 161 frames), and in the released
model every one is at least 2240 × 2240, where an FP8 GEMM is well ahead of bf16 even after the casts. Left in bf16:
the GDN gates ``beta_proj`` / ``gate_proj`` (as many outputs as heads, and ``gate_proj`` reads one frame mean per
frame), cross-attention ``kv_linear`` (it reads the 300 text tokens, not the video: its weight cast would cost about
what FP8 saves), and everything outside the blocks (patch and camera embedders with 128 / 48 input channels, the
timestep and caption MLPs with one row per frame or text token, and the final layer with 128 outputs, which writes
the velocity itself). In the tiny preset the same rule converts 13 layers per block, 52 in all.

Training (:func:`convert_for_training`, applied by `sana_wm.parallel.parallelize` before checkpointing, compile and
FSDP2, as torchao asks): dynamic scaling, recomputed from each tensor at every call, so there is no scale history to
checkpoint. Recipe ``tensorwise`` (the default) scales each operand by one number: the fastest recipe on H100, its
scales fuse into the compiled cast kernels and the GEMM runs cuBLAS's per-tensor-scaled FP8 path at full rate. Our
GEMM inputs are LayerNorm'd-and-modulated tokens or projections of them, so one scale per tensor loses little
(measured as a loss curve against bf16, bench/fp8.py). ``rowwise`` scales every row (token) and weight row on its own:
robust to outlier tokens, slower per GEMM. Parameters stay in their own dtype (fp32 master or bf16): each call casts
a copy, so state dicts, checkpoints, EMA and exports never hold a float8 tensor. FSDP2's float8 all-gather is off:
it would wrap the weights in a tensor subclass (which the exports would then see) for a communication saving that a
single GPU does not have.

Inference (:func:`quantize_for_inference`, `SanaWMPipeline(fp8=...)`, ``infer.py --fp8``): torchao's
``quantize_`` with ``Float8DynamicActivationFloat8WeightConfig``: the weights are stored in float8 once, activations
are scaled per call. Default recipe ``rowwise`` (a scale per token and per output channel: the lower output error,
torchao's recommendation for inference); ``tensorwise`` is the faster alternative. The FFN's 1×1 convs and temporal
taps are first turned into the ``nn.Linear`` they compute (:func:`linearize_for_inference`), so that the one
quantizer sees every target; the model's state dict is not the checkpoint's after that (inference only).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Iterator

import torch
from torch import nn

from sana_wm.models.sana_wm import PointwiseConv, TemporalConv, temporal_taps
from sana_wm.parallel import plain_name

log = logging.getLogger(__name__)

__all__ = [
    "FP8_RECIPES",
    "TORCHAO_REQUIREMENT",
    "Fp8Unavailable",
    "check_fp8_device",
    "fp8_targets",
    "convert_for_training",
    "training_config",
    "linearize_for_inference",
    "inference_targets",
    "quantize_for_inference",
    "row_padded",
    "FP8_ROW_MULTIPLE",
    "LinearTaps",
    "Float8PointwiseConv",
    "Float8TemporalConv",
]

FP8_RECIPES = ("tensorwise", "rowwise")
TORCHAO_REQUIREMENT = "torchao==0.18.0"
_TORCHAO_SERIES = "0.18."

#: Per-token GEMMs of a block (names relative to the model, wrappers' prefixes removed), see the module docstring.
_TARGET = re.compile(
    r"blocks\.\d+\.(attn\.(qkv|proj|output_gate|q_proj_cam|k_proj_cam|v_proj_cam|out_proj_cam)|plucker_proj"
    r"|cross_attn\.(q_linear|proj)|mlp\.(inverted_conv\.conv|point_conv\.conv|t_conv))"
)


class Fp8Unavailable(RuntimeError):
    """FP8 was asked for where it cannot run (no torchao, the wrong torchao, no CUDA GPU of compute capability 8.9+);
    the message names the requirement and what was found."""


def _torchao():
    try:
        import torchao
    except ImportError:
        raise Fp8Unavailable(f"FP8 needs {TORCHAO_REQUIREMENT} (pip install 'sana-wm[fp8]'); torchao is not "
                             "installed") from None
    if not torchao.__version__.startswith(_TORCHAO_SERIES):
        raise Fp8Unavailable(f"FP8 needs {TORCHAO_REQUIREMENT} (pip install 'sana-wm[fp8]'); found torchao "
                             f"{torchao.__version__}")
    return torchao


def check_fp8_device(device: torch.device | str | None = None) -> torch.device:
    """The CUDA device FP8 will run on (default: the current one) if it is compute capability 8.9+ (Ada, Hopper,
    Blackwell) and torchao is installed; otherwise :class:`Fp8Unavailable` naming the requirement."""
    need = "FP8 GEMMs need an NVIDIA GPU of compute capability 8.9 or newer (sm_89 Ada, sm_90 Hopper)"
    device = torch.device(device) if device is not None else torch.device("cuda")
    if device.type != "cuda":
        raise Fp8Unavailable(f"{need}; the device is {device}")
    if not torch.cuda.is_available():
        raise Fp8Unavailable(f"{need}; CUDA is not available")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise Fp8Unavailable(f"{need}; {torch.cuda.get_device_name(device)} is sm_{major}{minor}")
    _torchao()
    return device


def fp8_targets(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every GEMM that FP8 converts (module docstring): per-token layers of the blocks whose
    in and out features are multiples of 16. Names are `model.named_modules()`'s."""
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, PointwiseConv, TemporalConv)) or not _TARGET.fullmatch(plain_name(name)):
            continue
        out_features, in_features = module.weight.shape[:2]
        if out_features % 16 == 0 and in_features % 16 == 0:
            yield name, module


def _refuse_lora(model: nn.Module) -> None:
    # LoRA wraps the base layers in peft modules (the base `nn.Linear` one level down, the FFN's 1×1 convs as custom
    # layers) and adds rank-r GEMMs far too thin for FP8; an FP8 frozen base under trained adapters is a path of its
    # own that nothing here tests, so it is refused rather than silently left in bf16.
    if any(".lora_" in name for name, _ in model.named_parameters()):
        raise ValueError("FP8 with LoRA adapters is not supported: the model has LoRA parameters; train the adapters "
                         "in bf16 (model.fp8=false) or fine-tune without LoRA")


# ---------------------------------------------------------------------------------------------------------------------
# Training: torchao's Float8Linear, and the same GEMM for the FFN's convs
# ---------------------------------------------------------------------------------------------------------------------


def _linear_mm_config(config):
    """torchao's per-GEMM settings for `config`, as its Float8Linear builds them (one source for every layer)."""
    from torchao.float8.float8_linear import Float8Linear

    with torch.device("meta"):
        return Float8Linear(16, 16, bias=False, config=config).linear_mm_config


#: The weight gradient of a float8 GEMM contracts over its rows (tokens), and the float8 tensor-core GEMM needs every
#: contracted dimension to be a multiple of 16. Row counts B·T·H·W are not always one (a temporal tap reads T − 1
#: frames; many resolutions have H·W tokens per frame that are not), so rows are zero-padded up to one: zero rows add
#: nothing to the weight gradient, do not change an amax, and their outputs are cut off.
FP8_ROW_MULTIPLE = 16


def row_padded(gemm, x: torch.Tensor) -> torch.Tensor:
    """``gemm(x)`` of x [..., K] run on its rows zero-padded to a multiple of `FP8_ROW_MULTIPLE` (no copy when the
    count already is one), the padded rows' outputs dropped."""
    rows = x.numel() // x.shape[-1]
    pad = -rows % FP8_ROW_MULTIPLE
    if pad == 0:
        return gemm(x)
    y = gemm(torch.nn.functional.pad(x.reshape(rows, x.shape[-1]), (0, 0, 0, pad)))[:rows]
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config, mm_config) -> torch.Tensor:
    """y = x·weightᵀ + bias with torchao's float8 autograd GEMM, exactly as torchao's Float8Linear.forward runs it
    (its autocast handling included), for a 2-D ``weight`` that is a view of a conv-shaped parameter; rows padded as
    `row_padded` says."""
    from torchao.float8.float8_linear import matmul_with_hp_or_float8_args

    if torch.is_autocast_enabled("cuda"):
        x = x.to(torch.get_autocast_dtype("cuda"))
    out = row_padded(lambda z: matmul_with_hp_or_float8_args.apply(z, weight.t(), mm_config, config), x)
    return out if bias is None else out + bias.to(out.dtype)


@functools.cache
def _row_padded_float8_linear():
    """torchao's Float8Linear with its rows padded as `row_padded` says (same parameters and state dict); a class made
    on first use because torchao is optional."""
    from torchao.float8.float8_linear import Float8Linear

    class RowPaddedFloat8Linear(Float8Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return row_padded(super().forward, x)

    return RowPaddedFloat8Linear


class Float8PointwiseConv(PointwiseConv):
    """A :class:`PointwiseConv` (the FFN's 1×1 convs) whose GEMM runs in float8 through torchao; same parameters,
    same conv-shaped weight and state-dict layout."""

    @classmethod
    def from_module(cls, module: PointwiseConv, config) -> Float8PointwiseConv:
        out_ch, in_ch = module.weight.shape[:2]
        with torch.device("meta"):
            new = cls(in_ch, out_ch, module.weight.dim() - 2, bias=module.bias is not None)
        new.weight, new.bias = module.weight, module.bias
        new.fp8_config, new.linear_mm_config = config, _linear_mm_config(config)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fp8_linear(x, self.weight.flatten(1), self.bias, self.fp8_config, self.linear_mm_config)


class Float8TemporalConv(TemporalConv):
    """A :class:`TemporalConv` whose per-tap GEMMs run in float8 through torchao (each tap scaled on its own); same
    parameter and state-dict layout."""

    @classmethod
    def from_module(cls, module: TemporalConv, config) -> Float8TemporalConv:
        with torch.device("meta"):
            new = cls(module.weight.shape[0], module.kernel_size[0])
        new.weight = module.weight
        new.fp8_config, new.linear_mm_config = config, _linear_mm_config(config)
        return new

    def tap(self, y: torch.Tensor, j: int) -> torch.Tensor:
        return _fp8_linear(y, self.weight[:, :, j, 0], None, self.fp8_config, self.linear_mm_config)


_TRAINING_TYPES = {PointwiseConv: Float8PointwiseConv, TemporalConv: Float8TemporalConv}


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _check_recipe(recipe: str) -> None:
    if recipe not in FP8_RECIPES:
        raise ValueError(f"FP8 recipe {recipe!r} is not valid; expected one of {list(FP8_RECIPES)}")


def training_config(recipe: str = "tensorwise", *, emulate: bool = False):
    """torchao's `Float8LinearConfig` for `recipe` (`FP8_RECIPES`). emulate: cast to float8 and back but multiply
    in high precision (torchao's emulation: runs on any device, for tests; never fast)."""
    _check_recipe(recipe)
    _torchao()
    from torchao.float8 import Float8LinearConfig

    config = Float8LinearConfig.from_recipe_name(recipe)
    return dataclasses.replace(config, emulate=True) if emulate else config


def convert_for_training(model: nn.Module, recipe: str = "tensorwise", *, emulate: bool = False) -> int:
    """Swap the `fp8_targets` of `model` for float8-training layers in place (torchao's Float8Linear for the
    ``nn.Linear`` ones, :class:`Float8PointwiseConv` / :class:`Float8TemporalConv` for the FFN's convs); returns how
    many were swapped. Idempotent. Parameters (objects, dtypes, names, shapes) are unchanged.

    Raises :class:`Fp8Unavailable` without torchao or, unless ``emulate``, without a CUDA GPU of compute capability
    8.9+; ValueError for an unknown recipe or a model with LoRA adapters.
    """
    config = training_config(recipe, emulate=emulate)
    if not emulate:
        check_fp8_device()
    _refuse_lora(model)
    from torchao.float8 import convert_to_float8_training

    targets = dict(fp8_targets(model))
    linears = {name for name, m in targets.items() if type(m) is nn.Linear}
    convert_to_float8_training(model, module_filter_fn=lambda m, fqn: fqn in linears, config=config)
    for name in linears:
        model.get_submodule(name).__class__ = _row_padded_float8_linear()
    swapped = len(linears)
    for name, module in targets.items():
        if type(module) in _TRAINING_TYPES:
            _set_child(model, name, _TRAINING_TYPES[type(module)].from_module(module, config))
            swapped += 1
    log.info("fp8 (%s%s): %d GEMM layers in float8", recipe, ", emulated" if emulate else "", swapped)
    return swapped


# ---------------------------------------------------------------------------------------------------------------------
# Inference: torchao's quantize_
# ---------------------------------------------------------------------------------------------------------------------


class LinearTaps(nn.Module):
    """A :class:`TemporalConv` with each tap an ``nn.Linear`` (inference only: weight quantizers see Linears; the
    state dict is not the checkpoint's). ``kernel_size`` as the conv's."""

    def __init__(self, conv: TemporalConv):
        super().__init__()
        self.kernel_size = conv.kernel_size
        out_ch, in_ch = conv.weight.shape[:2]
        self.taps = nn.ModuleList()
        for j in range(conv.kernel_size[0]):
            tap = nn.Linear(in_ch, out_ch, bias=False, device="meta")
            tap.weight = nn.Parameter(conv.weight.detach()[:, :, j, 0].contiguous(), requires_grad=False)
            self.taps.append(tap)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return temporal_taps(y, self.kernel_size[0], lambda z, j: self.taps[j](z))


def _as_linear(conv: PointwiseConv) -> nn.Linear:
    out_ch, in_ch = conv.weight.shape[:2]
    linear = nn.Linear(in_ch, out_ch, bias=conv.bias is not None, device="meta")
    linear.weight = nn.Parameter(conv.weight.detach().flatten(1), requires_grad=False)  # a view: no copy
    if conv.bias is not None:
        linear.bias = nn.Parameter(conv.bias.detach(), requires_grad=False)
    return linear


def linearize_for_inference(model: nn.Module) -> list[str]:
    """Replace the FFN's 1×1 convs and temporal convs among the `fp8_targets` by the ``nn.Linear`` GEMMs they
    compute (same outputs; inference only, the state dict changes) and return the names of every target Linear."""
    names = []
    for name, module in list(fp8_targets(model)):
        if isinstance(module, TemporalConv):
            taps = LinearTaps(module)
            _set_child(model, name, taps)
            names += [f"{name}.taps.{j}" for j in range(len(taps.taps))]
            continue
        if isinstance(module, PointwiseConv):
            _set_child(model, name, _as_linear(module))
        names.append(name)
    return names


def quantize_for_inference(model: nn.Module, recipe: str = "rowwise",
                           device: torch.device | str | None = None) -> int:
    """Store the `fp8_targets` weights of a bfloat16 `model` in float8 (torchao ``quantize_`` with
    ``Float8DynamicActivationFloat8WeightConfig``: weights quantized once, activations per call) and return how many
    GEMMs were quantized. The model must be on `device`, a CUDA GPU of compute capability 8.9+.

    Raises :class:`Fp8Unavailable` (no torchao, no such GPU) or ValueError (unknown recipe, LoRA adapters, a model
    not in bfloat16).
    """
    _check_recipe(recipe)
    check_fp8_device(device)
    _refuse_lora(model)
    dtypes = {p.dtype for _, m in fp8_targets(model) for p in m.parameters()}
    if dtypes != {torch.bfloat16}:
        raise ValueError(f"FP8 inference needs the DiT in bfloat16 (torchao scales from bf16 weights); its layers are "
                         f"{sorted(str(d).replace('torch.', '') for d in dtypes)} (infer.py: --dtype bf16 or auto)")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    names, zero_rows = inference_targets(model)
    if zero_rows:
        log.warning("fp8 inference: %d layer(s) keep bf16 weights because a weight row is all zero (a zero-initialised "
                    "layer, e.g. an untrained output gate), whose float8 scale would be 0: %s", len(zero_rows),
                    ", ".join(zero_rows[:4]) + (" …" if len(zero_rows) > 4 else ""))
    granularity = PerRow() if recipe == "rowwise" else PerTensor()
    # torchao scales by amax / 448 and divides by that scale: an all-zero activation row (rowwise) or tensor would be
    # 0 / 0. A floor far below any real activation keeps such rows exactly zero and leaves every other scale alone.
    # set_inductor_config=False: torchao would otherwise change global Inductor settings for the whole process, and
    # compiled bf16 and FP8 runs would no longer be compiled alike.
    config = Float8DynamicActivationFloat8WeightConfig(granularity=granularity, activation_value_lb=_ACTIVATION_AMAX_FLOOR,
                                                       set_inductor_config=False)
    quantize_(model, config, filter_fn=lambda m, fqn: fqn in names)
    log.info("fp8 inference (%s): %d GEMMs with float8 weights", recipe, len(names))
    return len(names)


_ACTIVATION_AMAX_FLOOR = 1e-12


def inference_targets(model: nn.Module) -> tuple[set[str], list[str]]:
    """(names of the Linears to store in float8, names left in bf16) after `linearize_for_inference`: a layer with an
    all-zero weight row stays in bf16, because torchao divides that row by its zero scale (NaN outputs)."""
    names = set(linearize_for_inference(model))
    zero_rows = sorted(n for n in names if (model.get_submodule(n).weight == 0).all(dim=1).any())
    return names - set(zero_rows), zero_rows
