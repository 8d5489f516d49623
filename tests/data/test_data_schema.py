"""Schema helpers: lossless tensor serialisation, sample keys, collate and Batch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from data.schema import (
    Batch,
    LatentSample,
    Sample,
    check_sample_key,
    collate,
    npy_bytes_to_tensor,
    tensor_to_npy_bytes,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tensor_npy_roundtrip_is_lossless(dtype):
    x = torch.randn(3, 5, 7).to(dtype)
    data, name = tensor_to_npy_bytes(x, "x")
    y = npy_bytes_to_tensor(data, name)
    assert y.dtype == dtype
    assert torch.equal(x, y)


def test_bool_roundtrip_and_unsupported_dtype():
    m = torch.tensor([True, False, True])
    assert torch.equal(npy_bytes_to_tensor(*tensor_to_npy_bytes(m, "m")), m)
    with pytest.raises(ValueError, match="int64"):
        tensor_to_npy_bytes(torch.arange(3), "idx")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.bool])
def test_zero_copy_npy_is_a_view_of_the_bytes_and_equals_np_load(dtype):
    import warnings

    x = (torch.randn(3, 5, 7) > 0) if dtype == torch.bool else torch.randn(3, 5, 7).to(dtype)
    data, name = tensor_to_npy_bytes(x, "x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "array is not writable" warning is expected and silenced
        y = npy_bytes_to_tensor(data, name, zero_copy=True)
    assert y.dtype == dtype and y.is_contiguous() and torch.equal(x, y)
    assert torch.equal(y, npy_bytes_to_tensor(data, name))
    base = np.frombuffer(data, np.uint8)
    assert base.ctypes.data <= y.data_ptr() < base.ctypes.data + len(data)  # no copy was made


@pytest.mark.parametrize(
    "arr",
    [
        np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)),  # fortran_order: True
        np.arange(6, dtype=">f4").reshape(2, 3),  # big-endian
        np.zeros((0, 3), np.float32),  # empty
        np.float32(2.5),  # 0-d
    ],
    ids=["fortran", "big-endian", "empty", "scalar"],
)
def test_zero_copy_npy_handles_layouts_it_must_copy(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    y = npy_bytes_to_tensor(buf.getvalue(), zero_copy=True)
    assert y.shape == arr.shape and y.is_contiguous()
    assert np.array_equal(y.numpy(), arr)


def test_zero_copy_npy_reads_version_2_headers_and_rejects_bad_bytes():
    arr = np.arange(12, dtype=np.float16).reshape(3, 4)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=(2, 0))
    assert np.array_equal(npy_bytes_to_tensor(buf.getvalue(), zero_copy=True).numpy(), arr)
    data, _ = tensor_to_npy_bytes(torch.zeros(4, 4), "z")
    with pytest.raises(ValueError):  # truncated: fewer data bytes than the header promises
        npy_bytes_to_tensor(data[:-4], zero_copy=True)
    with pytest.raises(ValueError, match="not a .npy"):
        npy_bytes_to_tensor(b"PK\x03\x04 not an array", zero_copy=True)
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object"):
        npy_bytes_to_tensor(obj.getvalue(), zero_copy=True)


@pytest.mark.parametrize("bad", ["a.b", "", "sp ace", "x/y"])
def test_sample_key_rejects_dots_and_odd_characters(bad):
    with pytest.raises(ValueError, match="invalid"):
        check_sample_key(bad)
    assert check_sample_key("clip_01-a") == "clip_01-a"


def _video_sample(key: str, frames: int = 9, h: int = 64, w: int = 96) -> Sample:
    t = (frames - 1) // 8 + 1
    return Sample(
        key=key,
        video=torch.zeros(3, frames, h, w),
        c2w=torch.eye(4).repeat(frames, 1, 1),
        intrinsics=torch.ones(frames, 4),
        camera_conditions=torch.zeros(t, 20),
        chunk_plucker=torch.zeros(48, t, h // 32, w // 32),
        caption=f"caption {key}",
        fps=16.0,
        frame_indices=torch.arange(frames),
        skip_counts={"decode_error": 2},
        worker=1,
    )


def test_collate_video_batch_shapes_and_to():
    batch = collate([_video_sample("a"), _video_sample("b")])
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.video.shape == (2, 3, 9, 64, 96)
    assert batch.c2w.shape == (2, 9, 4, 4)
    assert batch.intrinsics.shape == (2, 9, 4)
    assert batch.camera_conditions.shape == (2, 2, 20)
    assert batch.chunk_plucker.shape == (2, 48, 2, 2, 3)
    assert batch.fps.tolist() == [16.0, 16.0]
    assert batch.keys == ["a", "b"] and batch.captions == ["caption a", "caption b"]
    assert batch.latent is None and batch.video_format == "float"
    assert batch.skip_counts == {"decode_error": 2} and batch.worker == 1
    moved = batch.to(torch.device("cpu"))
    assert moved is not batch and torch.equal(moved.video, batch.video)


def test_collate_rejects_mixed_shapes_naming_the_field():
    with pytest.raises(ValueError, match="video"):
        collate([_video_sample("a", frames=9), _video_sample("b", frames=17)])
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_collate_latent_batch():
    s = [
        LatentSample(
            key=k,
            latent=torch.randn(8, 2, 2, 3, dtype=torch.bfloat16),
            text_emb=torch.randn(5, 4),
            text_mask=torch.tensor([True] * 3 + [False] * 2),
            camera_conditions=torch.zeros(2, 20),
            chunk_plucker=torch.zeros(48, 2, 2, 3),
            caption="",
        )
        for k in ("x", "y", "z")
    ]
    b = collate(s)
    assert b.latent.shape == (3, 8, 2, 2, 3) and b.latent.dtype == torch.bfloat16
    assert b.text_emb.shape == (3, 5, 4) and b.text_mask.shape == (3, 5)
    assert b.video is None and b.fps is None and b.c2w is None
