"""Frame sampling, resize + crop, and intrinsics that follow the crop (a 3-D point stays on its pixel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.errors import SampleError, SkipReason
from data.synthetic import Box, Material, Scene, pinhole_intrinsics, render
from data.transforms import check_num_frames, check_target_size, resize_center_crop, sample_frame_indices
from data.webdataset import make_video_dataset
from sana_wm.camera import resize_crop_geometry
from sana_wm.testing.data import raw_video_sample, write_raw_shard


def test_frame_indices_follow_target_fps():
    idx = sample_frame_indices(100, source_fps=30.0, num_frames=17, target_fps=16.0, mode="start")
    assert idx[0] == 0 and len(idx) == 17
    np.testing.assert_allclose(np.diff(idx).mean(), 30 / 16, atol=0.02)  # stride 1.875 source frames
    assert set(np.diff(idx)) <= {1, 2}
    assert sample_frame_indices(33, 16.0, 33, 16.0).tolist() == list(range(33))  # exact fit, no slack
    centre = sample_frame_indices(41, 16.0, 33, 16.0, mode="center")
    assert centre[0] == 4 and centre[-1] == 36


def test_random_window_is_seeded_and_in_range():
    draws = [sample_frame_indices(200, 16.0, 9, 16.0, "random", np.random.default_rng(s))[0] for s in range(20)]
    again = [sample_frame_indices(200, 16.0, 9, 16.0, "random", np.random.default_rng(s))[0] for s in range(20)]
    assert draws == again and len(set(draws)) > 5
    assert all(0 <= d <= 200 - 9 for d in draws)


def test_frame_sampling_errors():
    with pytest.raises(SampleError) as e:
        sample_frame_indices(20, 16.0, 17, 8.0)  # needs 33 source frames
    assert e.value.reason == SkipReason.TOO_FEW_FRAMES and "33 source frames" in str(e.value)
    with pytest.raises(SampleError) as e:
        sample_frame_indices(400, 10.0, 17, 16.0)
    assert e.value.reason == SkipReason.FPS_TOO_LOW
    # within the 2 % tolerance a 15.8 fps clip is read frame by frame
    assert sample_frame_indices(17, 15.8, 17, 16.0).tolist() == list(range(17))


def test_shape_checks():
    assert check_num_frames(961) == 961
    with pytest.raises(ValueError, match="8k\\+1.*Nearest valid values: 153 or 161"):
        check_num_frames(160)
    assert check_target_size(704, 1280) == (704, 1280)
    with pytest.raises(ValueError, match="multiple of 32"):
        check_target_size(720, 1280)
    assert check_target_size(64, 112, spatial_stride=8) == (64, 112)
    with pytest.raises(ValueError, match=r"`width` must be a positive multiple of 16 \(latent grid = pixels/16\); got 120"):
        check_target_size(64, 120, spatial_stride=16)


def test_camera_maps_follow_the_vae_spatial_stride(tmp_path):
    """With an 8x VAE the Plücker maps live on the (H/8, W/8) grid the latents have; the per-frame conditions (in
    latent units) are the 32x ones rescaled by 4."""
    frames = np.full((9, 64, 128, 3), 90, np.uint8)
    c2w = np.stack([_yaw_pitch(0.02 * i, 0.0, [0.0, 0.0, 0.05 * i]) for i in range(9)])
    K = pinhole_intrinsics(64, 128, 70.0)
    url = write_raw_shard(tmp_path / "s.tar", [raw_video_sample("s", frames=frames, c2w=c2w, intrinsics=K, as_mp4=False)])
    kw = dict(num_frames=9, height=64, width=128, target_fps=None, frame_sampling="start", strict=True)
    (s8,) = list(make_video_dataset(url, spatial_stride=8, **kw))
    (s32,) = list(make_video_dataset(url, **kw))
    assert tuple(s8.chunk_plucker.shape) == (48, 2, 8, 16)
    assert tuple(s32.chunk_plucker.shape) == (48, 2, 2, 4)
    torch.testing.assert_close(s8.camera_conditions[:, :16], s32.camera_conditions[:, :16])
    torch.testing.assert_close(s8.camera_conditions[:, 16:], 4 * s32.camera_conditions[:, 16:], rtol=1e-5, atol=1e-5)


def test_resize_center_crop_layouts_agree():
    frames = torch.randint(0, 256, (5, 72, 128, 3), dtype=torch.uint8)
    geom = resize_crop_geometry(72, 128, 64, 96)
    u8 = resize_center_crop(frames, geom, 64, 96, "uint8", chunk=2)
    fl = resize_center_crop(frames, geom, 64, 96, "float", chunk=3)
    assert u8.shape == (5, 64, 96, 3) and fl.shape == (3, 5, 64, 96)
    assert fl.min() >= -1 and fl.max() <= 1
    assert (fl.permute(1, 2, 3, 0) - (u8.float() / 127.5 - 1)).abs().max() <= 1 / 127.5 + 1e-6
    # identity resize is a pure crop
    geom_id = resize_crop_geometry(72, 128, 64, 128)
    assert torch.equal(resize_center_crop(frames, geom_id, 64, 128, "uint8"), frames[:, 4:68])


def _marker_scene(marker_center: np.ndarray, size: float = 0.12) -> Scene:
    """Grey room with a thin magenta square facing the cameras (a flat marker has no side faces whose
    visibility would bias the blob centroid)."""
    grey = Material("plain", "grey", "grey")
    marker = Material("plain", "magenta", "magenta", emissive=True)
    half = np.array([size / 2, size / 2, 0.002])
    box = Box((marker_center - half).tolist(), (marker_center + half).tolist(), marker, kind="marker")
    return Scene([-4.0, -1.5, -4.0], [4.0, 1.5, 4.0], grey, grey, grey, [box], [0.0, -1.2, 0.0])


def _magenta_centroid(img: np.ndarray) -> np.ndarray:
    """Sub-pixel (u, v) centroid of the magenta blob, weighted by how magenta each pixel is."""
    x = img.astype(np.float64)
    w = np.clip((x[..., 0] + x[..., 2]) / 2 - x[..., 1], 0, None)
    assert w.sum() > 0, "marker not visible"
    v, u = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])


def _yaw_pitch(yaw: float, pitch: float, t) -> np.ndarray:
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    T = np.eye(4)
    T[:3, :3] = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    T[:3, 3] = t
    return T


@pytest.mark.parametrize("target_hw", [(64, 96), (96, 64), (128, 224)])
def test_projected_point_lands_on_its_pixel_after_resize_and_crop(tmp_path, target_hw):
    """Render a marker at a known 3-D point, push the clip through the loader (resize + centre crop to a
    different aspect), and check the marker appears where the loader's intrinsics and poses project it."""
    src_h, src_w, num = 120, 200, 9
    X = np.array([0.15, 0.1, 2.5])  # world marker centre
    scene = _marker_scene(X)
    K = pinhole_intrinsics(src_h, src_w, 70.0)
    c2w = np.stack([_yaw_pitch(0.02 * i - 0.05, 0.01 * i - 0.03, [0.04 * i, 0.02 * i, 0.05 * i]) for i in range(num)])
    frames = np.stack([render(scene, c, K, src_h, src_w, supersample=4) for c in c2w])
    url = write_raw_shard(tmp_path / "m.tar", [raw_video_sample("m", frames=frames, c2w=c2w, intrinsics=K, as_mp4=False)])

    H, W = target_hw
    (s,) = list(make_video_dataset(url, num_frames=num, height=H, width=W, target_fps=None, frame_sampling="start", video_format="uint8", strict=True))
    X_rel = np.linalg.inv(c2w[0]) @ np.append(X, 1.0)  # the loader's world frame is the first camera
    errs = []
    for i in range(num):
        cam = np.linalg.inv(s.c2w[i].double().numpy()) @ X_rel
        fx, fy, cx, cy = s.intrinsics[i].double().tolist()
        projected = np.array([fx * cam[0] / cam[2] + cx, fy * cam[1] / cam[2] + cy])
        errs.append(np.abs(projected - _magenta_centroid(s.video[i].numpy())).max())
    # The pinhole model on integer pixel centres with cx·s scaling (docs/design/camera.md §3) is exact up to the
    # half-pixel convention of the resize, |s − 1| / 2 px, plus the blob-centroid error.
    assert max(errs) < 0.5, f"max reprojection error {max(errs):.3f} px"
