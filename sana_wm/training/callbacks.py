"""Lightning callbacks of the SANA-WM trainer.

* :class:`ThroughputMonitor` — tokens/s, samples/s, step time and MFU (FLOPs from `sana_wm.models.flops.model_flops`, the
  same function the GPU benchmarks use), averaged over a logging window of optimizer steps.
* :class:`AdapterCheckpoint` — LoRA adapters as safetensors (``adapters/step_XXXXXXX.safetensors``, ``last``) with
  the base checkpoint's hash.
* :class:`ExportOnTrainEnd` — at the end of training, the full DiT in the official layout (EMA weights when enabled)
  so `infer.py --checkpoint` can use it directly; with LoRA, the final adapter.
* :class:`RankAgreement` — all ranks compare a checksum of their trained parameters at the end (DDP replicas must be
  identical); a mismatch is an error, and each rank prints its checksum.
* :class:`ValidationVideos` — every n steps, sample videos through `sana_wm.inference.pipeline.SanaWMPipeline` (the one
  inference path), write mp4s with the action overlay and hand them to the logger.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import lightning as L
import torch

from sana_wm.models.flops import model_flops
from sana_wm.parallel import plain_name

__all__ = ["ThroughputMonitor", "AdapterCheckpoint", "ExportOnTrainEnd", "RankAgreement", "ValidationVideos",
           "parameter_checksum"]

log = logging.getLogger(__name__)


def gathered_parameters(trainer, params):
    """Context in which the parameters `params` are whole on every rank: DeepSpeed ZeRO-3 partitions them (each rank
    holds a size-0 placeholder plus its shard), so reading weights for an export or an adapter file needs a gather
    first. Every rank must enter it (it is a collective). Other strategies: a no-op."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = trainer.strategy
    if not (isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3):
        return contextlib.nullcontext()
    import deepspeed

    partitioned = [p for p in params if hasattr(p, "ds_id")]
    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


class ThroughputMonitor(L.Callback):
    """Log ``perf/tokens_per_s``, ``perf/samples_per_s`` (global), ``perf/step_time`` and ``perf/mfu``.

    Time is wall-clock between the ends of consecutive training batches (so it includes data loading, the honest
    number), summed over a window of ``log_every_n_steps`` batches. Tokens are latent tokens N = T·H·W per sample.
    MFU = model FLOPs (forward + backward = 3 × forward, `model_flops(training=True)`) / (time × devices × peak).

    Args:
        peak_flops: per-device peak (989.4e12 for H100 dense bf16; meaningless on CPU, logged anyway).
        log_every_n_steps: window length in batches.
        text_tokens: caption length for the cross-attention FLOP terms (None → the batch's).
    """

    def __init__(self, peak_flops: float = 989.4e12, log_every_n_steps: int = 10, text_tokens: int | None = None):
        super().__init__()
        self.peak_flops = float(peak_flops)
        self.every = max(1, int(log_every_n_steps))
        self.text_tokens = text_tokens
        self._t_last: float | None = None
        self._window = {"time": 0.0, "samples": 0, "tokens": 0, "flops": 0.0, "batches": 0}
        self.last: dict[str, float] = {}

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t_last is None:
            self._sync(pl_module)
            self._t_last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = getattr(pl_module, "last_batch_stats", None)
        if not stats:
            return
        B = int(stats["batch_size"])
        T, H, W = stats["grid"]
        text = self.text_tokens if self.text_tokens is not None else int(stats.get("text_tokens", 0))
        flops = model_flops(pl_module.model.config, (T, H, W), text_len=text, batch=B, training=True).total
        w = self._window
        w["samples"] += B
        w["tokens"] += B * T * H * W
        w["flops"] += flops
        w["batches"] += 1
        if w["batches"] < self.every:
            return
        self._sync(pl_module)
        now = time.perf_counter()
        w["time"] = now - self._t_last
        self._t_last = now
        world = max(1, trainer.world_size)
        dt = max(w["time"], 1e-9)
        self.last = {
            "perf/step_time": dt / w["batches"],
            "perf/samples_per_s": world * w["samples"] / dt,
            "perf/tokens_per_s": world * w["tokens"] / dt,
            "perf/tokens_per_s_per_device": w["tokens"] / dt,
            "perf/mfu": w["flops"] / (dt * self.peak_flops),
        }
        pl_module.log_dict(self.last, on_step=True, on_epoch=False, rank_zero_only=True)
        self._window = {"time": 0.0, "samples": 0, "tokens": 0, "flops": 0.0, "batches": 0}


class AdapterCheckpoint(L.Callback):
    """Write LoRA adapters (safetensors + base hash) every ``every_n_steps`` optimizer steps and at the end.

    Args:
        dirpath: output folder (``<output_dir>/adapters``).
        every_n_steps: period in optimizer steps (0: only ``last.safetensors`` at the end).
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0):
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every = int(every_n_steps)
        self._last_saved = -1

    def _save(self, trainer, pl_module, name: str) -> Path | None:
        from lightning.pytorch.strategies import ModelParallelStrategy

        from .lora import lora_state_dict, save_lora

        adapters = [p for n, p in pl_module.model.named_parameters() if ".lora_" in n]
        with gathered_parameters(trainer, adapters):  # every rank takes part under ZeRO-3
            # FSDP2: every rank takes part in gathering the adapters' shards
            tensors = lora_state_dict(pl_module.model) if isinstance(trainer.strategy, ModelParallelStrategy) else None
            if not trainer.is_global_zero:
                return None
            path = save_lora(pl_module.model, self.dirpath / name, pl_module.base_sha256 or "",
                             {"global_step": str(trainer.global_step)}, tensors=tensors)
        log.info("saved LoRA adapter %s", path)
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every > 0 and step > 0 and step % self.every == 0 and step != self._last_saved:
            self._last_saved = step
            self._save(trainer, pl_module, f"step_{step:07d}.safetensors")

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "last.safetensors")


def _full_state_dict(trainer, pl_module) -> dict:
    """The module's whole state dict on rank 0 (every rank takes part). FSDP2 (ModelParallelStrategy, which keeps
    its own state dict sharded for DCP checkpoints) gathers the model's DTensors here."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    if not isinstance(trainer.strategy, ModelParallelStrategy):
        return trainer.strategy.lightning_module_state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(pl_module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {f"model.{k}": v for k, v in full.items()}


class ExportOnTrainEnd(L.Callback):
    """At the end of training write ``<dirpath>/dit.safetensors`` in the official (or diffusers) layout.

    EMA weights are exported when the module keeps an EMA and ``use_for_export`` is on. Under sharded strategies the
    full state dict is gathered first (every rank takes part; rank 0 writes). A LoRA run exports the base with its
    adapters merged in (W + (alpha/rank)·B·A), the same file `python -m sana_wm.training.export merge` makes from
    the base and ``adapters/last.safetensors`` (which `AdapterCheckpoint` writes as well).
    """

    def __init__(self, dirpath: str | Path, layout: str = "official"):
        super().__init__()
        self.dirpath = Path(dirpath)
        self.layout = layout
        self.path: Path | None = None

    def on_train_end(self, trainer, pl_module) -> None:
        from sana_wm.checkpoint import save_checkpoint

        from .lora import add_lora, merge_lora

        # Lightning gathers FSDP shards here; DeepSpeed ZeRO-3 leaves size-0 placeholders, so gather those first.
        with gathered_parameters(trainer, pl_module.parameters()):
            state = _full_state_dict(trainer, pl_module)
            if trainer.is_global_zero:
                state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        if not trainer.is_global_zero:
            return
        # "model." is the module attribute; wrapper tokens (a torch.compile wrapper's "_orig_mod."; ours compile in
        # place) are removed as everywhere else.
        state = {plain_name(k[len("model."):]): v for k, v in state.items() if k.startswith("model.")}
        ema = pl_module.ema
        if ema is not None and ema.shadow and pl_module.ema_cfg.use_for_export:
            shadow = ema.state_dict()["shadow"]
            fits = {k: v for k, v in shadow.items() if k in state and v.shape == state[k].shape}
            if len(fits) < len(shadow):
                # Under FSDP the shadows are local shards; exporting them needs a consolidated checkpoint.
                log.warning("EMA export: %d of %d shadows are shards, exporting the raw weights for those; use "
                            "strategy.fsdp_state_dict=full checkpoints + sana_wm.training.export", len(shadow) - len(fits),
                            len(shadow))
            state.update({k: v.to(state[k].dtype) for k, v in fits.items()})
        spec = getattr(pl_module.model, "_sana_lora_spec", None) if pl_module.lora_cfg.enabled else None
        with torch.device("meta"):  # no second random initialisation of a 2.6 B model
            export = type(pl_module.model)(pl_module.model.config)
            if spec is not None:
                add_lora(export, spec=spec)  # the same adapter layout, so the state (base + adapters) loads as is
        export.load_state_dict(state, strict=True, assign=True)
        if spec is not None:
            merge_lora(export)
        self.path = save_checkpoint(export, self.dirpath / "dit.safetensors", layout=self.layout)
        what = "base with the LoRA adapters merged" if spec is not None else "trained DiT"
        print(f"exported the {what} ({self.layout} layout) to {self.path}", flush=True)


def parameter_checksum(module: torch.nn.Module) -> float:
    """Order-dependent float64 checksum of all parameters (Σ_i (i+1)·Σ p_i): equal iff replicas agree (in practice)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, (_, p) in enumerate(sorted(module.named_parameters(), key=lambda kv: kv[0])):
        total += (i + 1) * p.detach().double().sum().cpu()
    return float(total)


class RankAgreement(L.Callback):
    """After training, every rank checksums its parameters; all must agree (replicated strategies only).

    Prints ``[rank r] parameter checksum <value>`` on every rank, and raises RuntimeError on disagreement.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
            return  # sharded: ranks hold different shards by design
        value = parameter_checksum(pl_module.model)
        print(f"[rank {trainer.global_rank}] parameter checksum {value!r}", flush=True)
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            values: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(values, value)
            if len(set(values)) != 1:
                raise RuntimeError(f"DDP replicas diverged: parameter checksums per rank {values}")


class ValidationVideos(L.Callback):
    """Every ``every_n_steps`` steps, generate one video per (prompt, action) through `SanaWMPipeline`.

    The first frame is the first latent frame of the current training batch (cached latents carry no pixels), so the
    video continues a real clip, seen through that clip's own intrinsics (its first latent frame's K, from the
    batch's camera conditions); the trajectory comes from the action string (`sana_wm.camera.action_to_c2w`), which
    must give at least ``num_frames`` poses. mp4s (with the WASD overlay) go to ``dirpath`` and, for wandb, to the
    logger. All ranks sample (FSDP needs every rank in the forward); rank 0 writes.

    With a ``camera_estimator`` (``estimate(frames, fps, known_intrinsics) -> result with .c2w``, e.g. an annotation
    estimator), rank 0 also re-estimates each video's cameras on every ``camera_interval``-th frame, scores them
    against the requested trajectory in both conventions (`sana_wm.eval.camera_metrics`) and logs the means over the
    set as ``val/camera/<column>`` (plus ``val/camera/failed``, videos the estimator gave up on); kept per step in
    ``camera_metrics``.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int, prompts: list[str], actions: list[str],
                 num_frames: int = 17, num_steps: int = 20, guidance_scale: float = 5.0, flow_shift: float = 9.8,
                 fps: int = 16, seed: int = 42, camera_estimator=None, camera_interval: int = 4):
        super().__init__()
        if every_n_steps > 0 and (not prompts or len(prompts) != len(actions)):
            raise ValueError(
                f"validation.prompts and validation.actions must be non-empty and of equal length; got "
                f"{len(prompts)} prompts and {len(actions)} actions"
            )
        if every_n_steps > 0:
            from .config import check_validation_actions

            check_validation_actions(actions, num_frames)
        self.dirpath = Path(dirpath)
        self.every = int(every_n_steps)
        self.prompts, self.actions = list(prompts), list(actions)
        self.kw = dict(num_frames=num_frames, num_steps=num_steps, cfg_scale=guidance_scale, flow_shift=flow_shift,
                       fps=fps, seed=seed)
        self.camera_estimator, self.camera_interval = camera_estimator, int(camera_interval)
        self.camera_metrics: dict[int, dict[str, float]] = {}
        self._last = -1
        self.paths: list[Path] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every <= 0 or step == 0 or step % self.every or step == self._last:
            return
        self._last = step
        self.generate(trainer, pl_module, batch, step)

    @torch.no_grad()
    def generate(self, trainer, pl_module, batch, step: int) -> list[Path]:
        import numpy as np

        from sana_wm.camera import action_to_c2w
        from sana_wm.inference.overlay import derive_controls, draw_overlay
        from sana_wm.inference.pipeline import SanaWMPipeline
        from sana_wm.inference.video import write_mp4

        enc = pl_module.encoders
        if enc.vae is None or enc.text is None:
            raise RuntimeError("validation videos need encoders (encoders.kind = pretrained or tiny_random)")
        inputs = pl_module.prepare_batch(batch)
        first = inputs["latent"][:1, :, :1].float()
        h, w = first.shape[-2:]
        H, W = h * enc.vae.spatial_compression, w * enc.vae.spatial_compression
        # The clip's K at its first latent frame, from latent units (pixels × w / W) back to model-resolution pixels.
        fx, fy, cx, cy = inputs["camera_conditions"][0, 0, 16:20].double().cpu().tolist()
        K = np.array([fx * W / w, fy * H / h, cx * W / w, cy * H / h], dtype=np.float64)
        net = pl_module.model
        was_training = net.training
        ctx = pl_module.ema.swapped_in(net) if pl_module.ema is not None and pl_module.ema_cfg.use_for_export else None
        paths, scores = [], []
        try:
            if ctx is not None:
                ctx.__enter__()
            pipe = SanaWMPipeline(net, enc.vae, enc.text, height=H, width=W, flow_shift=self.kw["flow_shift"],
                                  device=pl_module.device, vae_tiling="none")
            for i, (prompt, action) in enumerate(zip(self.prompts, self.actions, strict=True)):
                c2w = action_to_c2w(action)
                res = pipe.generate(None, prompt, c2w, K, image_latent=first, progress=False, refine=False,
                                    **self.kw)
                if trainer.is_global_zero:
                    frames = draw_overlay(res.video, derive_controls(res.c2w))
                    self.dirpath.mkdir(parents=True, exist_ok=True)
                    path = write_mp4(self.dirpath / f"step{step:07d}_{i}.mp4", frames, res.fps)
                    paths.append(path)
                    self._to_logger(trainer, path, prompt, action, step)
                    if self.camera_estimator is not None:
                        scores.append(self._camera_score(res, action))
            if scores:
                self._log_camera(trainer, step, scores)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
            net.train(was_training)
        self.paths.extend(paths)
        return paths

    def _camera_score(self, res, action: str) -> dict[str, float] | None:
        from sana_wm.eval.estimator import camera_accuracy

        try:
            return camera_accuracy(self.camera_estimator, res.video, res.c2w, res.intrinsics, res.fps,
                                   interval=self.camera_interval)
        except Exception as err:  # a failed estimate must not stop training; it is counted and logged
            log.warning("validation camera estimate failed for %r: %s: %s", action, type(err).__name__, err)
            return None

    def _log_camera(self, trainer, step: int, scores: list[dict[str, float] | None]) -> None:
        good = [s for s in scores if s is not None]
        metrics = {f"val/camera/{k}": sum(s[k] for s in good) / len(good) for k in (good[0] if good else {})}
        metrics["val/camera/failed"] = float(len(scores) - len(good))
        self.camera_metrics[step] = metrics
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)

    @staticmethod
    def _to_logger(trainer, path: Path, prompt: str, action: str, step: int) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                import wandb

                # An mp4 path, not an array: wandb.Video(ndarray) needs moviepy, which we do not install.
                lg.experiment.log({"val/video": wandb.Video(str(path), format="mp4", caption=f"{action}: {prompt}"),
                                   "trainer/global_step": step})
