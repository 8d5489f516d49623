"""`SanaWMLitModule`: rectified-flow training of the SANA-WM DiT (pre-training and LoRA fine-tuning).

One training step (docs/design/diffusion.md) for a batch of cached latents x₀ [B, C, T, H, W] (or video encoded on
the fly by the frozen LTX-2 VAE and Gemma-2):

    σ  ~ shift(⌊1000·sigmoid(N(μ, s))⌋ / 1000)          one per sample, or one per latent frame (diffusion forcing)
    with prob p_i2v: σ[:, 0] = 0, frame 0 out of the loss (image-to-video: the clean first latent frame)
    with prob p_drop: caption := null-caption table       (classifier-free guidance training)
    x_σ = (1 − σ)·x₀ + σ·ε,   v* = ε − x₀,   loss = mean over counted elements of (DiT(x_σ, 1000σ, …) − v*)²

Randomness of the objective (σ, ε, which samples are image-conditioned or caption-dropped) comes from a generator
seeded by (seed, rank, batch counter) at every step, so a resumed run draws exactly what the uninterrupted run would
have drawn, whatever happened to global RNG state in between. Global RNG states are also saved per rank.

The module holds the DiT as ``self.model``; frozen encoders are kept outside the module tree (no DDP broadcast, no
checkpoint bloat). Parallelism is applied from outside: Lightning's strategy wraps the model; activation
checkpointing/compile come from `sana_wm.parallel` in `configure_model`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict
from typing import Any

import lightning as L
import numpy as np
import torch

from data.schema import Batch
from data.seeding import seed_for
from sana_wm.checkpoint import load_checkpoint
from sana_wm.context_parallel import context_parallel_of
from sana_wm.diffusion import (
    apply_image_condition,
    flow_loss,
    interpolate,
    sample_training_sigmas,
    sigma_to_timestep,
    velocity_target,
)
from sana_wm.models import SanaWM
from sana_wm.training.config import (
    EMAConfig,
    EncoderConfig,
    LoraConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
)

from .ema import EMA
from .lora import add_lora, checkpoint_digest, load_lora, lora_state_dict, same_base, state_fingerprint
from .optim import build_optimizer, build_scheduler

__all__ = ["SanaWMLitModule", "build_model", "build_encoders", "Encoders"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Stream tags for seed_for, so the objective's draws and the validation draws are independent.
_TAG_TRAIN, _TAG_VAL = 11, 12


def build_model(cfg: ModelConfig) -> tuple[SanaWM, str | None]:
    """The DiT of `cfg` (preset + overrides), with `cfg.init_checkpoint` loaded strictly.

    Returns:
        (model, the init checkpoint's `checkpoint_digest` — the identity of its tensors — or None). A checkpoint whose
        keys or shapes do not fit raises `sana_wm.checkpoint.CheckpointError` naming the file and keys — before any
        training compute.
    """
    model = SanaWM.from_preset(cfg.preset, **cfg.overrides())
    digest = None
    if cfg.init_checkpoint:
        load_checkpoint(model, cfg.init_checkpoint)
        digest = checkpoint_digest(cfg.init_checkpoint)
        log.info("loaded model.init_checkpoint=%s (%s…)", cfg.init_checkpoint, digest[:20])
    return model, digest


class Encoders:
    """The frozen codec (`LatentCodec`) and text encoder (`GemmaTextEncoder`); either may be None."""

    def __init__(self, vae=None, text=None):
        self.vae, self.text = vae, text

    def to(self, device) -> Encoders:
        for enc in (self.vae, self.text):
            if enc is not None:
                enc.to(device)
        return self


def build_encoders(cfg: EncoderConfig, model_config) -> Encoders:
    """Load (``pretrained``) or build (``tiny_random``) the frozen encoders; ``none`` gives empty Encoders.

    ``tiny_random`` builds a seeded tiny LTX-2 VAE with ``model_config.in_channels`` latent channels and a tiny
    Gemma-2 of width ``model_config.caption_channels`` with an in-process tokenizer — for tests and the CPU demo.
    """
    if cfg.kind == "none":
        return Encoders()
    dtype = _DTYPES[cfg.dtype]
    from sana_wm.encoders.text import GemmaTextEncoder
    from sana_wm.encoders.vae import LatentCodec

    if cfg.kind == "tiny_random":
        from sana_wm.encoders.tiny import tiny_gemma2, tiny_ltx2_vae, tiny_tokenizer

        tok = tiny_tokenizer()
        text = GemmaTextEncoder(
            tiny_gemma2(model_config.caption_channels, vocab_size=len(tok)), tok,
            max_sequence_length=model_config.caption_length,
        )
        vae = LatentCodec(tiny_ltx2_vae(model_config.in_channels))
        return Encoders(vae.to(dtype=dtype), text.to(dtype=dtype))
    vae = LatentCodec.from_pretrained(cfg.vae, dtype=dtype) if cfg.vae else None
    text = (
        GemmaTextEncoder.from_pretrained(cfg.text_encoder, dtype=dtype, max_sequence_length=model_config.caption_length)
        if cfg.text_encoder else None
    )
    return Encoders(vae, text)


class SanaWMLitModule(L.LightningModule):
    """Flow-matching trainer of the SANA-WM DiT.

    Args:
        model: which DiT and its initial weights (`ModelConfig`).
        objective: σ sampling, image conditioning and caption dropout (`ObjectiveConfig`).
        optim: AdamW, parameter groups, schedule (`OptimConfig`; ``grad_clip`` is applied by the Trainer).
        ema: optional EMA of the trained weights (`EMAConfig`).
        lora: LoRA fine-tuning (`LoraConfig`); the base is ``model.init_checkpoint``.
        encoders: frozen encoders for video batches / the null caption (`EncoderConfig`).
        seed: base seed of the objective's random draws.
        max_steps: total optimizer steps (the cosine schedule's default horizon).
    """

    def __init__(
        self,
        model: ModelConfig,
        objective: ObjectiveConfig | None = None,
        optim: OptimConfig | None = None,
        ema: EMAConfig | None = None,
        lora: LoraConfig | None = None,
        encoders: EncoderConfig | None = None,
        seed: int = 3407,
        max_steps: int | None = None,
    ):
        super().__init__()
        objective, optim = objective or ObjectiveConfig(), optim or OptimConfig()
        ema, lora, encoders = ema or EMAConfig(), lora or LoraConfig(), encoders or EncoderConfig()
        # Plain dicts in the checkpoint (no pickled classes), so `torch.load(weights_only=True)` can read it.
        self.save_hyperparameters(
            {
                "model": asdict(model), "objective": asdict(objective), "optim": asdict(optim), "ema": asdict(ema),
                "lora": asdict(lora), "encoders": asdict(encoders), "seed": seed, "max_steps": max_steps,
            }
        )
        self.model_cfg, self.objective, self.optim_cfg = model, objective, optim
        self.ema_cfg, self.lora_cfg, self.encoder_cfg = ema, lora, encoders
        self.seed = int(seed)
        self.max_steps = max_steps

        net, init_digest = build_model(model)
        self.encoders = build_encoders(encoders, net.config)
        caption_len, caption_dim = net.y_embedder.y_embedding.shape
        null_mask = torch.ones(caption_len, dtype=torch.bool)
        if self.encoders.text is not None and encoders.set_null_embedding and not model.init_checkpoint:
            # A fresh model: the null caption is the text encoder's encoding of "" (as NVIDIA's). A loaded
            # checkpoint keeps its trained table.
            emb, mask = self.encoders.text.null_embedding()
            if emb.shape[1:] != (caption_len, caption_dim):
                raise ValueError(
                    f"text encoder gives {tuple(emb.shape[1:])} embeddings but the DiT's null-caption table is "
                    f"({caption_len}, {caption_dim}); set model.caption_length / model.caption_channels to match"
                )
            with torch.no_grad():
                net.y_embedder.y_embedding.copy_(emb[0].float())
            null_mask = mask[0].bool().cpu()
        elif objective.caption_dropout > 0 and not model.init_checkpoint:
            # Generation's unconditional branch is the text encoder's encoding of the negative prompt (""); a table
            # left at its random start trains the dropped captions on an embedding generation never passes.
            log.warning(
                "objective.caption_dropout=%s swaps captions for the DiT's null-caption table, which stays at its random "
                "start (a buffer): no text encoder is configured (encoders.kind=%s, set_null_embedding=%s). Classifier-free guidance at "
                "generation then feeds an unconditional embedding never seen in training; set encoders.kind=pretrained "
                "and encoders.text_encoder to the generation's text encoder", objective.caption_dropout, encoders.kind,
                encoders.set_null_embedding,
            )
        # Mask used with the null table for dropped captions (all tokens when the table is not an encoding of "").
        self.register_buffer("null_mask", null_mask)

        self.base_sha256: str | None = None
        self.init_file = model.init_checkpoint
        if lora.enabled:
            # The adapter's identity check needs the base's hash: the file's, or the weights' for a random base.
            self.base_sha256 = init_digest or state_fingerprint(net)
            if lora.adapter:
                load_lora(net, lora.adapter, base_sha256=self.base_sha256, base_file=model.init_checkpoint)
            else:
                add_lora(net, lora.rank, lora.alpha, lora.dropout, lora.target_modules, lora.init)
            # Only adapters live in training checkpoints; the base comes from model.init_checkpoint on resume.
            self.strict_loading = False
        self.model = net
        self.ema = EMA(ema.decay) if ema.enabled else None
        self._configured = False
        self.last_batch_stats: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------------- set-up hooks

    def configure_model(self) -> None:
        """Activation checkpointing / compile from `sana_wm.parallel` (FSDP applies checkpointing by policy)."""
        if self._configured:
            return
        from lightning.pytorch.strategies import FSDPStrategy

        from sana_wm.parallel import parallelize

        from .fsdp2 import FSDP2Strategy

        strategy = self._trainer.strategy if self._trainer is not None else None
        cfg = self.model_cfg
        mesh = {}
        if isinstance(strategy, FSDP2Strategy):  # checkpointing → compile → CP → FSDP2, on the strategy's meshes
            mesh = {"cp_mesh": strategy.cp_mesh, "fsdp_mesh": strategy.fsdp_mesh, "param_dtype": strategy.param_dtype}
        parallelize(self.model, activation_checkpointing=cfg.activation_checkpointing
                    and not isinstance(strategy, FSDPStrategy), ac_policy=cfg.ac_policy, ac_blocks=cfg.ac_blocks,
                    compile=cfg.compile, fp8=cfg.fp8_recipe if cfg.fp8 else None, **mesh)
        self._configured = True

    def setup(self, stage: str) -> None:
        self.encoders.to(self.device)

    def on_fit_start(self) -> None:
        self.encoders.to(self.device)
        if self.ema is not None:
            self.ema.to(self.device)

    # ------------------------------------------------------------------------------------------------ the objective

    def _generator(self, tag: int, counter: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(seed_for(self.seed, tag, self._data_rank(), counter))
        return g

    def _data_rank(self) -> int:
        """The rank that picks this process's samples and random draws: the global rank, or under context
        parallelism the dp coordinate, shared by the ranks that split one clip."""
        kwargs = self._trainer.distributed_sampler_kwargs if self._trainer is not None else None
        return self.global_rank if kwargs is None else int(kwargs["rank"])  # Lightning's split, as the data loader's

    def _batch_counter(self) -> int:
        if self._trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.total.ready)

    @torch.no_grad()
    def prepare_batch(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Batch → model inputs: latent [B,C,T,H,W], text [B,L,D], mask [B,L], camera tensors (video is encoded)."""
        if batch.latent is not None:
            latent, text, mask = batch.latent, batch.text_emb, batch.text_mask
        elif batch.video is not None:
            if self.encoders.vae is None or self.encoders.text is None:
                raise RuntimeError(
                    "got a video batch but no encoders are configured; set encoders.kind=pretrained with encoders.vae "
                    "and encoders.text_encoder, or train on cached latents (python -m sana_wm.training.cache)"
                )
            if batch.video_format != "float":
                raise ValueError(f"video batches must use video_format='float' in [-1, 1], got {batch.video_format!r}")
            latent = self.encoders.vae.encode(batch.video)
            text, mask = self.encoders.text.encode(list(batch.captions))
        else:
            raise ValueError("batch has neither `latent` nor `video`")
        dtype = torch.float32
        return {
            "latent": latent.to(self.device, dtype),
            "text": text.to(self.device, dtype),
            "mask": mask.to(self.device).bool(),
            "camera_conditions": batch.camera_conditions.to(self.device, dtype),
            "chunk_plucker": batch.chunk_plucker.to(self.device, dtype),
        }

    def flow_step(self, inputs: dict[str, torch.Tensor], generator: torch.Generator, train: bool = True):
        """One rectified-flow loss evaluation. Returns (loss, stats)."""
        o = self.objective
        x0 = inputs["latent"]
        B, _, T, H, W = x0.shape
        sigmas = sample_training_sigmas(
            B, T, shift=o.flow_shift, scheme=o.timestep_sampling, mean=o.logit_mean, std=o.logit_std,
            per_frame=o.per_frame_timesteps, generator=generator, device=x0.device,
        )
        loss_mask = None
        if o.image_condition_prob > 0 and T > 1:
            sigmas, loss_mask = apply_image_condition(sigmas, o.image_condition_prob, generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = interpolate(x0, noise, sigmas)
        target = velocity_target(x0, noise)

        text, mask = inputs["text"], inputs["mask"]
        if train and o.caption_dropout > 0:
            table = self.model.y_embedder.y_embedding
            if text.shape[1:] != table.shape:
                raise ValueError(
                    f"caption dropout swaps captions [B, L, D] = {list(text.shape)} for the null table "
                    f"{list(table.shape)}; cache captions with L = model.caption_length or set objective.caption_dropout=0"
                )
            drop = torch.rand(B, generator=generator, device=x0.device) < o.caption_dropout
            text = torch.where(drop[:, None, None], table.to(text.dtype)[None], text)
            mask = torch.where(drop[:, None], self.null_mask[None], mask)

        pred = self.model(
            x_t, sigma_to_timestep(sigmas), text, mask,
            camera_conditions=inputs["camera_conditions"], chunk_plucker=inputs["chunk_plucker"],
        )
        cp = context_parallel_of(self.model)
        loss = flow_loss(pred, target, loss_mask) if cp is None else self._cp_flow_loss(cp, pred, target, loss_mask)
        stats = {"batch_size": B, "grid": (T, H, W), "text_tokens": int(text.shape[1]), "sigma_mean": float(sigmas.mean())}
        return loss, stats

    @staticmethod
    def _cp_flow_loss(cp, pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor | None) -> torch.Tensor:
        """`flow_loss` under context parallelism: pred is this rank's slice of the frames. Returns this rank's share
        (its real, counted elements' squared error over the whole clip's count), so the shares' sum over the CP
        group — what the gradient reduction forms — is the whole clip's `flow_loss`. Every rank holds the whole
        target and mask, so the count needs no communication."""
        B, C, T, H, W = target.shape
        mask = torch.ones(B, T, device=target.device) if loss_mask is None else loss_mask.reshape(B, T).float()
        count = mask.sum() * C * H * W
        local = cp.shard_frames(mask, 1) * cp.frame_mask(target.device)[None]
        err = (pred.float() - cp.shard_frames(target, 2).float()).square() * local[:, None, :, None, None]
        return err.sum() / count.clamp_min(1.0)

    def _logged_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The whole clip's loss for logging: under CP, the sum of the group's shares."""
        cp = context_parallel_of(self.model)
        if cp is None:
            return loss
        total = loss.detach().clone()
        torch.distributed.all_reduce(total, group=cp.group)
        return total

    # ------------------------------------------------------------------------------------------------ train / val

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        inputs = self.prepare_batch(batch)
        loss, stats = self.flow_step(inputs, self._generator(_TAG_TRAIN, self._batch_counter()), train=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step} (keys {batch.keys})")
        self.last_batch_stats = stats
        self.log("train/loss", self._logged_loss(loss), on_step=True, on_epoch=False, prog_bar=True, batch_size=stats["batch_size"])
        self.log("train/sigma_mean", stats["sigma_mean"], on_step=True, on_epoch=False, batch_size=stats["batch_size"])
        lr = self._current_lr()
        if lr is not None:
            self.log("train/lr", lr, on_step=True, on_epoch=False, prog_bar=True)
        cp = context_parallel_of(self.model)
        # Under CP the loss is this rank's share; FSDP2 averages the gradients over every rank, CP ranks included.
        return loss if cp is None else loss * cp.size

    def _current_lr(self) -> float | None:
        # Not `self.optimizers()`: under DeepSpeed the trainer's optimizer list is not the torch optimizer.
        if self._trainer is None:
            return None
        configs = self.trainer.lr_scheduler_configs
        if configs:
            return float(configs[0].scheduler.get_last_lr()[0])
        opts = self.trainer.optimizers
        return float(opts[0].param_groups[0]["lr"]) if opts and hasattr(opts[0], "param_groups") else None

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        inputs = self.prepare_batch(batch)
        # Fixed draws per validation batch: the curve measures the model, not the noise.
        loss, stats = self.flow_step(inputs, self._generator(_TAG_VAL, batch_idx), train=False)
        self.log("val/loss", self._logged_loss(loss), on_step=False, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=stats["batch_size"])
        return loss

    def on_validation_epoch_start(self) -> None:
        if self.ema is not None and self.ema.shadow and self.ema_cfg.use_for_export:
            self._ema_ctx = self.ema.swapped_in(self.model)
            self._ema_ctx.__enter__()

    def on_validation_epoch_end(self) -> None:
        ctx = getattr(self, "_ema_ctx", None)
        if ctx is not None:
            ctx.__exit__(None, None, None)
            self._ema_ctx = None

    # ------------------------------------------------------------------------------------------- optimisation

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optim_cfg)
        max_steps = self.max_steps
        if max_steps is None and self._trainer is not None:
            max_steps = self.trainer.max_steps
        scheduler = build_scheduler(optimizer, self.optim_cfg, max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def grad_norm(self) -> torch.Tensor | None:
        """Global L2 norm of the gradients (before clipping); sharded strategies all-reduce the shards' squares."""
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, DeepSpeedStrategy):
            return None  # ZeRO owns the gradients; logged from the engine after the step
        from torch.distributed.tensor import DTensor

        sq = torch.zeros((), device=self.device, dtype=torch.float32)
        sharded = isinstance(strategy, FSDPStrategy)
        for p in self.model.parameters():
            if p.grad is not None:
                grad = p.grad.detach()
                if isinstance(grad, DTensor):  # FSDP2: this rank's shard
                    grad, sharded = grad.to_local(), True
                sq = sq + grad.float().pow(2).sum()
        if sharded and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sq)
        return sq.sqrt()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Global-norm clipping at `optim.grad_clip`. Under FSDP, `torch.nn.utils.clip_grad_norm_` would clip each
        shard by its own norm and Lightning's FSDP precision refuses norm clipping, so the root FSDP module's
        `clip_grad_norm_` (which all-reduces the shards' norms) does it; the Trainer then gets no clip value."""
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(self.trainer.strategy, FSDPStrategy):
            if self.optim_cfg.grad_clip:
                self.trainer.model.clip_grad_norm_(self.optim_cfg.grad_clip)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_before_optimizer_step(self, optimizer) -> None:
        norm = self.grad_norm()
        if norm is not None:
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        if isinstance(self.trainer.strategy, DeepSpeedStrategy):
            norm = getattr(self.trainer.model, "get_global_grad_norm", lambda: None)()
            if norm is not None:
                self.log("train/grad_norm", float(norm), on_step=True, on_epoch=False)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # EMA right after the weights change — before any callback's on_train_batch_end, so a checkpoint written at
        # this step already contains this step's EMA (resume stays exact). global_step is incremented after this hook.
        step = self.global_step + 1
        if self.ema is not None and step >= self.ema_cfg.start_step:
            if not self.ema.shadow:
                self.ema.reset(self.model)
            elif step % self.ema_cfg.update_every == 0:
                self.ema.update(self.model, self.ema_cfg.decay ** self.ema_cfg.update_every)

    # --------------------------------------------------------------------------------------------- checkpoints

    def _gather_rng(self) -> list[dict]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            # numpy's state as tensors/ints, so `torch.load(weights_only=True)` accepts the checkpoint.
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
            return states
        return [state]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = self._gather_rng()  # every rank takes part; rank 0 writes the file
        checkpoint["sana_wm"] = {
            "format": 1,
            "model_config": self.model.config.to_dict(),
            "base_sha256": self.base_sha256,
            "lora": self.lora_cfg.enabled,
        }
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
        if self.lora_cfg.enabled:
            # The frozen base is model.init_checkpoint; keep the adapters (and the module's own buffers) only.
            adapters = {f"model.{k}" for k in self._lora_param_names()}
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if k in adapters or not k.startswith("model.")
            }

    def _lora_param_names(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters() if ".lora_" in n]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("sana_wm", {})
        recorded = meta.get("model_config", {}).get("camera_rms_downscale")
        if recorded is not None and recorded != self.model.config.camera_rms_downscale:
            # The same weights compute differently under another camera RMS clamp: never resume across a change.
            raise ValueError(
                f"this checkpoint was trained with model.camera_rms_downscale={recorded!r} but the run is configured "
                f"with {self.model.config.camera_rms_downscale!r}; resume with model.camera_rms_downscale={recorded}"
            )
        base = meta.get("base_sha256")
        if self.lora_cfg.enabled and base is not None and not same_base(base, self.base_sha256, self.init_file):
            raise ValueError(
                f"this LoRA checkpoint was trained on base {meta['base_sha256'][:23]}… but model.init_checkpoint "
                f"is {str(self.base_sha256)[:23]}…; resume with the same base checkpoint"
            )
        state = checkpoint.get("state_dict") or {}
        if any("._orig_mod." in k for k in state):
            # Written while compiled blocks were torch.compile wrappers (before they were compiled in place, see
            # sana_wm.parallel.apply_compile): their keys carried the wrapper's attribute. Resumable either way.
            checkpoint["state_dict"] = {k.replace("._orig_mod.", "."): v for k, v in state.items()}
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
        states = checkpoint.get("rng_states")
        if states:
            world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
            if len(states) == world:
                self._restore_rng(states[self.global_rank if torch.distributed.is_initialized() else 0])
            else:
                log.warning("checkpoint has RNG states of %d ranks, this run has %d; not restoring them",
                            len(states), world)

    @staticmethod
    def _restore_rng(state: dict) -> None:
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state["python"])
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA adapter tensors (file keys), for saving."""
        return lora_state_dict(self.model)
