"""Format round trips: write video / latent samples, read them back through the loader; manifests; CLI."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from data.schema import LATENT_SCHEMA_VERSION, SCHEMA_VERSION
from data.video import encode_mp4
from data.webdataset import make_latent_dataset, make_video_dataset
from data.write_shards import ShardSink, write_latent_sample, write_video_sample
from data.write_shards import main as write_shards_main
from sana_wm.camera import prepare_camera
from sana_wm.testing.data import tiny_video_clip


def _expected_relative(c2w: np.ndarray, scale: float) -> np.ndarray:
    rel = np.linalg.inv(c2w[0])[None] @ c2w
    rel[:, :3, 3] *= scale
    return rel


def test_video_roundtrip_lossless_frames(tmp_path):
    frames, c2w, K = tiny_video_clip(num_frames=17, height=64, width=96)
    meta = {"fps": 16.0, "metric_scale": 2.5, "source": "unit", "licence": "CC0-1.0", "annotation": {"backend": "gt", "version": "1"}, "quality": {"dover": 0.7}}
    with ShardSink(tmp_path, max_count=10) as sink:
        written = write_video_sample(sink, "clip-0", caption="a panning clip", meta=meta, frames=frames, c2w=c2w, intrinsics=K)
    assert written["schema"] == SCHEMA_VERSION
    assert (written["num_frames"], written["height"], written["width"]) == (17, 64, 96)

    ds = make_video_dataset(str(tmp_path), num_frames=17, height=64, width=96, target_fps=None, frame_sampling="start", video_format="uint8")
    (s,) = list(ds)
    assert s.key == "clip-0" and s.caption == "a panning clip"
    assert torch.equal(s.video, torch.from_numpy(frames))  # frames.npy is lossless and no resize happens
    np.testing.assert_allclose(s.c2w.numpy(), _expected_relative(c2w, 2.5), atol=1e-5)
    np.testing.assert_allclose(s.intrinsics.numpy(), np.tile([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], (17, 1)), rtol=1e-6)
    assert s.meta["quality"] == {"dover": 0.7} and s.meta["annotation"]["backend"] == "gt"
    assert s.meta["__url__"].endswith("shard-000000.tar")
    # camera_conditions: row-major relative pose of pixel frame 8i, then intrinsics / 32 (latent units).
    assert s.camera_conditions.shape == (3, 20)
    for i in range(3):
        np.testing.assert_allclose(s.camera_conditions[i, :16].numpy(), s.c2w[8 * i].reshape(16).numpy(), atol=1e-5)
        np.testing.assert_allclose(s.camera_conditions[i, 16:].numpy(), s.intrinsics[8 * i].numpy() / 32, rtol=1e-5)
    assert s.chunk_plucker.shape == (48, 3, 2, 3)


def test_video_roundtrip_mp4_and_manifest(tmp_path):
    with ShardSink(tmp_path, prefix="vid", max_count=2) as sink:
        for i in range(5):
            frames, c2w, K = tiny_video_clip(num_frames=9, height=32, width=64, seed=i)
            write_video_sample(sink, f"c{i}", caption=f"clip {i}", meta={"fps": 24.0, "metric_scale": 1.0}, mp4=encode_mp4(frames, 24.0, crf=10), c2w=c2w, intrinsics=K)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["schema"] == SCHEMA_VERSION
    assert manifest["num_samples"] == 5 and manifest["num_frames"] == 45 and manifest["num_shards"] == 3
    assert [s["num_samples"] for s in manifest["shards"]] == [2, 2, 1]
    for entry in manifest["shards"]:
        data = (tmp_path / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)

    ds = make_video_dataset(str(tmp_path / "manifest.json"), num_frames=9, height=32, width=64, target_fps=None, frame_sampling="start", video_format="uint8", shuffle_shards=False)
    samples = {s.key: s for s in ds}
    assert sorted(samples) == [f"c{i}" for i in range(5)]
    frames, _, _ = tiny_video_clip(num_frames=9, height=32, width=64, seed=3)
    got, want = samples["c3"].video.float(), torch.from_numpy(frames).float()
    err = (got - want).abs().mean()
    err_other = (got[1:] - want[:-1]).abs().mean()  # one frame off: must be clearly worse
    assert err < 10.0 and err < 0.5 * err_other, f"H.264 round trip: error {err:.2f} vs off-by-one {err_other:.2f}"
    assert samples["c3"].meta["fps"] == 24.0 and samples["c3"].fps == 24.0


def test_latent_roundtrip_bf16(tmp_path):
    torch.manual_seed(0)
    T, h, w = 3, 2, 3
    c2w = torch.eye(4, dtype=torch.float64).repeat(17, 1, 1)
    c2w[:, 0, 3] = torch.linspace(0, 1, 17, dtype=torch.float64)
    intr = torch.tensor([[80.0, 80.0, 48.0, 32.0]]).repeat(17, 1)
    cond, plk = prepare_camera(c2w, intr, (64, 96), (h, w))
    latent = torch.randn(16, T, h, w).to(torch.bfloat16)
    emb = torch.randn(7, 12)
    mask = torch.tensor([1, 1, 1, 1, 0, 0, 0])
    with ShardSink(tmp_path, prefix="lat", schema=LATENT_SCHEMA_VERSION) as sink:
        meta = write_latent_sample(sink, "lat-0", latent, emb, mask, cond, plk, {"source": "unit"}, caption="hello", c2w=c2w.float(), intrinsics=intr)
    assert meta["num_frames"] == 17 and meta["pixel_height"] == 64 and meta["dtypes"]["latent"] == "bfloat16"
    (s,) = list(make_latent_dataset(str(tmp_path)))
    assert s.latent.dtype == torch.bfloat16 and torch.equal(s.latent, latent)
    assert torch.equal(s.text_emb, emb) and s.text_mask.tolist() == [True] * 4 + [False] * 3
    assert torch.equal(s.camera_conditions, cond) and torch.equal(s.chunk_plucker, plk)
    assert torch.equal(s.c2w, c2w.float()) and torch.equal(s.intrinsics, intr)
    assert s.caption == "hello" and s.meta["source"] == "unit"


def test_latent_writer_rejects_mismatched_shapes(tmp_path):
    with ShardSink(tmp_path, schema=LATENT_SCHEMA_VERSION) as sink, pytest.raises(ValueError, match="camera_conditions"):
        write_latent_sample(sink, "x", torch.zeros(4, 3, 2, 2), torch.zeros(5, 8), torch.ones(5), torch.zeros(2, 20), torch.zeros(48, 3, 2, 2))


def test_video_writer_rejects_bad_clip(tmp_path):
    frames, c2w, K = tiny_video_clip(num_frames=9)
    with ShardSink(tmp_path) as sink:
        with pytest.raises(ValueError, match="'bad'.*8 poses for a clip of 9 frames"):
            write_video_sample(sink, "bad", caption="x", meta={"fps": 16.0, "metric_scale": 1.0}, frames=frames, c2w=c2w[:8], intrinsics=K)
        with pytest.raises(ValueError, match="duplicate"):
            write_video_sample(sink, "ok", caption="x", meta={"fps": 16.0, "metric_scale": 1.0}, frames=frames, c2w=c2w, intrinsics=K)
            write_video_sample(sink, "ok", caption="x", meta={"fps": 16.0, "metric_scale": 1.0}, frames=frames, c2w=c2w, intrinsics=K)


def _annotation_folder(root, n_good: int = 2):
    root.mkdir()
    for i in range(n_good + 1):
        frames, c2w, K = tiny_video_clip(num_frames=9, height=32, width=64, seed=i)
        stem = f"clip.{i}"  # a dot in the stem must be sanitised out of the sample key
        (root / f"{stem}.mp4").write_bytes(encode_mp4(frames, 16.0))
        np.save(root / f"{stem}.c2w.npy", c2w if i < n_good else c2w[:5])  # the last clip is broken
        np.save(root / f"{stem}.intrinsics.npy", K)
        (root / f"{stem}.txt").write_text(f"caption {i}\n")
        (root / f"{stem}.json").write_text(json.dumps({"metric_scale": 0.5, "annotation": {"backend": "test", "version": "0"}}))
    return root


def test_write_shards_cli(tmp_path, capsys):
    src = _annotation_folder(tmp_path / "clips")
    out = tmp_path / "shards"
    assert write_shards_main(["--input", str(src), "--out", str(out), "--max-count", "1", "--licence", "CC-BY-4.0"]) == 0
    assert "skipped clip.2" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 2 and manifest["num_shards"] == 2 and manifest["num_frames"] == 18
    ds = make_video_dataset(str(out), num_frames=9, height=32, width=32, target_fps=None, shuffle_shards=False)
    samples = list(ds)
    assert [s.key for s in samples] == ["clip_0", "clip_1"]
    assert samples[0].meta["licence"] == "CC-BY-4.0" and samples[0].meta["metric_scale"] == 0.5
    assert samples[0].caption == "caption 0"
    # strict mode stops at the broken clip and names it
    assert write_shards_main(["--input", str(src), "--out", str(tmp_path / "strict"), "--strict"]) == 2
    assert "clip.2" in capsys.readouterr().err
    assert os.path.isdir(tmp_path / "strict")
