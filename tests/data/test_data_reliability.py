"""No silent wrong answers in the data path: cut shards, latent tensor types, optional poses, skip totals."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from data.datamodule import SanaWMDataModule, SkipLoggingCallback
from data.errors import DataError, SkipReason
from data.video import encode_mp4
from data.webdataset import make_latent_dataset, make_video_dataset
from sana_wm.testing.data import (
    cut_tar,
    npy_bytes,
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


# -- class 2: latent tensor types and the optional pose tensors ----------------------------------------------------


def _edit(sample: dict, member: str | None = None, arr=None, dtypes: dict | None = None, meta: dict | None = None) -> dict:
    """A copy of a raw latent sample with one member replaced and/or json fields changed."""
    out = dict(sample)
    if member is not None:
        out[member] = npy_bytes(arr)
    if dtypes is not None or meta is not None:
        m = json.loads(out["json"])
        m["dtypes"].update(dtypes or {})
        m.update(meta or {})
        out["json"] = json.dumps(m).encode()
    return out


def _latent_defects() -> dict[str, tuple[dict, str, str]]:
    base = raw_latent_sample("bad", poses=True)
    F = 9
    c2w = np.tile(np.eye(4, dtype=np.float32), (F, 1, 1))
    K = np.tile(np.array([51.2, 51.2, 32.0, 16.0], np.float32), (F, 1))
    nan_c2w, scaled_c2w, neg_K = c2w.copy(), c2w.copy(), K.copy()
    nan_c2w[4, 0, 3] = np.nan
    scaled_c2w[2, :3, :3] *= 1.1
    neg_K[3, 1] = -5.0
    latent_i = np.zeros((4, 2, 1, 2), np.int32)
    return {
        # an integer latent is refused (and would have skipped the NaN scan)
        "int_latent": (_edit(base, "latent.npy", latent_i, {"latent": "int32"}), SkipReason.BAD_META, "json:dtypes.latent"),
        "int_latent_json_float": (_edit(base, "latent.npy", latent_i, {"latent": "float32"}), SkipReason.BAD_ARRAY, "latent.npy"),
        # the json says float16 but the member holds float32
        "dtype_disagrees_with_json": (
            _edit(base, "text_emb.npy", np.zeros((3, 4), np.float32), {"text_emb": "float16"}), SkipReason.BAD_ARRAY, "text_emb.npy"
        ),
        "float64_camera": (
            _edit(base, "camera_conditions.npy", np.zeros((2, 20)), {"camera_conditions": "float64"}),
            SkipReason.BAD_META, "json:dtypes.camera_conditions",
        ),
        "no_dtype_entry": (_edit(base, meta={"dtypes": {}}), SkipReason.BAD_META, "json:dtypes.latent"),
        "uint8_mask": (_edit(base, "text_mask.npy", np.ones(3, np.uint8), {"text_mask": "bool"}), SkipReason.BAD_ARRAY, "text_mask.npy"),
        "nan_c2w": (_edit(base, "c2w.npy", nan_c2w), SkipReason.NONFINITE_POSE, "c2w.npy"),
        "non_rigid_c2w": (_edit(base, "c2w.npy", scaled_c2w), SkipReason.NON_RIGID_POSE, "c2w.npy"),
        "c2w_count": (_edit(base, "c2w.npy", c2w[:5]), SkipReason.FRAME_COUNT_MISMATCH, "c2w.npy"),
        "c2w_shape": (_edit(base, "c2w.npy", c2w[:, :3]), SkipReason.BAD_ARRAY, "c2w.npy"),
        "intrinsics_shape": (_edit(base, "intrinsics.npy", np.zeros((F, 3, 3), np.float32)), SkipReason.BAD_ARRAY, "intrinsics.npy"),
        "negative_fy": (_edit(base, "intrinsics.npy", neg_K), SkipReason.BAD_INTRINSICS, "intrinsics.npy"),
        "nan_intrinsics": (_edit(base, "intrinsics.npy", np.full((F, 4), np.nan, np.float32)), SkipReason.BAD_INTRINSICS, "intrinsics.npy"),
    }


@pytest.mark.parametrize("defect", list(_latent_defects()))
def test_latent_tensor_types_and_optional_poses_are_checked(tmp_path, defect):
    bad, reason, field = _latent_defects()[defect]
    url = write_raw_shard(tmp_path / "s.tar", [raw_latent_sample("g0", poses=True), bad, raw_latent_sample("g1")])
    keys, skips = _latent_keys_and_skips(url)
    assert keys == ["g0", "g1"] and skips == {reason: 1}
    with pytest.raises(DataError) as info:
        list(make_latent_dataset(url, strict=True))
    assert (info.value.reason, info.value.key, info.value.field) == (reason, "bad", field)


def test_latent_optional_poses_are_delivered_when_valid(tmp_path):
    url = write_raw_shard(tmp_path / "s.tar", [raw_latent_sample("g0", poses=True)])
    (s,) = list(make_latent_dataset(url, strict=True))
    assert tuple(s.c2w.shape) == (9, 4, 4) and tuple(s.intrinsics.shape) == (9, 4)
    assert s.c2w.dtype == s.intrinsics.dtype == torch.float32
    assert s.c2w[8, 2, 3].item() == pytest.approx(0.4) and s.intrinsics[0].tolist() == pytest.approx([51.2, 51.2, 32.0, 16.0])


# -- class 3: the trainer sees every worker's skips ----------------------------------------------------------------


def _nan_latent_sample(key: str) -> dict:
    sample = raw_latent_sample(key)
    latent = np.zeros((4, 2, 1, 2), np.float32)
    latent[1, 0, 0, 1] = np.nan
    return _edit(sample, "latent.npy", latent)


def _worker_shards(tmp_path) -> list[str]:
    """Four shards for 2 workers (worker w reads shards w and w + 2): worker 0 delivers a0 and then skips two
    NaN latents; worker 1 delivers nothing (one NaN latent, one missing shard)."""
    return [
        write_raw_shard(tmp_path / "s0.tar", [raw_latent_sample("a0"), _nan_latent_sample("a1")]),
        write_raw_shard(tmp_path / "s1.tar", [_nan_latent_sample("b0")]),
        write_raw_shard(tmp_path / "s2.tar", [_nan_latent_sample("a2")]),
        str(tmp_path / "s3_missing.tar"),
    ]


EXPECTED_SKIPS = {SkipReason.NONFINITE_TENSOR: 3, SkipReason.SHARD_READ_ERROR: 1}


def test_epoch_skip_totals_count_every_worker(tmp_path):
    from data.webdataset import EpochDataLoader

    ds = make_latent_dataset(_worker_shards(tmp_path), shuffle_shards=False, rank=0, world_size=1)
    loader = EpochDataLoader(ds, batch_size=1, num_workers=2)
    for _ in range(2):  # the table restarts with each epoch
        assert [k for b in loader for k in b.keys] == ["a0"]
        assert ds.skip_totals() == EXPECTED_SKIPS


class _LatentConsumer(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (self.w - batch.latent.float().mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_skip_callback_reports_the_epoch_totals_of_all_workers(tmp_path):
    dm = SanaWMDataModule(train_shards=_worker_shards(tmp_path), kind="latent", batch_size=1, num_workers=2, shuffle_buffer=0)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[SkipLoggingCallback(every_n_steps=1)])
    trainer.fit(_LatentConsumer(), datamodule=dm)
    m = trainer.callback_metrics
    assert {k: m[f"data/skipped_epoch/{k}"].item() for k in EXPECTED_SKIPS} == EXPECTED_SKIPS
    assert m["data/skipped_epoch"].item() == 4.0
    assert dm.skip_counts() == EXPECTED_SKIPS


# -- class 5: a clip without camera never trains on identity poses -------------------------------------------------


def test_clip_without_camera_is_refused_counted_and_reported(clip, tmp_path, caplog):
    """Identity poses and a default K for footage whose camera may well move would teach "moving footage = static
    camera"; such a clip is skipped as no_camera (and raised in strict mode), never given made-up poses."""
    import logging

    frames, c2w, K, mp4 = clip
    nocam = raw_video_sample("nocam", frames=frames, mp4=mp4, meta_overrides={"camera": False})
    good = raw_video_sample("good", frames=frames, c2w=c2w, intrinsics=K, mp4=mp4)
    url = write_raw_shard(tmp_path / "s.tar", [nocam, good])
    ds = make_video_dataset(url, num_frames=F, height=H, width=W, video_format="uint8")
    with caplog.at_level(logging.WARNING, logger="data.errors"):
        assert [s.key for s in ds] == ["good"]
    assert ds.skip_stats.as_dict() == {SkipReason.NO_CAMERA: 1}
    assert any("nocam" in r.getMessage() and "no_camera" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError) as info:
        list(make_video_dataset(url, num_frames=F, height=H, width=W, strict=True))
    assert (info.value.reason, info.value.key, info.value.field) == (SkipReason.NO_CAMERA, "nocam", "json:camera")


# -- class 6: the shard writer never assumes poses are metric -----------------------------------------------------


def _annotated_folder(root, clip, sidecar: dict | None = None):
    frames, c2w, K, mp4 = clip
    root.mkdir()
    (root / "walk.mp4").write_bytes(mp4)
    np.save(root / "walk.c2w.npy", c2w)
    np.save(root / "walk.intrinsics.npy", K)
    (root / "walk.txt").write_text("a walk")
    if sidecar is not None:
        (root / "walk.json").write_text(json.dumps(sidecar))
    return root


def _written_meta(out) -> dict:
    (s,) = list(make_video_dataset(str(out), num_frames=F, height=H, width=W, strict=True))
    return s.meta


def test_shard_writer_requires_the_pose_scale_to_be_stated(clip, tmp_path, capsys):
    from data.write_shards import ShardSink, main, write_video_sample

    frames, c2w, K, mp4 = clip
    with ShardSink(tmp_path / "api") as sink, pytest.raises(ValueError, match="metric_scale") as info:
        write_video_sample(sink, "walk", caption="a walk", meta={"fps": 16.0}, mp4=mp4, c2w=c2w, intrinsics=K)
    assert "'walk'" in str(info.value) and "relative" in str(info.value)

    folder = _annotated_folder(tmp_path / "in", clip)  # poses from an external tool, no scale anywhere
    assert main(["--input", str(folder), "--out", str(tmp_path / "o0"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "--metric-scale" in err and "--metric-poses" in err and "walk" in err
    # Relative poses with a stated factor, or metric poses: written, and recorded as such.
    assert main(["--input", str(folder), "--out", str(tmp_path / "o1"), "--metric-scale", "0.4"]) == 0
    assert {k: _written_meta(tmp_path / "o1")[k] for k in ("metric_scale", "pose_scale")} == {"metric_scale": 0.4, "pose_scale": "relative"}
    assert main(["--input", str(folder), "--out", str(tmp_path / "o2"), "--metric-poses"]) == 0
    assert {k: _written_meta(tmp_path / "o2")[k] for k in ("metric_scale", "pose_scale")} == {"metric_scale": 1.0, "pose_scale": "metric"}
    with pytest.raises(SystemExit):  # one or the other
        main(["--input", str(folder), "--out", str(tmp_path / "o3"), "--metric-poses", "--metric-scale", "2"])
    # A sidecar json that states the scale is enough; "metric" with a factor other than 1 is a contradiction.
    stated = _annotated_folder(tmp_path / "in2", clip, {"metric_scale": 2.5, "pose_scale": "relative"})
    assert main(["--input", str(stated), "--out", str(tmp_path / "o4"), "--strict"]) == 0
    assert _written_meta(tmp_path / "o4")["metric_scale"] == 2.5
    bad = _annotated_folder(tmp_path / "in3", clip, {"metric_scale": 2.5, "pose_scale": "metric"})
    assert main(["--input", str(bad), "--out", str(tmp_path / "o5"), "--strict"]) == 2
    assert "pose_scale" in capsys.readouterr().err


# -- class 4: one rule for numeric metadata ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["2.0", True, float("nan"), 0])
def test_numeric_metadata_is_a_json_number_everywhere(clip, tmp_path, value):
    """A numeric json field is a JSON number (not a string, not a boolean), finite and > 0 — in the video loader,
    the latent loader and the shard writer alike."""
    from data.write_shards import ShardSink, write_video_sample

    frames, c2w, K, mp4 = clip
    bad = raw_video_sample("bad", frames=frames, c2w=c2w, intrinsics=K, mp4=mp4, meta_overrides={"metric_scale": value})
    url = write_raw_shard(tmp_path / "v.tar", [bad])
    ds = make_video_dataset(url, num_frames=F, height=H, width=W, video_format="uint8")
    assert list(ds) == [] and ds.skip_stats.as_dict() == {SkipReason.BAD_META: 1}

    latent = _edit(raw_latent_sample("bad"), meta={"pixel_height": value})
    keys, skips = _latent_keys_and_skips(write_raw_shard(tmp_path / "l.tar", [latent]))
    assert keys == [] and skips == {SkipReason.BAD_META: 1}

    with ShardSink(tmp_path / "w") as sink, pytest.raises(ValueError, match="metric_scale"):
        write_video_sample(sink, "bad", caption="x", meta={"fps": 16.0, "metric_scale": value}, mp4=mp4, c2w=c2w, intrinsics=K)


def test_latent_metadata_must_agree_with_the_tensors(tmp_path):
    """The latent json's pixel size and frame count describe the latent: (h, w) = size / 32, T = (F - 1) / 8 + 1."""
    cases = {"pixel_height": 96, "pixel_width": 32, "num_frames": 17}
    bad = [_edit(raw_latent_sample(f"bad{i}"), meta={k: v}) for i, (k, v) in enumerate(cases.items())]
    keys, skips = _latent_keys_and_skips(write_raw_shard(tmp_path / "l.tar", [*bad, raw_latent_sample("good")]))
    assert keys == ["good"] and skips == {SkipReason.SHAPE_MISMATCH: 3}
