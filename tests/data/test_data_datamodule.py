"""Lightning DataModule: synthetic fallback, batches, and a short CPU fit that logs skip counts."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from data.datamodule import SanaWMDataModule, SkipLoggingCallback
from data.schema import Batch
from data.video import encode_mp4
from sana_wm.testing.data import raw_video_sample, tiny_video_clip, write_raw_shard

SYNTH = {"num_clips": 4, "num_frames": 9, "height": 64, "width": 96, "clips_per_shard": 2, "supersample": 1}


def test_datamodule_synthetic_fallback(tmp_path):
    dm = SanaWMDataModule(synthetic_dir=str(tmp_path / "synth"), synthetic=SYNTH, num_frames=9, height=64, width=96, batch_size=2, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and all(isinstance(b, Batch) for b in batches)
    b = batches[0]
    assert b.video.shape == (2, 3, 9, 64, 96) and b.video.dtype == torch.float32
    assert b.camera_conditions.shape == (2, 2, 20) and b.chunk_plucker.shape == (2, 48, 2, 2, 3)
    assert b.c2w.shape == (2, 9, 4, 4) and torch.allclose(b.c2w[:, 0], torch.eye(4).expand(2, 4, 4))
    val = [k for vb in dm.val_dataloader() for k in vb.keys]
    assert sorted(val) == sorted(k for tb in batches for k in tb.keys)


def test_datamodule_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="synthetic_dir"):
        SanaWMDataModule()
    with pytest.raises(ValueError, match="samples_per_epoch"):
        SanaWMDataModule(train_shards="x.tar", resampled=True)
    with pytest.raises(ValueError, match="unknown `synthetic` keys"):
        SanaWMDataModule(synthetic_dir=str(tmp_path), synthetic={"num_clip": 3})


class _Consumer(L.LightningModule):
    """Minimal module: a scalar parameter fitted to the mean of the video, so the batches are really used."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[str] = []

    def training_step(self, batch: Batch, batch_idx: int):
        assert isinstance(batch, Batch) and batch.video.device == self.w.device
        self.seen.extend(batch.keys)
        return (self.w - batch.video.mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_logs_skips(tmp_path):
    frames, c2w, K = tiny_video_clip(num_frames=9, height=32, width=64)
    mp4 = encode_mp4(frames, 16.0)
    good = [raw_video_sample(f"g{i}", frames=frames, c2w=c2w, intrinsics=K, mp4=mp4) for i in range(3)]
    bad = raw_video_sample("bad", frames=frames, c2w=c2w[:4], intrinsics=K, mp4=mp4)
    url = write_raw_shard(tmp_path / "s.tar", [good[0], bad, good[1], good[2]])
    dm = SanaWMDataModule(train_shards=url, num_frames=9, height=32, width=64, batch_size=1, num_workers=0, shuffle_buffer=0)
    cb = SkipLoggingCallback(every_n_steps=1)
    model = _Consumer()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    trainer.fit(model, datamodule=dm)
    assert sorted(model.seen) == sorted(["g0", "g1", "g2"] * 2)
    assert dm.skip_counts() == {"frame_count_mismatch": 1}
    assert trainer.callback_metrics["data/skipped/frame_count_mismatch"].item() == 1.0
