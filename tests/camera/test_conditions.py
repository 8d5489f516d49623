"""Tests for sana_wm.camera.intrinsics and sana_wm.camera.conditions (DiT camera inputs).

The diffusers 0.42.1 SANA-WM port (`pipelines/sana_wm/cam_utils.py`) is the oracle for
`prepare_camera`, the crop geometry and the frame-count snapping.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from camera_testing import random_c2w
from PIL import Image

from sana_wm.camera import (
    CropGeometry,
    as_fxfycxcy,
    camera_conditions,
    camera_tensors,
    chunk_plucker,
    crop_intrinsics,
    intrinsics_matrix,
    num_latent_frames,
    pinhole_intrinsics,
    plucker_map,
    prepare_camera,
    resize_crop_geometry,
    snap_num_frames,
    to_latent_units,
)

cam_utils = pytest.importorskip("diffusers.pipelines.sana_wm.cam_utils")




def realistic_intrinsics(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(n, 4) per-frame pinhole intrinsics around a 60° horizontal FOV, principal point near the centre."""
    rng = np.random.default_rng(seed)
    f = 0.5 * w / np.tan(np.radians(30.0))
    base = np.array([f, f * 1.02, (w - 1) / 2, (h - 1) / 2])
    return base + rng.normal(size=(n, 4)) * np.array([0.02 * f, 0.02 * f, 1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# intrinsics
# ---------------------------------------------------------------------------------------------


def test_as_fxfycxcy_shapes_broadcast_and_truncation():
    vec = np.array([100.0, 110.0, 50.0, 40.0])
    K = np.array([[100.0, 0.0, 50.0], [0.0, 110.0, 40.0], [0.0, 0.0, 1.0]])
    for inp in (vec, K, vec[None], K[None], vec.tolist(), torch.tensor(K)):
        out = as_fxfycxcy(inp, 5)
        assert out.shape == (5, 4) and out.dtype == np.float64
        np.testing.assert_array_equal(out, np.tile(vec, (5, 1)))
    per_frame = vec + np.arange(9)[:, None]
    np.testing.assert_array_equal(as_fxfycxcy(per_frame, 6), per_frame[:6])
    Ks = np.tile(K, (9, 1, 1))
    Ks[:, 0, 0] += np.arange(9)
    np.testing.assert_array_equal(as_fxfycxcy(Ks, 9)[:, 0], 100.0 + np.arange(9))


def test_as_fxfycxcy_errors():
    with pytest.raises(ValueError, match=r"`intr` has shape \(3, 4\): 3 per-frame entries for 5 frames"):
        as_fxfycxcy(np.ones((3, 4)), 5, name="intr")
    with pytest.raises(ValueError, match=r"must have shape \(4,\).*got \(2, 3\)"):
        as_fxfycxcy(np.ones((2, 3)), 2)
    bad = np.tile([100.0, 100.0, 50.0, 40.0], (4, 1))
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"non-finite values at frame 2"):
        as_fxfycxcy(bad, 4)
    bad = np.tile([100.0, 100.0, 50.0, 40.0], (4, 1))
    bad[1, 1] = 0.0
    with pytest.raises(ValueError, match=r"frame 1 has fx = 100.0, fy = 0.0.*must be > 0"):
        as_fxfycxcy(bad, 4)
    K = np.array([[100.0, 0.0, 50.0], [0.0, 110.0, 40.0], [0.0, 0.0, 2.0]])
    with pytest.raises(ValueError, match=r"not a pinhole K matrix"):
        as_fxfycxcy(K, 1)
    with pytest.raises(ValueError, match=r"`num_frames` must be a positive integer"):
        as_fxfycxcy(K, 0)


@pytest.mark.parametrize(
    "src_hw,target_hw",
    [
        ((705, 1281), (704, 1280)),
        ((480, 640), (64, 96)),
        ((100, 60), (64, 96)),
        ((64, 96), (64, 96)),
        ((37, 301), (32, 64)),
    ],
)
def test_resize_crop_geometry_matches_port(src_hw, target_hw):
    geom = resize_crop_geometry(*src_hw, *target_hw)
    assert isinstance(geom, CropGeometry)
    img = Image.new("RGB", (src_hw[1], src_hw[0]))
    cropped, src_size, resized_size, offset = cam_utils.resize_and_center_crop(img, *target_hw)
    assert cropped.size == (target_hw[1], target_hw[0])
    assert (geom.resized_w, geom.resized_h) == resized_size
    assert (geom.left, geom.top) == offset
    assert geom.scale_x == resized_size[0] / src_hw[1] and geom.scale_y == resized_size[1] / src_hw[0]

    intr = realistic_intrinsics(3, *src_hw)
    ref = cam_utils.transform_intrinsics_for_crop(intr, src_size, resized_size, offset)
    np.testing.assert_allclose(crop_intrinsics(intr, geom), ref, rtol=0, atol=1e-12)
    out_t = crop_intrinsics(torch.from_numpy(intr), geom)
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), ref, rtol=0, atol=1e-12)


def test_resize_crop_geometry_known_values_and_frozen():
    g = resize_crop_geometry(705, 1281, 704, 1280)
    assert g == CropGeometry(
        resized_h=704, resized_w=1280, top=0, left=0, scale_x=1280 / 1281, scale_y=704 / 705
    )
    g = resize_crop_geometry(1080, 1920, 704, 1280)  # exact 2/3 downscale, 16:9 → 720 high, crop 8 rows
    assert (g.resized_h, g.resized_w, g.top, g.left) == (720, 1280, 8, 0)
    with pytest.raises(AttributeError):
        g.top = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="`src_w` must be a positive integer"):
        resize_crop_geometry(10, 0, 4, 4)


def test_to_latent_units_divides_by_32_at_720p():
    intr = np.array([[900.0, 880.0, 640.0, 352.0]])
    out = to_latent_units(intr, (704, 1280), (22, 40))
    np.testing.assert_allclose(out, intr / 32.0, rtol=1e-15)
    out = to_latent_units(intr, (704, 1280), (11, 40))  # axes scale independently
    np.testing.assert_allclose(out, [[900 / 32, 880 / 64, 640 / 32, 352 / 64]], rtol=1e-15)
    with pytest.raises(ValueError, match="`latent_hw` must be a pair of positive integers"):
        to_latent_units(intr, (704, 1280), (22,))


# ---------------------------------------------------------------------------------------------
# frame counts
# ---------------------------------------------------------------------------------------------


def test_num_latent_frames():
    assert [num_latent_frames(n) for n in (1, 9, 161, 321, 961)] == [1, 2, 21, 41, 121]
    with pytest.raises(ValueError, match=r"8k\+1.*got 160.*153 or 161"):
        num_latent_frames(160)
    with pytest.raises(ValueError, match="positive integer"):
        num_latent_frames(0)


def test_snap_num_frames_matches_pipeline_rule():
    # The port's pipeline clips to the trajectory length first, then snaps with that upper bound.
    for n in range(1, 80):
        assert snap_num_frames(n) == cam_utils.snap_num_frames(n, 8)
        for bound in (1, 8, 17, 20, 33, 50):
            assert snap_num_frames(n, max_frames=bound) == cam_utils.snap_num_frames(
                min(n, bound), 8, upper_bound=bound
            ), (n, bound)
    assert snap_num_frames(5) == 9  # tie between 1 and 9 goes up
    assert snap_num_frames(5, max_frames=8) == 1  # …unless that exceeds the bound
    assert snap_num_frames(200, max_frames=161) == 161
    with pytest.raises(ValueError, match="`n` must be a positive integer"):
        snap_num_frames(0)


# ---------------------------------------------------------------------------------------------
# camera conditions and Plücker maps
# ---------------------------------------------------------------------------------------------


def test_camera_conditions_picks_pixel_frame_8i():
    F, t_lat = 25, 4
    rel = torch.from_numpy(random_c2w(F))
    intr = torch.arange(F * 4, dtype=torch.float64).view(F, 4) + 1
    cond = camera_conditions(rel, intr, t_lat)
    assert cond.shape == (t_lat, 20) and cond.dtype == torch.float64
    for i in range(t_lat):
        torch.testing.assert_close(cond[i, :16], rel[8 * i].reshape(16), rtol=0, atol=0)
        torch.testing.assert_close(cond[i, 16:], intr[8 * i], rtol=0, atol=0)
    with pytest.raises(ValueError, match="5 latent frames need at least 33 pixel frames"):
        camera_conditions(rel, intr, 5)
    with pytest.raises(ValueError, match=r"`intr_latent` must have shape \(F, 4\) = \(25, 4\)"):
        camera_conditions(rel, intr[:3], 2)


def test_plucker_map_geometry():
    # Identity pose, principal point on a grid node: the centre ray is +Z with zero moment.
    c2w = torch.eye(4, dtype=torch.float64)
    intr = torch.tensor([4.0, 5.0, 3.0, 2.0], dtype=torch.float64)
    pm = plucker_map(c2w, intr, 5, 7)
    assert pm.shape == (6, 5, 7)
    torch.testing.assert_close(pm[:, 2, 3], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    # Pixel (u=6, v=2) is 3 px right of centre: direction ∝ (3/4, 0, 1).
    torch.testing.assert_close(pm[:3, 2, 6], torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64))

    P = torch.from_numpy(random_c2w(3, seed=5))
    intr = torch.tensor([[4.0, 5.0, 3.2, 2.1]], dtype=torch.float64).expand(3, 4)
    pm = plucker_map(P, intr, 4, 6)  # (3, 6, 4, 6)
    d, m = pm[:, :3], pm[:, 3:]
    torch.testing.assert_close(d.norm(dim=1), torch.ones(3, 4, 6, dtype=torch.float64))
    t = P[:, :3, 3, None, None]
    torch.testing.assert_close(m, torch.linalg.cross(t.expand_as(d), d, dim=1))
    # Direction of pixel (u, v) is R·K⁻¹(u, v, 1) normalised.
    u, v = 5, 3
    ray = P[1, :3, :3] @ torch.tensor([(u - 3.2) / 4.0, (v - 2.1) / 5.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(d[1, :, v, u], ray / ray.norm())


def test_chunk_plucker_frame_selection_and_channel_order():
    F, t_lat, h, w = 17, 3, 2, 3
    rel = torch.from_numpy(random_c2w(F, seed=3))
    intr = torch.from_numpy(realistic_intrinsics(F, h, w, seed=3))
    cp = chunk_plucker(rel, intr, t_lat, h, w)
    assert cp.shape == (48, t_lat, h, w)
    starts = [0, 1, 9]  # max(0, 8i − 7)
    for i, s in enumerate(starts):
        for j in range(8):
            expected = plucker_map(rel[s + j], intr[s + j], h, w)
            torch.testing.assert_close(cp[6 * j : 6 * j + 6, i], expected, rtol=0, atol=0)
    # F = 1: the single pose is repeated over the whole chunk.
    cp1 = chunk_plucker(rel[:1], intr[:1], 1, h, w)
    for j in range(8):
        torch.testing.assert_close(cp1[6 * j : 6 * j + 6, 0], plucker_map(rel[0], intr[0], h, w))


# ---------------------------------------------------------------------------------------------
# prepare_camera against the diffusers port
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_frames,pixel_hw", [(1, (64, 96)), (17, (64, 96)), (25, (64, 96)), (25, (128, 192))]
)
def test_prepare_camera_matches_port(num_frames, pixel_hw):
    latent_hw = (pixel_hw[0] // 32, pixel_hw[1] // 32)
    c2w = random_c2w(num_frames, seed=num_frames).astype(np.float32)
    intr = realistic_intrinsics(num_frames, *pixel_hw, seed=num_frames).astype(np.float32)
    ref = cam_utils.prepare_camera(c2w, intr, target_size=pixel_hw, vae_stride=(8, 32, 32))
    cond, plk = prepare_camera(c2w, intr, pixel_hw, latent_hw)
    t_lat = (num_frames - 1) // 8 + 1
    assert cond.shape == (t_lat, 20) and plk.shape == (48, t_lat, *latent_hw)
    assert cond.dtype == torch.float32 and plk.dtype == torch.float32
    # The port works in float32 throughout; we relativise in float64, so only rounding differs.
    torch.testing.assert_close(cond, ref["raymap"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plk, ref["chunk_plucker"], rtol=1e-5, atol=1e-5)


def test_prepare_camera_is_invariant_to_the_world_frame():
    c2w = random_c2w(17, seed=7)
    intr = realistic_intrinsics(1, 64, 96)[0]
    world = random_c2w(1, seed=8)[0]
    a = prepare_camera(c2w, intr, (64, 96), (2, 3))
    b = prepare_camera(world @ c2w, intr, (64, 96), (2, 3))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[0][0, :16], torch.eye(4).reshape(16), rtol=0, atol=0)  # frame 0 = I


def test_prepare_camera_num_frames_and_errors():
    c2w = random_c2w(30, seed=9)
    intr = realistic_intrinsics(30, 64, 96)
    a = prepare_camera(c2w, intr, (64, 96), (2, 3), num_frames=17)
    b = prepare_camera(c2w[:17], intr[:17], (64, 96), (2, 3))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    K = np.array([[80.0, 0, 47.5], [0, 80.0, 31.5], [0, 0, 1]])
    from_k = prepare_camera(c2w[:9], K, (64, 96), (2, 3))
    from_vec = prepare_camera(c2w[:9], K[[0, 1, 0, 1], [0, 1, 2, 2]], (64, 96), (2, 3))
    for x, y in zip(from_k, from_vec, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"8k\+1.*got 30"):
        prepare_camera(c2w, intr, (64, 96), (2, 3))
    with pytest.raises(ValueError, match="`num_frames` = 33 exceeds the 30 poses"):
        prepare_camera(c2w, intr, (64, 96), (2, 3), num_frames=33)
    bad = c2w[:9].copy()
    bad[6, :3, :3] *= 2.0
    with pytest.raises(ValueError, match="`c2w` frame 6 has a non-rigid rotation"):
        prepare_camera(bad, intr, (64, 96), (2, 3), num_frames=9)
    bad_intr = intr.copy()
    bad_intr[4, 0] = -1.0
    with pytest.raises(ValueError, match="`intrinsics_px` frame 4 has fx = -1.0"):
        prepare_camera(c2w, bad_intr, (64, 96), (2, 3), num_frames=9)


def test_intrinsics_matrix_and_pinhole_intrinsics():
    v = np.array([[80.0, 81.0, 47.5, 31.5], [70.0, 72.0, 40.0, 30.0]])
    K = intrinsics_matrix(v)
    assert K.shape == (2, 3, 3) and K.dtype == np.float64
    np.testing.assert_array_equal(K[1], [[70.0, 0.0, 40.0], [0.0, 72.0, 30.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(as_fxfycxcy(K, 2), v)  # the inverse of what as_fxfycxcy reads
    assert intrinsics_matrix(v[0].astype(np.float32)).dtype == np.float32
    assert intrinsics_matrix(torch.tensor([1, 2, 3, 4])).dtype == np.float64
    with pytest.raises(ValueError, match=r"must have shape \(\.\.\., 4\) \[fx, fy, cx, cy\]; got \(3, 3\)"):
        intrinsics_matrix(np.eye(3))
    # 90° horizontal FOV over 224 px: f = 112; the principal point is the centre of the integer pixel grid
    np.testing.assert_allclose(
        pinhole_intrinsics(128, 224, 90.0), [[112.0, 0.0, 111.5], [0.0, 112.0, 63.5], [0.0, 0.0, 1.0]], rtol=1e-15
    )


def test_camera_tensors_are_prepare_camera_without_the_checks():
    c2w = random_c2w(17, seed=11).astype(np.float32)
    intr = realistic_intrinsics(17, 64, 96, seed=2)
    for x, y in zip(camera_tensors(c2w, intr, (64, 96), (2, 3)), prepare_camera(c2w, intr, (64, 96), (2, 3)),
                    strict=True):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match=r"8k\+1"):
        camera_tensors(c2w[:12], intr[:12], (64, 96), (2, 3))


def test_fov_deg_inverts_pinhole_intrinsics():
    from sana_wm.camera import fov_deg, pinhole_intrinsics

    K = pinhole_intrinsics(128, 224, 70.0)  # f = 112 / tan(35°)
    hfov, vfov = fov_deg(K, 128, 224)
    assert hfov == pytest.approx(70.0, abs=1e-12)
    assert vfov == pytest.approx(math.degrees(2 * math.atan(64 * math.tan(math.radians(35.0)) / 112)), abs=1e-12)
    per_frame = fov_deg(np.stack([K, 2 * K]), 128, 224)[0]  # doubled focal length (K[2, 2] unused)
    assert per_frame[1] == pytest.approx(math.degrees(2 * math.atan(math.tan(math.radians(35.0)) / 2)), abs=1e-12)
