"""No silent wrong answers in the data path: cut shards, latent tensor types, optional poses, skip totals."""

from __future__ import annotations

import pytest

from data.errors import DataError, SkipReason
from data.video import encode_mp4
from data.webdataset import make_latent_dataset, make_video_dataset
from sana_wm.testing.data import (
    cut_tar,
    raw_latent_sample,
    raw_video_sample,
    tiny_video_clip,
    write_raw_shard,
)

F, H, W = 9, 32, 64


@pytest.fixture(scope="module")
def clip():
    frames, c2w, K = tiny_video_clip(num_frames=F, height=H, width=W)
    return frames, c2w, K, encode_mp4(frames, 16.0, crf=12)


def _latent_keys_and_skips(urls, **kwargs):
    ds = make_latent_dataset(urls, shuffle_shards=False, **kwargs)
    return [s.key for s in ds], ds.skip_stats.as_dict()


# -- class 1: a shard cut inside a member --------------------------------------------------------------------------


@pytest.mark.parametrize("member,fraction", [("a1.txt", 0.5), ("a1.txt", 0.0), ("a1.latent.npy", 0.5), (None, 0.0)])
def test_cut_shard_is_one_skip_and_the_next_shard_starts_clean(tmp_path, member, fraction):
    """Cut inside the optional caption, just before it, inside a required tensor, or after the last member (the
    end-of-archive blocks gone): the half-read sample a1 is one shard_read_error, never delivered, and shard B is read
    whole and clean."""
    full = write_raw_shard(tmp_path / "a.tar", [raw_latent_sample("a0"), raw_latent_sample("a1", seed=1)])
    a = cut_tar(full, tmp_path / "a_cut.tar", member, fraction)
    b = write_raw_shard(tmp_path / "b.tar", [raw_latent_sample("b0", seed=2), raw_latent_sample("b1", seed=3)])
    keys, skips = _latent_keys_and_skips([a, b])
    assert keys == ["a0", "b0", "b1"]
    assert skips == {SkipReason.SHARD_READ_ERROR: 1}
    with pytest.raises(DataError) as info:
        list(make_latent_dataset([a, b], shuffle_shards=False, strict=True))
    assert (info.value.reason, info.value.url, info.value.key) == (SkipReason.SHARD_READ_ERROR, a, "a1")


def test_cut_video_shard_counts_once(clip, tmp_path):
    """A video shard cut inside the last clip's mp4: one skip (not two read errors plus a missing key in the next
    shard), and the next shard's first clip, which has the same key, is delivered intact."""
    frames, c2w, K, mp4 = clip
    s = [raw_video_sample(f"s{i}", frames=frames, c2w=c2w, intrinsics=K, mp4=mp4) for i in range(2)]
    a = cut_tar(write_raw_shard(tmp_path / "a.tar", s), tmp_path / "a_cut.tar", "s1.mp4", 0.5)
    b = write_raw_shard(tmp_path / "b.tar", [raw_video_sample("s1", frames=frames, c2w=c2w, intrinsics=K, mp4=mp4)])
    ds = make_video_dataset([a, b], num_frames=F, height=H, width=W, shuffle_shards=False, video_format="uint8")
    out = list(ds)
    assert [(x.key, x.meta["__url__"]) for x in out] == [("s0", a), ("s1", b)]
    assert ds.skip_stats.as_dict() == {SkipReason.SHARD_READ_ERROR: 1}


def test_missing_shard_is_one_skip(tmp_path):
    b = write_raw_shard(tmp_path / "b.tar", [raw_latent_sample("b0")])
    keys, skips = _latent_keys_and_skips([str(tmp_path / "nope.tar"), b])
    assert keys == ["b0"] and skips == {SkipReason.SHARD_READ_ERROR: 1}
