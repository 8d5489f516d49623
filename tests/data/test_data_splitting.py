"""Rank/worker splitting, per-(rank, epoch, worker) seeding and resampled streams."""

from __future__ import annotations

import pytest

from data.video import encode_mp4
from data.webdataset import EpochDataLoader, SkipTracker, expand_shard_urls, get_dist_info, make_video_dataset
from sana_wm.testing.data import raw_video_sample, tiny_video_clip, write_raw_shard

NUM_SHARDS, PER_SHARD = 8, 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    frames, c2w, K = tiny_video_clip(num_frames=17, height=32, width=64)
    mp4 = encode_mp4(frames, 16.0)
    urls = []
    for s in range(NUM_SHARDS):
        samples = [raw_video_sample(f"s{s}-{i}", frames=frames, c2w=c2w, intrinsics=K, mp4=mp4) for i in range(PER_SHARD)]
        urls.append(write_raw_shard(root / f"part-{s:06d}.tar", samples))
    return urls


def _dataset(urls, rank=0, world_size=1, seed=7, **kw):
    kw.setdefault("shuffle_buffer", 3)
    # 9 of the 17 frames at the clip's own rate: the window start is random (seeded).
    return make_video_dataset(urls, num_frames=9, height=32, width=64, target_fps=16.0, video_format="uint8", rank=rank, world_size=world_size, seed=seed, **kw)


def _keys_by_rank_worker(urls, monkeypatch, how, world_size=2, num_workers=2, epoch=0, seed=7):
    """Keys seen per (rank, worker). ``how='env'`` gives the rank the way torchrun does (RANK /
    WORLD_SIZE, inherited by the DataLoader workers), so wds.split_by_node / split_by_worker do the
    split; ``how='explicit'`` passes rank/world_size to the dataset (the DataModule's path)."""
    seen = {}
    for rank in range(world_size):
        if how == "env":
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(world_size))
            ds = _dataset(urls, rank=None, world_size=None, seed=seed)
        else:
            ds = _dataset(urls, rank=rank, world_size=world_size, seed=seed)
        loader = EpochDataLoader(ds, batch_size=2, num_workers=num_workers, start_epoch=epoch)
        for batch in loader:
            seen.setdefault((rank, batch.worker), []).extend(batch.keys)
    return seen


@pytest.mark.parametrize("how", ["env", "explicit"])
def test_two_ranks_two_workers_see_disjoint_complete_samples(shards, monkeypatch, how):
    seen = _keys_by_rank_worker(shards, monkeypatch, how)
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # every (rank, worker) got data
    all_keys = [k for keys in seen.values() for k in keys]
    assert len(all_keys) == len(set(all_keys)) == NUM_SHARDS * PER_SHARD  # disjoint and complete
    # shards are the unit of splitting: both samples of a shard go to the same (rank, worker)
    owner = {k.split("-")[0]: rw for rw, keys in seen.items() for k in keys}
    for rw, keys in seen.items():
        assert all(owner[k.split("-")[0]] == rw for k in keys)


def test_default_split_is_webdatasets_and_matches_the_explicit_one(shards, monkeypatch):
    """Without rank/world_size the shard list goes through wds.split_by_node / split_by_worker (spied
    on here), and the result equals the explicit-rank slicing, so both paths give the same stream."""
    import webdataset as wds

    from data.webdataset import get_dist_info

    calls = []

    def spy(fn, name):
        def wrapped(src, *args, **kwargs):
            calls.append(name)
            return fn(src, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(wds, "split_by_node", spy(wds.split_by_node, "node"))
    monkeypatch.setattr(wds, "split_by_worker", spy(wds.split_by_worker, "worker"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("WORKER", "1")  # webdataset's stand-in for a DataLoader worker id
    monkeypatch.setenv("NUM_WORKERS", "2")
    assert get_dist_info() == get_dist_info(rank=1, world_size=2)  # seeds see what the splitters see
    default = [s.key for s in _dataset(shards, rank=None, world_size=None)]
    assert calls == ["node", "worker"]
    explicit = [s.key for s in _dataset(shards, rank=1, world_size=2)]
    assert calls == ["node", "worker"]  # the explicit path does not go through them
    assert default == explicit and len(default) == NUM_SHARDS * PER_SHARD // 4


def test_order_is_deterministic_per_epoch_and_changes_across_epochs(shards):
    def order(epoch, seed=7):
        ds = _dataset(shards, seed=seed)
        ds.set_epoch(epoch)
        return [(s.key, s.frame_indices[0].item()) for s in ds]

    a, b = order(0), order(0)
    assert a == b  # same seed and epoch: same shards, shuffle and frame windows
    assert order(1) != a and order(0, seed=8) != a
    assert sorted(k for k, _ in order(1)) == sorted(k for k, _ in a)  # an epoch still covers everything
    starts = {f for _, f in a}
    assert len(starts) > 1  # the frame window start really is random (17 frames, 9 taken)


def test_epoch_dataloader_advances_epochs(shards):
    ds = _dataset(shards)
    loader = EpochDataLoader(ds, batch_size=4, num_workers=0)
    e0 = [k for b in loader for k in b.keys]
    e1 = [k for b in loader for k in b.keys]
    assert sorted(e0) == sorted(e1) and e0 != e1
    ds_again = _dataset(shards)
    ds_again.set_epoch(1)
    assert [s.key for s in ds_again] == e1


def test_resampled_stream_has_fixed_epoch_length_and_differs_by_rank(shards):
    per_rank = []
    for rank in range(2):
        ds = _dataset(shards, rank=rank, world_size=2, resampled=True, samples_per_epoch=7)
        loader = EpochDataLoader(ds, batch_size=1, num_workers=2)
        keys = [k for b in loader for k in b.keys]
        assert len(keys) == 7
        per_rank.append(keys)
    assert per_rank[0] != per_rank[1]
    again = [k for b in EpochDataLoader(_dataset(shards, rank=0, world_size=2, resampled=True, samples_per_epoch=7), batch_size=1, num_workers=2) for k in b.keys]
    assert again == per_rank[0]  # deterministic given (seed, rank, worker, epoch)


def test_dist_info_from_environment(monkeypatch):
    monkeypatch.delenv("WORKER", raising=False)
    monkeypatch.delenv("NUM_WORKERS", raising=False)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    info = get_dist_info()
    assert (info.rank, info.world_size, info.worker, info.num_workers) == (3, 4, 0, 1)
    assert get_dist_info(rank=1, world_size=2).rank == 1
    with pytest.raises(ValueError, match="rank"):
        get_dist_info(rank=2, world_size=2)


def test_expand_shard_urls_forms(shards, tmp_path):
    root = str(shards[0]).rsplit("/", 1)[0]
    assert expand_shard_urls(root) == sorted(shards)
    assert expand_shard_urls(root + "/part-{000000..000002}.tar") == sorted(shards)[:3]
    assert expand_shard_urls(root + "/part-00000[0-1].tar") == sorted(shards)[:2]
    with pytest.raises(ValueError, match="no shards"):
        expand_shard_urls(str(tmp_path))


def test_skip_tracker_sums_latest_snapshot_per_worker():
    from data.schema import Batch

    def b(worker, counts):
        return Batch(keys=["k"], captions=[""], meta=[{}], camera_conditions=None, chunk_plucker=None, skip_counts=counts, worker=worker)

    t = SkipTracker()
    t.update(b(0, {"decode_error": 1}))
    t.update(b(1, {"decode_error": 2, "nan": 1}))
    t.update(b(0, {"decode_error": 3}))  # cumulative per worker: replaces worker 0's earlier snapshot
    assert t.totals() == {"decode_error": 5, "nan": 1}


def test_strict_error_from_a_worker_process_names_the_sample(tmp_path):
    from data.errors import DataError

    frames, c2w, K = tiny_video_clip(num_frames=9, height=32, width=64)
    bad = raw_video_sample("broken", frames=frames, c2w=c2w[:3], intrinsics=K)
    url = write_raw_shard(tmp_path / "bad.tar", [bad])
    ds = make_video_dataset(url, num_frames=9, height=32, width=64, strict=True)
    with pytest.raises(DataError) as info:
        list(EpochDataLoader(ds, batch_size=1, num_workers=1))
    assert info.value.reason == "frame_count_mismatch"
    assert "bad.tar" in str(info.value) and "'broken'" in str(info.value) and "c2w.npy" in str(info.value)


_GLOO_SCRIPT = """
import json, sys
import torch.distributed as dist
sys.path.insert(0, sys.argv[4])
from data.webdataset import EpochDataLoader, make_video_dataset
rank, world, init = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
ds = make_video_dataset(json.loads(sys.argv[5]), num_frames=9, height=32, width=64, video_format="uint8", seed=7)
seen = {}
for batch in EpochDataLoader(ds, batch_size=2, num_workers=2):
    seen.setdefault(str(batch.worker), []).extend(batch.keys)
dist.barrier()
print(json.dumps(seen))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_process_gloo_group_splits_through_webdataset(shards, tmp_path):
    """A real process group (no RANK in the environment): webdataset's splitters read the rank from
    torch.distributed inside each forked DataLoader worker; 2 ranks × 2 workers see disjoint shards."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS")}
    init = f"file://{tmp_path / 'pg'}"
    args = [json.dumps([str(u) for u in shards])]
    procs = [
        subprocess.Popen([sys.executable, "-c", _GLOO_SCRIPT, str(r), "2", init, root, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    seen = {}
    for rank, p in enumerate(procs):
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        for worker, keys in json.loads(out.strip().splitlines()[-1]).items():
            seen[(rank, int(worker))] = keys
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    all_keys = [k for keys in seen.values() for k in keys]
    assert len(all_keys) == len(set(all_keys)) == NUM_SHARDS * PER_SHARD
