"""Bad data never kills a run: every defect class is skipped and counted, or raised in strict mode."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest
import torch

from data.errors import SKIP_REASONS, DataError, SkipReason
from data.schema import LATENT_SCHEMA_VERSION, tensor_to_npy_bytes
from data.video import encode_mp4
from data.webdataset import make_latent_dataset, make_video_dataset
from data.write_shards import ShardSink, write_latent_sample
from sana_wm.camera import prepare_camera
from sana_wm.testing.data import raw_video_sample, tiny_video_clip, write_raw_shard

F, H, W = 9, 32, 64


@pytest.fixture(scope="module")
def clip():
    frames, c2w, K = tiny_video_clip(num_frames=F, height=H, width=W)
    return frames, c2w, K, encode_mp4(frames, 16.0, crf=12)


def _faststart_truncated(frames: np.ndarray, tmp_path) -> bytes:
    """An mp4 with the index at the front (so it opens) whose media data is cut short."""
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=16)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for fr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = path.read_bytes()
    return data[: int(len(data) * 0.6)]


def _defect(name: str, clip, tmp_path) -> tuple[dict, str, str]:
    """(raw bad sample with key 'bad', expected skip reason, expected bad field)."""
    frames, c2w, K, mp4 = clip
    good = dict(frames=frames, c2w=c2w, intrinsics=K, mp4=mp4)
    nan_c2w = c2w.copy()
    nan_c2w[3, 0, 3] = np.nan
    scaled_c2w = c2w.copy()
    scaled_c2w[4, :3, :3] *= 1.2  # a scaled rotation is not rigid
    bad_K = K.copy()
    bad_K[0, 0] = -K[0, 0]
    cases = {
        "corrupt_mp4": (dict(good, mp4=bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8))), SkipReason.DECODE_ERROR, "mp4"),
        "truncated_mp4": (dict(good, mp4=mp4[: len(mp4) // 2]), SkipReason.DECODE_ERROR, "mp4"),
        "truncated_faststart_mp4": (dict(good, mp4=_faststart_truncated(frames, tmp_path)), SkipReason.DECODE_ERROR, "mp4"),
        "too_few_frames": (dict(good, frames=frames[:5], mp4=encode_mp4(frames[:5], 16.0), c2w=c2w[:5]), SkipReason.TOO_FEW_FRAMES, "mp4"),
        "pose_count_mismatch": (dict(good, c2w=c2w[:F - 1]), SkipReason.FRAME_COUNT_MISMATCH, "c2w.npy"),
        "video_shorter_than_poses": (dict(good, mp4=encode_mp4(frames[:F - 1], 16.0)), SkipReason.FRAME_COUNT_MISMATCH, "mp4"),
        "intrinsics_count_mismatch": (dict(good, intrinsics=np.tile(K, (F - 2, 1, 1))), SkipReason.FRAME_COUNT_MISMATCH, "intrinsics.npy"),
        "nan_pose": (dict(good, c2w=nan_c2w), SkipReason.NONFINITE_POSE, "c2w.npy"),
        "non_rigid_pose": (dict(good, c2w=scaled_c2w), SkipReason.NON_RIGID_POSE, "c2w.npy"),
        "negative_focal": (dict(good, intrinsics=bad_K), SkipReason.BAD_INTRINSICS, "intrinsics.npy"),
        "zero_focal_vector": (dict(good, intrinsics=np.array([0.0, 50.0, 32.0, 16.0])), SkipReason.BAD_INTRINSICS, "intrinsics.npy"),
        "missing_c2w": (dict(good, drop=("c2w.npy",)), SkipReason.MISSING_KEY, "c2w.npy"),
        "missing_video": (dict(good, drop=("mp4",)), SkipReason.MISSING_KEY, "mp4"),
        "missing_json": (dict(good, drop=("json",)), SkipReason.MISSING_KEY, "json"),
        "missing_fps": (dict(good, meta_overrides={"fps": None}), SkipReason.MISSING_KEY, "json:fps"),
        "wrong_schema": (dict(good, meta_overrides={"schema": "sana-wm-shard/0"}), SkipReason.BAD_META, "json:schema"),
        "bad_metric_scale": (dict(good, meta_overrides={"metric_scale": -1.0}), SkipReason.BAD_META, "json:metric_scale"),
        "fps_too_low": (dict(good, fps=8.0), SkipReason.FPS_TOO_LOW, "json:fps"),
        "size_mismatch": (dict(good, meta_overrides={"width": W * 2}), SkipReason.SIZE_MISMATCH, "mp4"),
        "bad_npy": (dict(good), SkipReason.BAD_ARRAY, "c2w.npy"),
    }
    kwargs, reason, field = cases[name]
    sample = raw_video_sample("bad", **kwargs)
    if name == "bad_npy":
        sample["c2w.npy"] = b"not an npy file"
    return sample, reason, field


DEFECTS = [
    "corrupt_mp4", "truncated_mp4", "truncated_faststart_mp4", "too_few_frames", "pose_count_mismatch",
    "video_shorter_than_poses", "intrinsics_count_mismatch", "nan_pose", "non_rigid_pose", "negative_focal",
    "zero_focal_vector", "missing_c2w", "missing_video", "missing_json", "missing_fps", "wrong_schema",
    "bad_metric_scale", "fps_too_low", "size_mismatch", "bad_npy",
]


def _dataset(url: str, strict: bool):
    return make_video_dataset(url, num_frames=F, height=H, width=W, target_fps=16.0, frame_sampling="start", video_format="uint8", strict=strict)


@pytest.mark.parametrize("defect", DEFECTS)
def test_defect_is_skipped_counted_or_raised(defect, clip, tmp_path, caplog):
    frames, c2w, K, mp4 = clip
    bad, reason, field = _defect(defect, clip, tmp_path)
    assert reason in SKIP_REASONS
    good = [raw_video_sample(f"good{i}", frames=frames, c2w=c2w, intrinsics=K, mp4=mp4) for i in range(2)]
    url = write_raw_shard(tmp_path / "shard.tar", [good[0], bad, good[1]])

    ds = _dataset(url, strict=False)
    with caplog.at_level(logging.WARNING, logger="data.errors"):
        samples = list(ds)
    assert [s.key for s in samples] == ["good0", "good1"]
    assert ds.skip_stats.as_dict() == {reason: 1}
    assert samples[-1].skip_counts == {reason: 1}  # the counts travel with the samples
    assert any("bad" in r.getMessage() and reason in r.getMessage() for r in caplog.records)

    with pytest.raises(DataError) as info:
        list(_dataset(url, strict=True))
    err = info.value
    assert (err.reason, err.url, err.key, err.field) == (reason, url, "bad", field)
    assert url in str(err) and "'bad'" in str(err) and field in str(err)


def test_truncated_tar_is_skipped_or_raised(clip, tmp_path):
    frames, c2w, K, mp4 = clip
    samples = [raw_video_sample(f"s{i}", frames=frames, c2w=c2w, intrinsics=K, mp4=mp4) for i in range(3)]
    full = write_raw_shard(tmp_path / "full.tar", samples)
    data = open(full, "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * 0.7)])  # cuts the last sample short
    other = write_raw_shard(tmp_path / "other.tar", [raw_video_sample("o0", frames=frames, c2w=c2w, intrinsics=K, mp4=mp4)])

    ds = make_video_dataset([str(cut), other], num_frames=F, height=H, width=W, shuffle_shards=False, video_format="uint8")
    keys = [s.key for s in ds]
    assert "o0" in keys and "s0" in keys and len(keys) < 4
    counts = ds.skip_stats.as_dict()
    assert counts.get(SkipReason.SHARD_READ_ERROR, 0) + counts.get(SkipReason.MISSING_KEY, 0) >= 1

    ds_strict = make_video_dataset([str(cut), other], num_frames=F, height=H, width=W, shuffle_shards=False, strict=True)
    with pytest.raises(DataError, match="cut.tar"):
        list(ds_strict)


def test_missing_shard_file_is_skipped(clip, tmp_path):
    frames, c2w, K, mp4 = clip
    good = write_raw_shard(tmp_path / "g.tar", [raw_video_sample("g", frames=frames, c2w=c2w, intrinsics=K, mp4=mp4)])
    ds = make_video_dataset([str(tmp_path / "nope.tar"), good], num_frames=F, height=H, width=W, shuffle_shards=False)
    assert [s.key for s in ds] == ["g"]
    assert ds.skip_stats.as_dict() == {SkipReason.SHARD_READ_ERROR: 1}


def _latent_shards(tmp_path, corrupt: str) -> str:
    """Latent shard with samples g0, bad, g1; 'bad' has a NaN latent or a mis-shaped Plücker tensor."""
    T, h, w = 2, 1, 2
    cond, plk = prepare_camera(np.tile(np.eye(4), (9, 1, 1)), np.array([40.0, 40.0, 32.0, 16.0]), (32, 64), (h, w))
    emb, mask = torch.zeros(3, 4), torch.ones(3)
    out = tmp_path / corrupt
    with ShardSink(out, schema=LATENT_SCHEMA_VERSION) as sink:
        write_latent_sample(sink, "g0", torch.randn(4, T, h, w), emb, mask, cond, plk)
        if corrupt == "nan_latent":
            latent = torch.randn(4, T, h, w)
            latent[0, 0, 0, 0] = float("nan")
            write_latent_sample(sink, "bad", latent, emb, mask, cond, plk)
        else:
            # The writer refuses a mis-shaped tensor, so write a valid sample into a side file and swap it.
            tmp = ShardSink(tmp_path / "side", schema=LATENT_SCHEMA_VERSION)
            sample = {}
            tmp.write = lambda d, num_frames=0: sample.update(d)  # capture instead of writing
            write_latent_sample(tmp, "bad", torch.randn(4, T, h, w), emb, mask, cond, plk)
            sample["chunk_plucker.npy"] = tensor_to_npy_bytes(plk[:, :, :, :1], "chunk_plucker")[0]
            sink.write(sample)
        write_latent_sample(sink, "g1", torch.randn(4, T, h, w), emb, mask, cond, plk)
    return str(out)


@pytest.mark.parametrize("corrupt,reason,field", [("nan_latent", SkipReason.NONFINITE_TENSOR, "latent.npy"), ("plucker_shape", SkipReason.SHAPE_MISMATCH, "chunk_plucker.npy")])
def test_latent_defects(tmp_path, corrupt, reason, field):
    url = _latent_shards(tmp_path, corrupt)
    ds = make_latent_dataset(url)
    assert [s.key for s in ds] == ["g0", "g1"]
    assert ds.skip_stats.as_dict() == {reason: 1}
    with pytest.raises(DataError) as info:
        list(make_latent_dataset(url, strict=True))
    assert (info.value.reason, info.value.key, info.value.field) == (reason, "bad", field)


def test_sample_error_rejects_unknown_reason():
    from data.errors import SampleError

    with pytest.raises(ValueError, match="unknown skip reason"):
        SampleError("bogus", "x", "y")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_scan_catches_every_float_kind(dtype, bad):
    from data.errors import SampleError
    from data.webdataset import _check_finite

    x = torch.randn(4, 3, 5, 7).to(dtype)
    _check_finite(x, "x")  # finite: no error
    x[2, 1, 3, 4] = bad
    with pytest.raises(SampleError, match="1 non-finite"):
        _check_finite(x, "latent.npy")
    _check_finite(torch.full((8,), 3e38), "huge")  # a float32 sum overflows, yet every value is finite
    _check_finite(torch.full((8,), 3e38).to(torch.bfloat16), "huge")  # same for bfloat16
    _check_finite(torch.full((8,), 6e4).to(torch.float16), "huge")  # and float16 (tested on its bits)
    x[2, 1, 3, 4] = 0.0
    x.view(-1)[-1] = bad  # the very last element is scanned too
    with pytest.raises(SampleError, match="1 non-finite"):
        _check_finite(x, "latent.npy")
