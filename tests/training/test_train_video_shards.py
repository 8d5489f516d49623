"""Training straight from video shards (data.kind=video): the data module crops and builds the camera maps for the
codec the module encodes with, so a codec that is not 32× (the demo's 8×) trains without a latent cache."""

from __future__ import annotations

import pytest
import torch

from sana_wm.encoders.tiny import save_tiny_text_encoder, save_tiny_vae
from sana_wm.testing.data import write_tiny_video_shards
from sana_wm.testing.training import TINY_CPU_OVERRIDES, compose_train_config
from sana_wm.training import launch


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videotrain")
    write_tiny_video_shards(root / "videos", num_clips=2, num_frames=9, height=64, width=96)
    save_tiny_vae(root / "enc", latent_channels=16, spatial_compression=8)
    save_tiny_text_encoder(root / "enc", hidden=32)
    return root


def test_video_shards_get_the_codecs_latent_grid(root, tmp_path):
    cfg = launch.to_train_config(compose_train_config([
        *TINY_CPU_OVERRIDES, "data=video", f"data.train_shards={root / 'videos'}", "data.val_shards=null",
        "data.num_workers=0", "data.batch_size=1", "data.num_frames=9", "data.height=64", "data.width=96",
        "encoders.kind=pretrained", f"encoders.vae={root / 'enc'}", f"encoders.text_encoder={root / 'enc'}",
        "encoders.dtype=float32", f"output_dir={tmp_path}",
    ]))
    module = launch.build_module(cfg)
    assert module.encoders.vae.spatial_compression == 8
    batch = next(iter(launch.build_datamodule(cfg, module).train_dataloader()))
    # 64 × 96 pixels: the 8× codec's latent grid is 8 × 12 (the loader's own default, 32×, would give 2 × 3).
    assert batch.chunk_plucker.shape[-2:] == (8, 12)
    inputs = module.prepare_batch(batch)
    assert inputs["latent"].shape == (1, 16, 2, 8, 12)
    loss, _ = module.flow_step(inputs, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
