"""Typed configuration schemas of the trainer, registered in Hydra's ConfigStore.

`configs/train.yaml` starts its defaults list with ``train_schema`` (the :class:`TrainConfig` dataclass below), so
every YAML file and command-line override is merged onto typed nodes: a misspelt key fails at composition with
``Key 'lr_' not in 'OptimConfig'  full_key: optim.lr_``, a wrong type fails with the key and the value. Values that
types cannot express (a strategy name, a probability in [0, 1]) are checked by :func:`validate_config`, which names
the key, the bad value and what was expected.

`OmegaConf.to_object(cfg)` turns a composed config into these dataclasses; modules receive dataclasses, never a
DictConfig, so a module's inputs are typed and documented where it is defined.

Groups (see configs/): model, data, trainer, strategy, logger, experiment. The other sections (objective, optim,
ema, lora, encoders, checkpoint, validation, monitor, paths) are plain keys with defaults from the schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING

__all__ = [
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "EMAConfig",
    "LoraConfig",
    "EncoderConfig",
    "DataConfig",
    "TrainerConfig",
    "StrategyConfig",
    "LoggerConfig",
    "CheckpointConfig",
    "ValidationConfig",
    "MonitorConfig",
    "PathsConfig",
    "TrainConfig",
    "ConfigError",
    "register_configs",
    "validate_config",
    "DEFAULT_LORA_TARGETS",
    "check_validation_actions",
]


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent; the message names the key and the expected form."""


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The DiT to train: a preset plus field overrides, and where its initial weights come from.

    preset: ``sana_wm_1600m_720p`` or ``tiny`` (see `sana_wm.models.PRESETS`). The fields from ``in_channels`` to
    ``camera_rms_downscale`` override the preset's `SanaWMConfig` field of the same name when not null;
    ``camera_rms_downscale`` (``none`` | ``softmax`` | ``all``) must match what ``init_checkpoint`` records.
    init_checkpoint: official/diffusers-layout safetensors (or a `.pt`) loaded strictly before training; null =
    NVIDIA's training initialisation. activation_checkpointing: recompute each block in backward (non-reentrant).
    ac_policy: "full" (recompute whole blocks), "selective" (keep GEMM/attention/scan outputs, recompute the
    element-wise work: less recompute, more memory), "ffn" (keep those, recompute only the FFN's wide middle and let
    the compiler's partitioner choose for the rest; needs compile=true) or "attn" (as "full", but keep the
    self-attention outputs: the softmax blocks' attention runs once, for < 1 GiB at 161 frames). ac_blocks: checkpoint only the first K blocks,
    the others keep all activations (faster, more memory; null = every block). compile: `torch.compile` each block,
    the prologue (`SanaWM.embed`) and the final layer. fp8: train the per-token GEMMs of the blocks in float8
    (torchao, `sana_wm.fp8`: the `fp8` extra and a GPU of compute capability 8.9+; pair it with compile=true, and not
    with LoRA); fp8_recipe: its scaling, ``tensorwise`` (one scale per tensor: the fastest) or ``rowwise`` (a scale per
    row: robust to outlier tokens, slower). Checkpoints and exports stay in the parameters' own dtype either way.
    """

    preset: str = "tiny"
    in_channels: int | None = None
    out_channels: int | None = None
    hidden_size: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    caption_channels: int | None = None
    caption_length: int | None = None
    softmax_every_n: int | None = None
    conv_kernel_size: int | None = None
    t_kernel_size: int | None = None
    plucker_channels: int | None = None
    frequency_embedding_size: int | None = None
    gdn_eps: float | None = None
    reference_numerics: bool | None = None
    camera_rms_downscale: str | None = None
    init_checkpoint: str | None = None
    activation_checkpointing: bool = False
    ac_policy: str = "full"
    ac_blocks: int | None = None
    compile: bool = False
    fp8: bool = False
    fp8_recipe: str = "tensorwise"

    #: fields that are not SanaWMConfig overrides
    NON_ARCH_FIELDS = ("preset", "init_checkpoint", "activation_checkpointing", "ac_policy", "ac_blocks", "compile",
                       "fp8", "fp8_recipe")

    def overrides(self) -> dict[str, Any]:
        """The non-null architecture overrides, as keyword arguments of `SanaWM.from_preset`."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in self.NON_ARCH_FIELDS and getattr(self, f.name) is not None
        }


# ---------------------------------------------------------------------------------------------------------------------
# Objective, optimiser, EMA, LoRA
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ObjectiveConfig:
    """Rectified-flow training objective (docs/design/diffusion.md §2–§3).

    flow_shift: σ′ = sσ/(1+(s−1)σ) on the training table (9.95 released; 3.0 in the SANA-Video base recipe).
    timestep_sampling: ``logit_normal`` (u = sigmoid(N(logit_mean, logit_std))) or ``uniform``.
    per_frame_timesteps: an independent σ per latent frame (diffusion forcing) instead of one per sample.
    image_condition_prob: probability that latent frame 0 is kept clean (σ = 0) and excluded from the loss.
    caption_dropout: probability that a caption is replaced by the model's null-caption table (CFG training).
    """

    flow_shift: float = 9.95
    timestep_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    per_frame_timesteps: bool = False
    image_condition_prob: float = 0.9
    caption_dropout: float = 0.1


@dataclass
class OptimConfig:
    """AdamW with parameter groups and a warm-up + constant/cosine schedule (defaults: the released recipe).

    weight_decay applies to matrices only: biases, norms, AdaLN tables and gate parameters (names containing one of
    ``no_decay``) get 0. grad_clip: global-norm clipping (0 or null disables). scheduler: ``constant`` or
    ``cosine`` (from lr after warm-up down to lr·min_lr_ratio at ``decay_steps``, default trainer.max_steps).
    """

    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-10
    weight_decay: float = 0.0
    grad_clip: float | None = 0.5
    scheduler: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    decay_steps: int | None = None
    no_decay: list[str] = field(
        default_factory=lambda: ["bias", "norm", "scale_shift_table", "gate", "A_log", "dt_bias", "lora_magnitude"]
    )
    foreach: bool | None = None


@dataclass
class EMAConfig:
    """Exponential moving average of the trained weights (off in the released recipe).

    decay: per update. start_step: optimizer step from which EMA starts (weights are copied then). update_every:
    update every n optimizer steps (decay is compounded accordingly). use_for_export: export/validate with EMA weights.
    """

    enabled: bool = False
    decay: float = 0.9999
    start_step: int = 0
    update_every: int = 1
    use_for_export: bool = True


#: Default LoRA targets: attention (main + cross), FFN and the camera branch (UCPE projections, Plücker injection).
#: Patterns are regular expressions matched against the full module name (`re.fullmatch`).
DEFAULT_LORA_TARGETS = [
    r"blocks\.\d+\.attn\.(qkv|proj|output_gate)",
    r"blocks\.\d+\.cross_attn\.(q_linear|kv_linear|proj)",
    r"blocks\.\d+\.mlp\.(inverted_conv|point_conv)\.conv",
    r"blocks\.\d+\.attn\.(q_proj_cam|k_proj_cam|v_proj_cam|out_proj_cam)",
    r"blocks\.\d+\.plucker_proj",
]


@dataclass
class LoraConfig:
    """LoRA fine-tuning with peft: only adapters are trained and saved.

    rank, alpha, dropout: the usual LoRA knobs (scale alpha/rank). target_modules: regexes over module names (see
    DEFAULT_LORA_TARGETS). init: ``zero`` (B = 0, the fine-tune starts exactly at the base model) or ``gaussian``.
    adapter: an adapter safetensors to start from (checked against the base checkpoint's hash).
    save_every_n_steps: write ``adapters/step_XXXXXXX.safetensors`` this often (0: only the last).
    """

    enabled: bool = False
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    init: str = "zero"
    adapter: str | None = None
    save_every_n_steps: int = 0


@dataclass
class EncoderConfig:
    """Frozen encoders, needed for video batches (encoded on the fly), the null caption and validation videos.

    kind: ``none`` (cached latents only), ``pretrained`` (local diffusers-layout folders) or ``tiny_random`` (seeded
    tiny random LTX-2 VAE + Gemma-2 + in-process tokenizer, for tests and the CPU demo; never for real training).
    vae / text_encoder: local folders (diffusers layout, or a pipeline root with vae/, text_encoder/, tokenizer/).
    dtype: parameter dtype of both encoders. set_null_embedding: write the text encoder's encoding of "" into the
    DiT's null-caption table before training (skipped when the checkpoint already carries a trained table).
    """

    kind: str = "none"
    vae: str | None = None
    text_encoder: str | None = None
    dtype: str = "bfloat16"
    set_null_embedding: bool = True


# ---------------------------------------------------------------------------------------------------------------------
# Data, trainer, strategy, logger
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """WebDataset shards (data/README.md). ``latent`` shards come from `python -m sana_wm.training.cache`; ``video``
    shards are encoded on the fly with the frozen encoders (slower).

    train_shards / val_shards: a list, brace pattern, glob, directory or manifest.json. batch_size: per device.
    num_frames / height / width / target_fps / frame_sampling: video shards only. shuffle_buffer: samples.
    resampled: infinite stream of shards drawn with replacement (multi-node); samples_per_epoch then sets the epoch
    length per rank. strict: stop on the first bad sample instead of skipping it.
    """

    kind: str = "latent"
    train_shards: Any = MISSING
    val_shards: Any = None
    batch_size: int = 1
    val_batch_size: int | None = None
    num_workers: int = 2
    shuffle_buffer: int = 64
    resampled: bool = False
    samples_per_epoch: int | None = None
    num_frames: int = 161
    height: int = 704
    width: int = 1280
    target_fps: float | None = 16.0
    frame_sampling: str = "random"
    strict: bool = False
    pin_memory: bool = True
    persistent_workers: bool = False


@dataclass
class TrainerConfig:
    """Arguments of `lightning.Trainer` (the strategy, logger, callbacks and clipping are built from other sections)."""

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: str = "bf16-mixed"
    max_steps: int = -1
    max_epochs: int | None = None
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    limit_val_batches: Any = 1.0
    num_sanity_val_steps: int = 0
    enable_progress_bar: bool = True
    deterministic: Any = False
    detect_anomaly: bool = False
    benchmark: bool | None = None


@dataclass
class StrategyConfig:
    """How the model is distributed (one schema for every strategy; unused fields are ignored).

    name: ``auto`` (single device), ``ddp``, ``fsdp`` (Lightning's FSDPStrategy, one unit per block), ``fsdp2``
    (FSDP2 `fully_shard` with context parallelism, Lightning's ModelParallelStrategy: `sana_wm.training.fsdp2`) or
    ``deepspeed`` (ZeRO ``stage`` 2 or 3). process_group_backend: null = nccl on GPU, gloo on CPU.
    cp_size (fsdp2): ranks that share one clip, each computing a contiguous slice of its latent frames; the mesh is
    (world / cp_size) × cp_size. param_dtype (fsdp2): the dtype FSDP2 computes in (float32 master weights, float32
    gradient reduction).
    fsdp_sharding: FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD. fsdp_state_dict: ``full`` (one consolidated
    file, exportable directly) or ``sharded`` (a folder per checkpoint; faster at scale).
    """

    name: str = "auto"
    process_group_backend: str | None = None
    timeout_minutes: int = 30
    find_unused_parameters: bool = False
    static_graph: bool = False
    gradient_as_bucket_view: bool = True
    fsdp_sharding: str = "FULL_SHARD"
    fsdp_state_dict: str = "full"
    fsdp_cpu_offload: bool = False
    fsdp_limit_all_gathers: bool = True
    cp_size: int = 1
    param_dtype: str = "bfloat16"
    stage: int = 2
    offload_optimizer: bool = False
    offload_parameters: bool = False
    allgather_bucket_size: int = 200_000_000
    reduce_bucket_size: int = 200_000_000
    contiguous_gradients: bool = True
    overlap_comm: bool = True


@dataclass
class LoggerConfig:
    """Experiment logger: ``csv`` (always works), ``wandb`` (online, or offline with ``offline: true``), ``none``."""

    name: str = "csv"
    project: str = "sana-wm"
    entity: str | None = None
    run_name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    offline: bool = False
    save_dir: str | None = None


@dataclass
class CheckpointConfig:
    """Periodic + best + last Lightning checkpoints (full training state, for resume) and the final export.

    every_n_steps: periodic checkpoints ``step_XXXXXXX.ckpt`` (0 disables); keep_periodic: how many to keep (-1 all).
    monitor: metric for ``best.ckpt`` (null disables; needs validation). resume: a ``.ckpt`` path or ``last`` (the
    run's last.ckpt if it exists). export_on_end: write ``export/dit.safetensors`` (official layout; EMA weights when
    enabled) or, with LoRA, ``adapters/last.safetensors`` when training ends.
    """

    dirpath: str | None = None
    every_n_steps: int = 1000
    keep_periodic: int = 3
    save_last: bool = True
    monitor: str | None = "val/loss"
    mode: str = "min"
    resume: str | None = None
    export_on_end: bool = True
    export_layout: str = "official"


@dataclass
class ValidationConfig:
    """Periodic validation videos through `sana_wm.inference.pipeline` (needs encoders). every_n_steps: 0 disables."""

    every_n_steps: int = 0
    prompts: list[str] = field(default_factory=lambda: ["A first-person walk through a quiet room."])
    actions: list[str] = field(default_factory=lambda: ["w-16"])  # 17 poses: one per frame of the 17-frame clip
    image: str | None = None
    num_frames: int = 17
    num_steps: int = 20
    guidance_scale: float = 5.0
    flow_shift: float = 9.8
    fps: int = 16
    seed: int = 42
    # Camera accuracy of the validation videos: a pose estimator as "package.module:factory" (None: not measured),
    # its keyword arguments, and the frame stride it sees (see sana_wm.eval.estimator.camera_accuracy).
    estimator: str | None = None
    estimator_kwargs: dict[str, Any] = field(default_factory=dict)
    estimator_interval: int = 4


@dataclass
class MonitorConfig:
    """Throughput logging: tokens/s, samples/s and MFU against ``peak_flops`` per device (H100 dense bf16)."""

    peak_flops: float = 989.4e12
    text_tokens: int | None = None
    log_every_n_steps: int = 10


@dataclass
class PathsConfig:
    """Roots referenced by the configs (override them per machine, e.g. `paths.data_root=/lustre/...`)."""

    data_root: str = "data_cache"
    model_root: str = "models/SANA-WM_bidirectional"
    output_root: str = "outputs"


@dataclass
class TrainConfig:
    """Root of `configs/train.yaml`. output_dir holds logs, checkpoints and exports of the run. dry_run: print the
    run's plan (mesh, frames and tokens per rank, memory per GPU; `sana_wm.training.plan`) and exit."""

    task_name: str = "train"
    dry_run: bool = False
    seed: int = 3407
    output_dir: str = "${paths.output_root}/${task_name}"
    tags: list[str] = field(default_factory=list)
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    encoders: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


_REGISTERED = False


def register_configs() -> None:
    """Register the schema as ``train_schema`` in Hydra's ConfigStore (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    _REGISTERED = True


# ---------------------------------------------------------------------------------------------------------------------
# Value checks (types are enforced by OmegaConf; ranges and choices here)
# ---------------------------------------------------------------------------------------------------------------------


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not valid; expected one of {list(allowed)}")


def _range(key: str, value: float, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        bracket = "(" if lo_open else "["
        raise ConfigError(f"{key}={value!r} is out of range; expected a value in {bracket}{lo}, {hi}]")


def check_validation_actions(actions: list[str], num_frames: int) -> None:
    """Every validation action must give at least ``num_frames`` poses: the sampler would cut the clip to a shorter
    trajectory without a word. Raises ConfigError naming the action."""
    from sana_wm.camera import action_to_c2w

    for i, action in enumerate(actions):
        try:
            n = action_to_c2w(action).shape[0]
        except ValueError as err:
            raise ConfigError(f"validation.actions[{i}] = {action!r}: {err}") from None
        if n < num_frames:
            raise ConfigError(
                f"validation.actions[{i}] = {action!r} gives {n} frames but validation.num_frames = {num_frames}; "
                "lengthen the action (N DSL frames give N + 1 poses) or lower validation.num_frames"
            )


def _check_fp8(cfg: TrainConfig) -> None:
    """model.fp8=true: the combinations that cannot or do not (yet) train in float8 fail here, naming the keys."""
    if cfg.lora.enabled:
        # The adapters' base layers are peft wrappers and their own GEMMs are rank-r thin: sana_wm.fp8 refuses them.
        raise ConfigError("model.fp8=true with lora.enabled=true is not supported (the LoRA base layers stay peft "
                          "modules); set model.fp8=false for LoRA fine-tuning")
    if cfg.trainer.accelerator == "cpu":
        raise ConfigError("model.fp8=true needs an NVIDIA GPU of compute capability 8.9+ (Ada, Hopper); "
                          "trainer.accelerator='cpu'")
    if cfg.strategy.name in ("fsdp", "deepspeed"):
        # Lightning's FSDP (flat parameters) and DeepSpeed (its own linear autograd functions under ZeRO-3) wrap the
        # float8 layers in ways nothing here verifies; FSDP2 shards them per parameter, as torchao documents.
        raise ConfigError(f"model.fp8=true is not supported with strategy.name={cfg.strategy.name!r}; use auto, ddp "
                          "or fsdp2")


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check choices and ranges that types cannot express; raises ConfigError naming the key. Returns cfg."""
    from sana_wm.context_parallel import check_compile_checkpointing
    from sana_wm.fp8 import FP8_RECIPES
    from sana_wm.models import CAMERA_RMS_DOWNSCALE_MODES, PRESETS
    from sana_wm.parallel import AC_POLICIES

    _choice("model.preset", cfg.model.preset, tuple(sorted(PRESETS)))
    if cfg.model.camera_rms_downscale is not None:
        _choice("model.camera_rms_downscale", cfg.model.camera_rms_downscale, CAMERA_RMS_DOWNSCALE_MODES)
    _choice("model.ac_policy", cfg.model.ac_policy, AC_POLICIES)
    _choice("model.fp8_recipe", cfg.model.fp8_recipe, FP8_RECIPES)
    if cfg.model.ac_blocks is not None:
        depth = cfg.model.depth or PRESETS[cfg.model.preset].depth
        _range("model.ac_blocks", cfg.model.ac_blocks, 0, depth)
    if cfg.validation.every_n_steps > 0:
        check_validation_actions(list(cfg.validation.actions), cfg.validation.num_frames)
    o = cfg.objective
    _range("objective.flow_shift", o.flow_shift, 0.0, float("inf"), lo_open=True)
    _choice("objective.timestep_sampling", o.timestep_sampling, ("logit_normal", "uniform"))
    _range("objective.logit_std", o.logit_std, 0.0, float("inf"), lo_open=True)
    _range("objective.image_condition_prob", o.image_condition_prob, 0.0, 1.0)
    _range("objective.caption_dropout", o.caption_dropout, 0.0, 1.0)
    p = cfg.optim
    _range("optim.lr", p.lr, 0.0, float("inf"), lo_open=True)
    if len(p.betas) != 2 or not all(0.0 <= b < 1.0 for b in p.betas):
        raise ConfigError(f"optim.betas={list(p.betas)!r} is not valid; expected two values in [0, 1)")
    _range("optim.eps", p.eps, 0.0, float("inf"), lo_open=True)
    _range("optim.weight_decay", p.weight_decay, 0.0, float("inf"))
    if p.grad_clip is not None:
        _range("optim.grad_clip", p.grad_clip, 0.0, float("inf"))
    _choice("optim.scheduler", p.scheduler, ("constant", "cosine"))
    _range("optim.warmup_steps", p.warmup_steps, 0, float("inf"))
    _range("optim.min_lr_ratio", p.min_lr_ratio, 0.0, 1.0)
    if cfg.ema.enabled:
        _range("ema.decay", cfg.ema.decay, 0.0, 1.0)
        _range("ema.update_every", cfg.ema.update_every, 1, float("inf"))
    if cfg.lora.enabled:
        _range("lora.rank", cfg.lora.rank, 1, float("inf"))
        _range("lora.alpha", cfg.lora.alpha, 0.0, float("inf"), lo_open=True)
        _range("lora.dropout", cfg.lora.dropout, 0.0, 1.0)
        _choice("lora.init", cfg.lora.init, ("zero", "gaussian"))
        if not cfg.lora.target_modules:
            raise ConfigError("lora.target_modules is empty; give at least one module-name regex")
    _choice("encoders.kind", cfg.encoders.kind, ("none", "pretrained", "tiny_random"))
    _choice("encoders.dtype", cfg.encoders.dtype, ("float32", "bfloat16", "float16"))
    if cfg.encoders.kind == "pretrained" and not cfg.encoders.vae and not cfg.encoders.text_encoder:
        raise ConfigError("encoders.kind='pretrained' needs encoders.vae and/or encoders.text_encoder (local folders)")
    d = cfg.data
    _choice("data.kind", d.kind, ("latent", "video"))
    if d.kind == "video" and cfg.encoders.kind == "none":
        raise ConfigError(
            "data.kind='video' encodes clips on the fly and needs encoders (set encoders.kind='pretrained' with "
            "encoders.vae and encoders.text_encoder), or cache latents first: python -m sana_wm.training.cache"
        )
    _range("data.batch_size", d.batch_size, 1, float("inf"))
    _range("data.num_workers", d.num_workers, 0, float("inf"))
    _choice("data.frame_sampling", d.frame_sampling, ("random", "start", "center"))
    if d.resampled and not d.samples_per_epoch:
        raise ConfigError("data.resampled=true draws shards forever; set data.samples_per_epoch (per rank) too")
    s = cfg.strategy
    _choice("strategy.name", s.name, ("auto", "ddp", "fsdp", "fsdp2", "deepspeed"))
    _range("strategy.cp_size", s.cp_size, 1, float("inf"))
    if s.cp_size > 1 and s.name != "fsdp2":
        raise ConfigError(f"strategy.cp_size={s.cp_size} (context parallelism) needs strategy=fsdp2; got "
                          f"strategy.name={s.name!r}")
    check_compile_checkpointing(s.cp_size, cfg.model.compile, cfg.model.activation_checkpointing,
                                f"strategy.cp_size={s.cp_size} with model.compile=true and "
                                "model.activation_checkpointing=true", ConfigError)
    _choice("strategy.param_dtype", s.param_dtype, ("float32", "bfloat16", "float16"))
    if cfg.ema.enabled and (s.name in ("fsdp", "fsdp2") or (s.name == "deepspeed" and s.stage == 3)):
        # Under weight sharding each rank's parameters are shards (FSDP) or empty placeholders (ZeRO-3), so the EMA
        # would average shards that the checkpoint (written by rank 0) cannot hold whole. Refuse rather than save a
        # partial or empty average.
        where = f"strategy={s.name}" if s.name.startswith("fsdp") else "strategy=deepspeed_zero3"
        raise ConfigError(
            f"ema.enabled=true is not supported with {where} (sharded weights); use strategy=ddp or "
            "deepspeed_zero2, or set ema.enabled=false"
        )
    if cfg.model.activation_checkpointing and cfg.model.ac_blocks is not None and s.name == "fsdp":
        raise ConfigError(f"model.ac_blocks={cfg.model.ac_blocks} is not supported with strategy=fsdp (Lightning "
                          "checkpoints every block by module policy); use null, or strategy=ddp / deepspeed")
    if cfg.model.activation_checkpointing and cfg.model.ac_policy == "ffn" and not cfg.model.compile:
        # "ffn" leaves most save/recompute choices to torch.compile's partitioner; eagerly it would keep every output.
        raise ConfigError("model.ac_policy='ffn' needs model.compile=true; use 'selective' for an uncompiled model")
    if cfg.model.activation_checkpointing and cfg.model.ac_policy != "full":
        if s.name == "fsdp":
            # Lightning's FSDPStrategy applies checkpointing itself, by module policy, and only whole blocks.
            raise ConfigError(f"model.ac_policy={cfg.model.ac_policy!r} is not supported with strategy=fsdp; use 'full'")
        if s.name == "deepspeed" and s.stage == 3:
            # ZeRO-3 swaps F.linear for its own autograd Function; selective recompute then replays cached GEMM
            # outputs against a different op sequence and the gradients come out wrong (measured: 2x off on CPU).
            raise ConfigError(
                f"model.ac_policy={cfg.model.ac_policy!r} is not supported with strategy=deepspeed_zero3; use 'full'"
            )
    if cfg.model.fp8:
        _check_fp8(cfg)
    if s.name == "deepspeed":
        _choice("strategy.stage", s.stage, (1, 2, 3))
    _choice("strategy.fsdp_sharding", s.fsdp_sharding, ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"))
    _choice("strategy.fsdp_state_dict", s.fsdp_state_dict, ("full", "sharded"))
    _choice("logger.name", cfg.logger.name, ("csv", "wandb", "none"))
    _choice("checkpoint.mode", cfg.checkpoint.mode, ("min", "max"))
    _choice("checkpoint.export_layout", cfg.checkpoint.export_layout, ("official", "diffusers"))
    return cfg
