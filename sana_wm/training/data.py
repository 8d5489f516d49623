"""The trainer's side of the data pipeline: pre-flight checks and a training loader that resumes mid-epoch.

`TrainDataModule` is `data.SanaWMDataModule` (shards → `Batch`) plus two things the trainer needs:

* **pre-flight checks** (:func:`check_shards`, :func:`peek_latent_sample`) that run in `setup`, before any model
  compute: an empty shard list, missing local shard files, or cached tensors whose shapes do not fit the model raise
  :class:`DataConfigError` naming the config key and the offending value;
* **data-stream position on resume**: the training loader is a :class:`ResumableLoader`, which at every pass asks
  where the stream is — data epoch e and the number k of its batches already trained — and replays the epoch-e
  stream, skipping k batches. The datamodule keeps that position itself and saves it in the checkpoint (its
  `state_dict`): the data epoch of the current pass and the global batch count at which it began, k being Lightning's
  restored global batch count less that. Lightning's per-epoch counters cannot say it: a checkpoint written after the
  last batch of an epoch restores that epoch's batch count, and read as a position in the next epoch it skipped a
  whole epoch of data (the loader has no length for Lightning to know the epoch was over). When the k skipped batches
  end their epoch, the pass goes on with the next epoch from its start (also when this rank's epoch is shorter than k:
  a resume on more data-parallel ranks, whose per-rank epochs are shorter). Shard order, shuffles and frame choice are
  seeded by (seed, rank, worker, epoch) in `data.webdataset`, so the replay is the same stream and a resumed run sees
  exactly the batches an uninterrupted run would have seen. Skipping costs decoding k batches once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from data.datamodule import SanaWMDataModule
from data.webdataset import expand_shard_urls

__all__ = ["DataConfigError", "check_shards", "peek_latent_sample", "ResumableLoader", "TrainDataModule"]

log = logging.getLogger(__name__)


class DataConfigError(ValueError):
    """The data configuration cannot work (no shards, missing files, tensors that do not fit the model)."""


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def check_shards(spec: Any, key: str) -> list[str]:
    """Expand a shard spec and check that every local shard exists.

    Args:
        spec: list, brace pattern, glob, directory or manifest.json (see `data.webdataset.expand_shard_urls`).
        key: the config key the spec came from, for the error message (e.g. ``data.train_shards``).

    Returns:
        The shard list.
    """
    if spec is None or (isinstance(spec, (list, tuple)) and len(spec) == 0) or spec == "":
        raise DataConfigError(f"{key} is empty; give a shard list, brace pattern, glob, directory or manifest.json")
    if isinstance(spec, (str, os.PathLike)) and not any(c in str(spec) for c in "*?[{") and not _is_remote(str(spec)):
        if not os.path.exists(spec):
            raise DataConfigError(f"{key}={str(spec)!r}: no such file or directory")
    try:
        urls = expand_shard_urls(spec)
    except ValueError as err:
        raise DataConfigError(f"{key}: {err}") from None
    missing = [u for u in urls if not _is_remote(u) and not os.path.isfile(u)]
    if missing:
        raise DataConfigError(
            f"{key}: {len(missing)} of {len(urls)} shard(s) do not exist, e.g. {missing[:3]}; check the path "
            "(paths.data_root) or build the shards first"
        )
    return urls


def peek_latent_sample(urls: list[str]) -> Any:
    """The first decodable sample of a list of latent shards (a `data.schema.LatentSample`), strict decoding."""
    from data.webdataset import make_latent_dataset

    ds = make_latent_dataset(urls[:1], shuffle_shards=False, rank=0, world_size=1, strict=True)
    for sample in ds:
        return sample
    raise DataConfigError(f"latent shard {urls[0]!r} contains no sample")


class ResumableLoader:
    """Iterable of training batches whose every pass starts where the stream is.

    Args:
        make_loader: ``epoch -> iterable`` of batches of that epoch (a deterministic function of the epoch).
        position: ``() -> (epoch, batches_done)``, read when a pass starts; None → (pass count, 0).
        on_empty: ``() -> message``; a pass over a whole epoch that yields no batch raises
            :class:`DataConfigError` with it. Without it the trainer would start the next, equally empty, epoch
            forever (every sample skipped, e.g. clips shorter than ``data.num_frames``). None: no check.
        on_start: ``(epoch, skipped) -> None``, told which epoch a pass reads and after how many batches, once that is
            known: when the skipped batches were the whole epoch, the pass reads the next epoch from its start.

    Not a DataLoader on purpose: Lightning leaves other iterables alone (no sampler injection) and the webdataset
    pipeline already splits shards by rank and worker.
    """

    def __init__(self, make_loader: Callable[[int], Iterable], position: Callable[[], tuple[int, int]] | None = None,
                 on_empty: Callable[[], str] | None = None, on_start: Callable[[int, int], None] | None = None):
        self.make_loader = make_loader
        self.position = position
        self.on_empty = on_empty
        self.on_start = on_start
        self._passes = 0
        self.starts: list[tuple[int, int]] = []  # (epoch, skipped batches) of every pass, for logs and tests

    def __iter__(self) -> Iterator[Any]:
        epoch, skip = self.position() if self.position is not None else (self._passes, 0)
        epoch, skip = int(epoch), int(skip)
        self._passes += 1
        it = iter(self.make_loader(epoch))
        if skip:
            log.info("resuming the data stream at epoch %d after %d batches (replaying them)", epoch, skip)
        end = object()
        for i in range(skip):
            if next(it, end) is end:
                # This rank's epoch is shorter than the position says: the shards, the batch size or the number of
                # data-parallel ranks (a resharded resume) changed since the checkpoint was written.
                log.warning("resuming the data stream: epoch %d has %d batches on this rank, fewer than the %d the "
                            "checkpoint says were trained in it; going on with epoch %d", epoch, i, skip, epoch + 1)
                break
        first = next(it, end)
        if first is end and skip:  # the skipped batches ended their epoch: the stream goes on with the next one
            epoch, skip = epoch + 1, 0
            it = iter(self.make_loader(epoch))
            first = next(it, end)
        self.starts.append((epoch, skip))
        if self.on_start is not None:
            self.on_start(epoch, skip)
        if first is end:
            if skip == 0 and self.on_empty is not None:
                raise DataConfigError(self.on_empty())
            return
        yield first
        yield from it


class TrainDataModule(SanaWMDataModule):
    """`SanaWMDataModule` with pre-flight checks and a resumable training loader (see module docstring).

    Args:
        expect: shapes the model needs, checked against the first cached sample: ``latent_channels``,
            ``text_dim`` and (when caption dropout is on) ``text_length``. None skips the check.
        **kwargs: `data.SanaWMDataModule` arguments.
    """

    def __init__(self, *args: Any, expect: dict[str, int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.expect = dict(expect or {})
        self._checked = False
        self._stream: tuple[int, int] | None = None  # (data epoch of the current pass, global batch count at its start)
        self._restored: tuple[int, int] | None = None  # the same, loaded from a checkpoint, for the next pass

    def preflight(self) -> None:
        """Check the shard specs and (for latent shards) the first sample's shapes; idempotent."""
        if self._checked:
            return
        train = check_shards(self.train_shards, "data.train_shards")
        if self.val_shards is not None:
            check_shards(self.val_shards, "data.val_shards")
        if self.kind == "latent" and self.expect:
            s = peek_latent_sample(train)
            C, _, h, w = s.latent.shape
            L, D = s.text_emb.shape
            where = f"first sample {s.key!r} of {train[0]!r}"
            want = self.expect
            if "latent_channels" in want and C != want["latent_channels"]:
                raise DataConfigError(
                    f"{where}: latent has {C} channels but the model expects model.in_channels="
                    f"{want['latent_channels']}; cache latents with the matching VAE or set model.in_channels"
                )
            if "text_dim" in want and D != want["text_dim"]:
                raise DataConfigError(
                    f"{where}: text embeddings are {D}-d but the model expects model.caption_channels="
                    f"{want['text_dim']}; re-cache with the matching text encoder or set model.caption_channels"
                )
            if "text_length" in want and L != want["text_length"]:
                raise DataConfigError(
                    f"{where}: captions have {L} tokens but the null-caption table has model.caption_length="
                    f"{want['text_length']} rows (caption dropout swaps one for the other); make them equal"
                )
        self._checked = True

    def setup(self, stage: str | None = None) -> None:
        self.preflight()
        super().setup(stage)

    def _position(self) -> tuple[int, int]:
        """(data epoch, batches of it already trained) for the pass about to start (see the module docstring)."""
        trainer = self.trainer
        total = int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)  # batches trained so far; restored
        if self._restored is not None:  # the first pass after a resume
            epoch, first = self._restored
            self._restored = None
            return epoch, total - first
        if self._stream is None:  # the first pass of a fresh run, or of a resume from a checkpoint without the position
            return int(trainer.current_epoch), int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        return self._stream[0] + 1, 0

    def _started(self, epoch: int, skipped: int) -> None:
        self._stream = (epoch, int(self.trainer.fit_loop.epoch_loop.batch_progress.total.ready) - skipped)

    def state_dict(self) -> dict[str, int]:
        """The data stream's position, saved in training checkpoints: the current pass's data epoch and the global
        batch count at which that epoch began."""
        if self._stream is None:
            return {}
        return {"stream_epoch": self._stream[0], "stream_first_batch": self._stream[1]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self._restored = (int(state["stream_epoch"]), int(state["stream_first_batch"]))

    def train_dataloader(self) -> ResumableLoader:
        if self.train_dataset is None:
            self.setup("fit")
        dataset = self.train_dataset
        make = lambda epoch: self._loader(dataset, start_epoch=epoch)  # noqa: E731
        if getattr(self, "trainer", None) is None:
            return ResumableLoader(make, None, self._empty_epoch)
        return ResumableLoader(make, self._position, self._empty_epoch, self._started)

    def _empty_epoch(self) -> str:
        """Why a whole training epoch gave no batch: the samples skipped by reason, and the usual cure."""
        counts = {k: v for k, v in sorted(self.skip_counts().items()) if v}
        hp = self.hparams
        what = (f"every sample was skipped ({', '.join(f'{k}: {v}' for k, v in counts.items())}; the warnings above "
                "name each sample)" if counts else "the shards hold no sample for this rank")
        cure = ""
        if "too_few_frames" in counts:
            cure = (f"; clips need data.num_frames={hp.num_frames} frames at data.target_fps={hp.target_fps}: lower "
                    "data.num_frames (8k+1) or write longer clips")
        elif "fps_too_low" in counts:
            cure = f"; the clips are slower than data.target_fps={hp.target_fps}: lower it or use faster footage"
        return f"data.train_shards={self.train_shards!r} gave no training batch in a whole epoch: {what}{cure}"
