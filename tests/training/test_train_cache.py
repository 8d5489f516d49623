"""`python -m sana_wm.training.cache`: video shards → latent shards with the frozen (tiny, random) encoders."""

from __future__ import annotations

import json

import pytest
import torch

from data.schema import collate
from data.webdataset import make_latent_dataset, make_video_dataset
from sana_wm.encoders.text import GemmaTextEncoder
from sana_wm.encoders.tiny import save_tiny_text_encoder, save_tiny_vae
from sana_wm.encoders.vae import LatentCodec
from sana_wm.testing.data import write_tiny_video_shards
from sana_wm.training.cache import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_tiny_video_shards(root / "videos", num_clips=3, num_frames=17, height=64, width=96)
    save_tiny_vae(root / "enc", latent_channels=16)
    save_tiny_text_encoder(root / "enc", hidden=32)
    return root


def test_cache_writes_latent_shards_equal_to_encoding_the_clips(setup, capsys):
    root = setup
    out = root / "latents"
    args = ["--shards", str(root / "videos"), "--out", str(out), "--vae", str(root / "enc"), "--text-encoder",
            str(root / "enc"), "--num-frames", "17", "--height", "64", "--width", "96", "--device", "cpu",
            "--encoder-dtype", "float32", "--latent-dtype", "float32", "--max-sequence-length", "32",
            "--num-workers", "0", "--max-count", "2", "--no-progress"]
    assert main(args) == 0
    assert "cached 3 clips into 2 shard(s)" in capsys.readouterr().out
    assert json.loads((out / "cache.json").read_text())["samples"] == 3
    cached = {s.key: s for s in make_latent_dataset(str(out), shuffle_shards=False, rank=0, world_size=1, strict=True)}
    assert sorted(cached) == ["clip-0", "clip-1", "clip-2"]

    codec = LatentCodec.from_pretrained(root / "enc")
    text = GemmaTextEncoder.from_pretrained(root / "enc", dtype=torch.float32, max_sequence_length=32)
    videos = make_video_dataset(str(root / "videos"), num_frames=17, height=64, width=96, frame_sampling="start",
                                shuffle_shards=False, rank=0, world_size=1, strict=True)
    for sample in videos:
        c = cached[sample.key]
        b = collate([sample])
        assert c.latent.shape == (16, 3, 2, 3)
        torch.testing.assert_close(c.latent[None], codec.encode(b.video), rtol=1e-5, atol=1e-5)
        emb, mask = text.encode([sample.caption])
        torch.testing.assert_close(c.text_emb[None], emb, rtol=1e-5, atol=1e-5)
        assert torch.equal(c.text_mask[None], mask)
        assert torch.equal(c.camera_conditions, sample.camera_conditions)
        assert torch.equal(c.chunk_plucker, sample.chunk_plucker)
        assert c.caption == sample.caption and c.meta["source_key"] == sample.key


def test_cache_with_no_shards_is_a_clear_error(setup, capsys):
    root = setup
    rc = main(["--shards", str(root / "nothing-here"), "--out", str(root / "x"), "--vae", str(root / "enc"),
               "--text-encoder", str(root / "enc"), "--no-progress"])
    assert rc == 2
    assert "--shards=" in capsys.readouterr().err
