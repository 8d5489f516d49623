"""Typed config → Lightning objects, and the training run itself (`train.py` only composes and calls `train`).

Builders (each takes the typed :class:`~sana_wm.training.config.TrainConfig` or one of its sections):
    build_module, build_datamodule, build_strategy, build_logger, build_callbacks, build_trainer
Run:
    train(cfg) → dict of final metrics and output paths

Order of a run, chosen so that bad input fails before any compute: validate the config → check the data (shard
lists exist, the first cached sample fits the model) → build the module (strict init-checkpoint and LoRA-adapter
checks) → check the resume checkpoint's keys → only then `trainer.fit`.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from sana_wm.checkpoint import CheckpointError
from sana_wm.training.config import (
    CheckpointConfig,
    ConfigError,
    LoggerConfig,
    StrategyConfig,
    TrainConfig,
    register_configs,
    validate_config,
)

from .callbacks import AdapterCheckpoint, ExportOnTrainEnd, RankAgreement, ThroughputMonitor, ValidationVideos
from .data import TrainDataModule, check_shards
from .module import SanaWMLitModule

__all__ = [
    "to_train_config",
    "build_module",
    "build_datamodule",
    "build_strategy",
    "build_logger",
    "build_callbacks",
    "build_trainer",
    "resolve_resume",
    "check_resume_checkpoint",
    "check_sharded_resume",
    "wandb_credentials",
    "train",
]

log = logging.getLogger(__name__)


def to_train_config(cfg: DictConfig | TrainConfig) -> TrainConfig:
    """A composed DictConfig (or an already typed config) → validated `TrainConfig` dataclass."""
    if isinstance(cfg, DictConfig):
        register_configs()
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg))
    else:
        typed = cfg
    return validate_config(typed)


def build_module(cfg: TrainConfig) -> SanaWMLitModule:
    """The LightningModule (builds the DiT, loads the init checkpoint, attaches LoRA, builds encoders)."""
    return SanaWMLitModule(
        model=cfg.model, objective=cfg.objective, optim=cfg.optim, ema=cfg.ema, lora=cfg.lora,
        encoders=cfg.encoders, seed=cfg.seed, max_steps=cfg.trainer.max_steps if cfg.trainer.max_steps > 0 else None,
    )


def build_datamodule(cfg: TrainConfig, module: SanaWMLitModule | None = None) -> TrainDataModule:
    """`TrainDataModule` over `cfg.data`; with `module`, the first cached sample is checked against the model and
    video shards are cropped and given camera maps for the module's codec (its spatial compression)."""
    d = cfg.data
    expect = None
    stride = {}
    if module is not None and module.encoders.vae is not None:
        stride = {"spatial_stride": module.encoders.vae.spatial_compression}
    if module is not None:
        mc = module.model.config
        expect = {"latent_channels": mc.in_channels, "text_dim": mc.caption_channels}
        if cfg.objective.caption_dropout > 0:
            expect["text_length"] = mc.caption_length
    return TrainDataModule(
        train_shards=d.train_shards, val_shards=d.val_shards, kind=d.kind, batch_size=d.batch_size,
        num_workers=d.num_workers, num_frames=d.num_frames, height=d.height, width=d.width,
        target_fps=d.target_fps, shuffle_buffer=d.shuffle_buffer, resampled=d.resampled,
        samples_per_epoch=d.samples_per_epoch, seed=cfg.seed, strict=d.strict,
        persistent_workers=d.persistent_workers and d.num_workers > 0, pin_memory=d.pin_memory,
        expect=expect, **stride,
    )


def build_strategy(s: StrategyConfig, cfg: TrainConfig | None = None):
    """Lightning strategy object for `strategy.name` (``auto`` returns the string)."""
    timeout = datetime.timedelta(minutes=s.timeout_minutes)
    if s.name == "auto":
        return "auto"
    if s.name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(
            process_group_backend=s.process_group_backend, timeout=timeout,
            find_unused_parameters=s.find_unused_parameters, static_graph=s.static_graph,
            gradient_as_bucket_view=s.gradient_as_bucket_view,
        )
    if s.name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from sana_wm.models.sana_wm import SanaWMBlock

        ac = cfg is not None and cfg.model.activation_checkpointing
        return FSDPStrategy(
            process_group_backend=s.process_group_backend, timeout=timeout,
            auto_wrap_policy={SanaWMBlock},  # one FSDP unit per block, the unit NVIDIA's FSDP2 recipe wraps
            activation_checkpointing_policy={SanaWMBlock} if ac else None,
            sharding_strategy=s.fsdp_sharding, state_dict_type=s.fsdp_state_dict,
            cpu_offload=s.fsdp_cpu_offload, limit_all_gathers=s.fsdp_limit_all_gathers, use_orig_params=True,
        )
    if s.name == "fsdp2":
        from .fsdp2 import FSDP2Strategy, config_digest

        return FSDP2Strategy(cp_size=s.cp_size, param_dtype=getattr(torch, s.param_dtype),
                             config_digest=config_digest(cfg) if cfg is not None else "",
                             process_group_backend=s.process_group_backend, timeout=timeout)
    if s.name == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        lora = cfg is not None and cfg.lora.enabled
        return DeepSpeedStrategy(
            stage=s.stage, offload_optimizer=s.offload_optimizer, offload_parameters=s.offload_parameters,
            allgather_bucket_size=s.allgather_bucket_size, reduce_bucket_size=s.reduce_bucket_size,
            contiguous_gradients=s.contiguous_gradients, overlap_comm=s.overlap_comm,
            logging_batch_size_per_gpu=cfg.data.batch_size if cfg is not None else 1,
            process_group_backend=s.process_group_backend, timeout=timeout,
            exclude_frozen_parameters=lora,  # LoRA: checkpoints carry the adapters only
        )
    raise ConfigError(f"strategy.name={s.name!r} is not valid; expected auto, ddp, fsdp, fsdp2 or deepspeed")


def build_logger(lg: LoggerConfig, output_dir: str | Path):
    """CSVLogger, WandbLogger (online/offline) or False."""
    save_dir = lg.save_dir or str(output_dir)
    if lg.name == "none":
        return False
    if lg.name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=save_dir, name="csv")
    if lg.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        os.makedirs(save_dir, exist_ok=True)
        offline = lg.offline
        if not offline and not wandb_credentials():
            # Online logging without an account would stop the run at wandb.init (an error, or a prompt that waits
            # forever on a cluster); the run is recorded locally instead and can be uploaded later.
            log.warning("logger=wandb: no W&B credentials (WANDB_API_KEY or `wandb login`), so the run is logged "
                        "offline to %s/wandb; upload it later with `wandb sync`", save_dir)
            offline = True
        return WandbLogger(
            project=lg.project, entity=lg.entity, name=lg.run_name, group=lg.group, tags=list(lg.tags),
            save_dir=save_dir, offline=offline, log_model=False,
        )
    raise ConfigError(f"logger.name={lg.name!r} is not valid; expected csv, wandb or none")


def wandb_credentials() -> bool:
    """Whether W&B will find credentials without asking: the places `wandb.init` reads, checked locally (no network).

    ``WANDB_API_KEY`` or ``WANDB_IDENTITY_TOKEN_FILE``; else an entry with a password for the W&B host
    (``WANDB_BASE_URL``, default api.wandb.ai) in the netrc file (``NETRC``, else ~/.netrc or ~/_netrc) that
    ``wandb login`` writes. ``WANDB_MODE=offline`` or ``disabled`` also needs none.
    """
    import netrc
    from urllib.parse import urlsplit

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return True
    path = os.environ.get("NETRC")
    candidates = [Path(path).expanduser()] if path else [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    for p in candidates:
        try:
            creds = netrc.netrc(str(p)).authenticators(host)
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            continue
        if creds and creds[2]:
            return True
    return False


def checkpoint_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.checkpoint.dirpath or Path(cfg.output_dir) / "checkpoints")


def build_callbacks(cfg: TrainConfig) -> list[L.Callback]:
    """Checkpoints (periodic, best, last), throughput/MFU, LR monitor, exports, rank agreement, sample videos."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from data.datamodule import SkipLoggingCallback

    c: CheckpointConfig = cfg.checkpoint
    out = Path(cfg.output_dir)
    ckpt_dir = checkpoint_dir(cfg)
    callbacks: list[L.Callback] = []
    # No version counter: a run resumed from an explicit checkpoint path (not from last.ckpt) would otherwise write
    # its newest state to last-v1.ckpt and leave last.ckpt at the older step, so a requeued job with
    # checkpoint.resume=last would silently go back in time. A name is one state: the newest one written under it.
    if c.every_n_steps > 0:
        callbacks.append(ModelCheckpoint(
            dirpath=ckpt_dir, filename="step_{step:07d}", auto_insert_metric_name=False,
            every_n_train_steps=c.every_n_steps, monitor="step", mode="max", save_top_k=c.keep_periodic,
            save_last=c.save_last, enable_version_counter=False,
        ))
    elif c.save_last:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, enable_version_counter=False))
    if c.monitor and cfg.data.val_shards is not None:
        callbacks.append(ModelCheckpoint(
            dirpath=ckpt_dir, filename="best", auto_insert_metric_name=False, monitor=c.monitor, mode=c.mode,
            save_top_k=1, save_last=False, enable_version_counter=False,
        ))
    callbacks.append(ThroughputMonitor(cfg.monitor.peak_flops, cfg.monitor.log_every_n_steps, cfg.monitor.text_tokens))
    if cfg.logger.name != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks.append(SkipLoggingCallback(every_n_steps=cfg.monitor.log_every_n_steps))
    if cfg.lora.enabled:
        callbacks.append(AdapterCheckpoint(out / "adapters", cfg.lora.save_every_n_steps))
    if c.export_on_end:
        callbacks.append(ExportOnTrainEnd(out / "export", c.export_layout))
    callbacks.append(RankAgreement())
    v = cfg.validation
    if v.every_n_steps > 0:
        estimator = None
        if v.estimator:
            from sana_wm.eval.estimator import load_estimator

            estimator = load_estimator(v.estimator, dict(v.estimator_kwargs))
        callbacks.append(ValidationVideos(
            out / "samples", v.every_n_steps, list(v.prompts), list(v.actions), v.num_frames, v.num_steps,
            v.guidance_scale, v.flow_shift, v.fps, v.seed, camera_estimator=estimator,
            camera_interval=v.estimator_interval,
        ))
    return callbacks


def build_trainer(cfg: TrainConfig, callbacks: list[L.Callback] | None = None, logger: Any = None) -> L.Trainer:
    """`lightning.Trainer` from `cfg.trainer` + strategy + clipping + callbacks + logger."""
    t = cfg.trainer
    if callbacks is None:
        callbacks = build_callbacks(cfg)
    if logger is None:
        logger = build_logger(cfg.logger, cfg.output_dir)
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip else None
    if cfg.strategy.name == "fsdp":
        clip = None  # SanaWMLitModule.configure_gradient_clipping clips through the root FSDP module
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, precision=t.precision,
        strategy=build_strategy(cfg.strategy, cfg), max_steps=t.max_steps, max_epochs=t.max_epochs,
        accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=clip,
        gradient_clip_algorithm="norm" if clip else None, log_every_n_steps=t.log_every_n_steps,
        val_check_interval=t.val_check_interval, check_val_every_n_epoch=t.check_val_every_n_epoch,
        limit_val_batches=t.limit_val_batches if cfg.data.val_shards is not None else 0,
        num_sanity_val_steps=t.num_sanity_val_steps, enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic, detect_anomaly=t.detect_anomaly, benchmark=t.benchmark,
        default_root_dir=cfg.output_dir, logger=logger, callbacks=callbacks,
        # Shards are split by rank inside the webdataset pipeline; Lightning must not add a sampler.
        use_distributed_sampler=False,
    )


def resolve_resume(cfg: TrainConfig) -> str | None:
    """`checkpoint.resume`: a path (must exist), ``last`` (the run's last.ckpt, if any) or null."""
    r = cfg.checkpoint.resume
    if not r:
        return None
    if r == "last":
        p = checkpoint_dir(cfg) / "last.ckpt"
        if p.exists():
            return str(p)
        log.info("checkpoint.resume=last: no %s yet, starting fresh", p)
        return None
    if not Path(r).exists():
        raise FileNotFoundError(f"checkpoint.resume={r!r}: no such checkpoint")
    return r


def _world_size(cfg: TrainConfig) -> int | None:
    """trainer.devices × trainer.num_nodes when both are numbers (None for "auto" / -1: known only once launched)."""
    devices, nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    if isinstance(devices, int) and devices > 0 and isinstance(nodes, int) and nodes > 0:
        return devices * nodes
    return None


def check_sharded_resume(cfg: TrainConfig, path: str) -> None:
    """A sharded resume folder must reach a strategy that can load it at this run's world size. Every rank runs this
    from its own copy of the config before the process group exists, so each one raises, and none waits in a
    collective for a rank that failed.

    * a `torch.distributed.checkpoint` folder (strategy=fsdp2): only strategy=fsdp2 loads it, at any world size (DCP
      reshards parameters and optimizer states to the run's mesh);
    * a DeepSpeed ZeRO folder: one optimizer shard per data-parallel rank, which DeepSpeed loads only at that size.

    Raises:
        CheckpointError: naming the folder, what wrote it and what this run is.
    """
    p = Path(path)
    if not p.is_dir():
        return
    name = cfg.strategy.name
    if (p / ".metadata").is_file():
        if name != "fsdp2":
            shards = len(list(p.glob("*.distcp")))
            raise CheckpointError(
                f"checkpoint.resume={path} is a sharded torch.distributed.checkpoint folder ({shards} shard files, "
                f"written by strategy=fsdp2), which strategy.name={name} cannot load; resume it with strategy=fsdp2 "
                "(at any world size, trainer.devices=1 included: the shards are resharded), or export its weights "
                f"to one file (python -m sana_wm.training.export checkpoint {path} --out <file>) and start from "
                "them with model.init_checkpoint (the optimizer state is then not carried over)")
        return
    ranks = sorted(p.glob("checkpoint/zero_pp_rank_*_optim_states.pt"))
    world = _world_size(cfg)
    if ranks and world is not None:
        dp = world // cfg.strategy.cp_size if name == "fsdp2" else world
        if name != "deepspeed" or len(ranks) != dp:
            raise CheckpointError(
                f"checkpoint.resume={path} is a DeepSpeed ZeRO folder of {len(ranks)} ranks' optimizer shards; "
                f"this run is strategy.name={name} on {world} ranks (trainer.devices × trainer.num_nodes), and DeepSpeed "
                f"loads such a folder only with strategy=deepspeed on {len(ranks)} ranks; resume with those, or "
                f"export its weights (python -m sana_wm.training.export checkpoint {path} --out <file>) and start "
                "from them with model.init_checkpoint")


def check_resume_checkpoint(module: SanaWMLitModule, path: str) -> None:
    """Compare the resume checkpoint's model keys/shapes with the module's before any compute.

    Raises:
        CheckpointError: naming the file and the missing / unexpected / mis-shaped keys.
    """
    if Path(path).is_dir():
        return  # sharded folders: `check_sharded_resume`; their keys are checked by the strategy while loading
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning training checkpoint (no 'state_dict'); for weights use "
                              "model.init_checkpoint")
    theirs = ckpt["state_dict"]
    own = module.state_dict()
    if module.lora_cfg.enabled:  # adapters only (see SanaWMLitModule.on_save_checkpoint)
        own = {k: v for k, v in own.items() if ".lora_" in k or not k.startswith("model.")}
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    wrong = [f"{k}: file {tuple(theirs[k].shape)} vs model {tuple(own[k].shape)}"
             for k in theirs if k in own and tuple(theirs[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint.resume={path} does not fit the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} shape mismatches (e.g. {wrong[:2]})"
        )


def train(cfg: DictConfig | TrainConfig) -> dict[str, Any]:
    """Run training from a composed config. Returns final metrics (floats) and output paths (strings)."""
    cfg = to_train_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    # Data first: a wrong shard path should not cost a model load.
    check_shards(cfg.data.train_shards, "data.train_shards")
    if cfg.data.val_shards is not None:
        check_shards(cfg.data.val_shards, "data.val_shards")
    module = build_module(cfg)
    datamodule = build_datamodule(cfg, module)
    datamodule.preflight()
    resume = resolve_resume(cfg)
    if resume:
        check_sharded_resume(cfg, resume)
        check_resume_checkpoint(module, resume)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    out: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    out["global_step"] = trainer.global_step
    out["output_dir"] = str(cfg.output_dir)
    out["checkpoint_dir"] = str(checkpoint_dir(cfg))
    for cb in trainer.callbacks:
        if isinstance(cb, ExportOnTrainEnd) and cb.path is not None:
            out["export"] = str(cb.path)
        if isinstance(cb, ThroughputMonitor):
            out.update(cb.last)
    return out
