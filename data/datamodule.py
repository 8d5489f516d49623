"""Lightning ``DataModule`` around the shard loaders, plus a callback that logs skipped samples.

``SanaWMDataModule`` builds the train/val :class:`~data.webdataset.ShardDataset` for video or latent
shards with the trainer's rank and world size, and falls back to the bundled synthetic world
(:func:`data.synthetic.build_default_dataset`) when no shards are given — the default of
``make demo`` and of the tests. ``SkipLoggingCallback`` logs the workers' skip counts as metrics
(``data/skipped/<reason>`` during the epoch, ``data/skipped_epoch/<reason>`` exact at its end).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from .errors import SKIP_REASONS
from .schema import Batch
from .synthetic import DEFAULT_CONFIG, build_default_dataset
from .webdataset import EpochDataLoader, SkipTracker, make_latent_dataset, make_video_dataset

__all__ = ["SanaWMDataModule", "SkipLoggingCallback"]

log = logging.getLogger(__name__)


class SanaWMDataModule(L.LightningDataModule):
    """DataModule for SANA-WM video or cached-latent shards.

    Args:
        train_shards: shard spec for training (list, brace pattern, glob, directory or manifest); None
            → the synthetic world rendered into ``synthetic_dir``.
        val_shards: shard spec for validation (None → no validation loader; with the synthetic
            fallback the same shards are read deterministically).
        kind: 'video' (decode + crop + camera tensors) or 'latent' (cached latents).
        batch_size: samples per batch (per rank).
        num_workers: DataLoader workers per rank (each decodes with ``decode_threads`` threads).
        num_frames, height, width, target_fps, video_format, decode_threads: video decoding
            (see :class:`data.webdataset.VideoDecoder`); training samples a random window,
            validation the first one.
        shuffle_buffer: sample shuffle buffer per worker (training only).
        resampled: infinite shard resampling for multi-node runs (needs ``samples_per_epoch``).
        samples_per_epoch: training samples per rank per epoch.
        seed: base seed (shard order, shuffles and frame choice derive from it with rank, worker, epoch).
        strict: raise on bad data instead of skipping it.
        persistent_workers, pin_memory, prefetch_factor: passed to the DataLoader.
        synthetic_dir: where to render the synthetic world when ``train_shards`` is None.
        synthetic: overrides of :data:`data.synthetic.DEFAULT_CONFIG` (num_clips, num_frames, …).
        spatial_stride: the VAE's spatial compression (video shards only): the camera's Plücker maps are built on
            the (height / stride, width / stride) latent grid, and height and width must be multiples of it.
    """

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        kind: str = "video",
        batch_size: int = 1,
        num_workers: int = 2,
        num_frames: int = 33,
        height: int = 128,
        width: int = 224,
        target_fps: float | None = 16.0,
        video_format: str = "float",
        decode_threads: int = 1,
        shuffle_buffer: int = 16,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        strict: bool = False,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        prefetch_factor: int | None = 2,
        synthetic_dir: str | None = None,
        synthetic: dict[str, Any] | None = None,
        spatial_stride: int = 32,
    ):
        super().__init__()
        if kind not in ("video", "latent"):
            raise ValueError(f"`kind` must be 'video' or 'latent'; got {kind!r}.")
        if resampled and samples_per_epoch is None:
            raise ValueError("`resampled=True` makes an infinite stream: set `samples_per_epoch` (per rank).")
        if train_shards is None and synthetic_dir is None:
            raise ValueError("give `train_shards`, or `synthetic_dir` to train on the bundled synthetic world.")
        if train_shards is None and kind != "video":
            raise ValueError("the synthetic world provides video shards; use kind='video' or give `train_shards`.")
        unknown = set(synthetic or {}) - set(DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"unknown `synthetic` keys {sorted(unknown)}; allowed: {sorted(DEFAULT_CONFIG)}.")
        self.save_hyperparameters(logger=False)
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.kind = kind
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.synthetic_dir = synthetic_dir
        self.synthetic = dict(synthetic or {})
        self.skip_tracker = SkipTracker()
        self.train_dataset = None
        self.val_dataset = None

    # -- Lightning hooks -----------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Render the synthetic world once (local rank 0) when no shards were given."""
        if self.train_shards is None:
            cfg = {**DEFAULT_CONFIG, **self.synthetic}
            build_default_dataset(self.synthetic_dir, **cfg)

    def _rank_world(self) -> tuple[int | None, int | None]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            # Lightning's sampler split: the global rank and world under DDP / FSDP / DeepSpeed, the data-parallel
            # coordinate under a model-parallel mesh (context parallelism: the ranks of a CP group share samples);
            # None on one device.
            kwargs = trainer.distributed_sampler_kwargs
            if kwargs is not None:
                return int(kwargs["rank"]), int(kwargs["num_replicas"])
            return int(trainer.global_rank), int(trainer.world_size)
        return None, None  # ShardDataset falls back to torch.distributed / env

    def _make(self, shards: Any, train: bool) -> Any:
        rank, world = self._rank_world()
        hp = self.hparams
        common = dict(
            shuffle_shards=train,
            shuffle_buffer=hp.shuffle_buffer if train else 0,
            resampled=hp.resampled and train,
            samples_per_epoch=hp.samples_per_epoch if train else None,
            seed=hp.seed,
            rank=rank,
            world_size=world,
            strict=hp.strict,
        )
        if self.kind == "latent":
            return make_latent_dataset(shards, **common)
        return make_video_dataset(
            shards,
            num_frames=hp.num_frames,
            height=hp.height,
            width=hp.width,
            target_fps=hp.target_fps,
            frame_sampling="random" if train else "start",
            video_format=hp.video_format,
            decode_threads=hp.decode_threads,
            spatial_stride=hp.spatial_stride,
            **common,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets (needs the trainer's rank, so it runs on every process)."""
        train = self.train_shards
        val = self.val_shards
        if train is None:
            train = self.synthetic_dir
            if val is None:
                val = self.synthetic_dir
        self.train_dataset = self._make(train, train=True)
        self.val_dataset = self._make(val, train=False) if val is not None else None

    def _loader(self, dataset: Any, start_epoch: int = 0) -> EpochDataLoader:
        hp = self.hparams
        extra = {}
        if self.num_workers > 0:
            extra = dict(persistent_workers=hp.persistent_workers, prefetch_factor=hp.prefetch_factor)
        return EpochDataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=hp.pin_memory, start_epoch=start_epoch, **extra
        )

    def train_dataloader(self) -> EpochDataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        trainer = getattr(self, "trainer", None)
        # After a resume the epoch counter continues where the checkpoint left it.
        start = int(trainer.current_epoch) if trainer is not None else 0
        return self._loader(self.train_dataset, start_epoch=start)

    def val_dataloader(self) -> EpochDataLoader | list:
        if self.train_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset)

    def skip_counts(self) -> dict[str, int]:
        """Samples skipped on this rank in the current (or last) training epoch, by reason, over all workers."""
        if self.train_dataset is not None and hasattr(self.train_dataset, "skip_totals"):
            return self.train_dataset.skip_totals()
        return self.skip_tracker.totals()


class SkipLoggingCallback(L.Callback):
    """Log the data loader's skip counts as ``data/skipped/<reason>`` (and ``data/skipped``) metrics.

    Every ``every_n_steps`` steps it logs the counts so far in the epoch: the workers' shared table
    (:meth:`data.webdataset.ShardDataset.skip_totals`) when the trainer's datamodule is a
    :class:`SanaWMDataModule`, else the latest snapshot each worker's batches carried. At the end of
    each training epoch it logs the epoch's exact totals as ``data/skipped_epoch/<reason>`` (and
    ``data/skipped_epoch``), including the skips after a worker's last batch. Counts are per rank;
    ``sync_dist`` sums them over ranks when logging.

    Args:
        every_n_steps: logging period in training steps.
    """

    def __init__(self, every_n_steps: int = 50):
        super().__init__()
        self.every_n_steps = int(every_n_steps)
        self.tracker = SkipTracker()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, Batch):
            return
        self.tracker.update(batch)
        dm = getattr(trainer, "datamodule", None)
        if isinstance(dm, SanaWMDataModule):
            dm.skip_tracker.update(batch)
        if batch_idx % self.every_n_steps == 0:
            pl_module.log_dict(
                self._metrics("data/skipped", trainer), on_step=True, on_epoch=False,
                sync_dist=trainer.world_size > 1, reduce_fx="sum",
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log_dict(
            self._metrics("data/skipped_epoch", trainer), on_step=False, on_epoch=True,
            sync_dist=trainer.world_size > 1, reduce_fx="sum",
        )
        self.tracker.reset()

    def _metrics(self, prefix: str, trainer: L.Trainer) -> dict[str, float]:
        dm = getattr(trainer, "datamodule", None)
        totals = dm.skip_counts() if isinstance(dm, SanaWMDataModule) else self.tracker.totals()
        # Every reason is logged, zeros included, so that all ranks log the same keys (sync_dist needs it).
        metrics = {f"{prefix}/{reason}": float(totals.get(reason, 0)) for reason in SKIP_REASONS}
        metrics[prefix] = float(sum(totals.values()))
        return metrics
