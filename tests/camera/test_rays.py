"""Tests for sana_wm.camera.rays: per-token UCPE ray frames.

Oracle: the raymat code of the diffusers 0.42.1 SANA-WM transformer
(`_process_camera_conditions_ucpe`, `_prepare_ucpe_ray_transforms`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from camera_testing import random_c2w

from sana_wm.camera import RayFrames, ray_frames, ray_matrices
from sana_wm.camera.rays import _focal_round_trip

port = pytest.importorskip("diffusers.models.transformers.transformer_sana_wm")




def make_conditions(B: int, T: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    """(B, T, 20) float64 conditions: random rigid poses, latent-unit intrinsics near fx = 31.25."""
    rng = np.random.default_rng(seed + 100)
    c2w = random_c2w(B * T, seed=seed)
    noise = rng.normal(size=(B * T, 4)) * np.array([1.0, 1.0, 0.7, 0.7])
    intr = np.array([31.25, 31.25 * 1.01, (W - 1) / 2, (H - 1) / 2]) + noise
    return torch.from_numpy(np.concatenate([c2w.reshape(B * T, 16), intr], axis=1)).view(B, T, 20)


def port_raymats(cc: torch.Tensor, H: int, W: int, patch=(1, 1, 1)) -> torch.Tensor:
    raymats, _ = port._process_camera_conditions_ucpe(cc, cc.shape[0], (cc.shape[1], H, W), patch)
    return raymats


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ray_matrices_match_port(dtype):
    B, T, H, W = 2, 3, 22, 40
    cc = make_conditions(B, T, H, W).to(dtype)
    P = ray_matrices(cc, H, W)
    assert P.shape == (B, T, H, W, 4, 4) and P.dtype == dtype
    torch.testing.assert_close(
        P, port_raymats(cc, H, W), rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12
    )


def test_ray_matrices_match_port_with_spatial_patch():
    B, T, H, W = 1, 2, 11, 20
    cc = make_conditions(B, T, 22, 40, seed=4).float()
    torch.testing.assert_close(
        ray_matrices(cc, H, W, patch_size=2), port_raymats(cc, H, W, (1, 2, 2)), rtol=0, atol=1e-5
    )


def test_ray_frames_match_port_and_token_order():
    B, T, H, W = 2, 2, 6, 10
    cc = make_conditions(B, T, H, W, seed=1).float()
    frames = ray_frames(cc, H, W)
    assert isinstance(frames, RayFrames)
    ref_P, ref_PT, ref_Pinv, _ = port._prepare_ucpe_ray_transforms(112, cc, (T, H, W), (1, 1, 1))
    for mine, ref in zip(frames, (ref_P, ref_PT, ref_Pinv), strict=True):
        assert mine.shape == (B, T * H * W, 4, 4)
        torch.testing.assert_close(mine, ref, rtol=0, atol=1e-5)
    # Token order: frame-major, then row, then column.
    P = ray_matrices(cc, H, W)
    f, v, u = 1, 4, 7
    torch.testing.assert_close(frames.P[:, f * H * W + v * W + u], P[:, f, v, u], rtol=0, atol=0)
    eye = torch.eye(4).expand_as(frames.P)
    torch.testing.assert_close(frames.P_inv @ frames.P, eye, rtol=0, atol=1e-5)
    torch.testing.assert_close(frames.P_T, frames.P.transpose(-1, -2), rtol=0, atol=0)


def test_ray_matrices_are_rigid_and_map_each_ray_to_plus_z():
    B, T, H, W = 1, 3, 22, 40
    cc = make_conditions(B, T, H, W, seed=2)  # float64 for tight geometric checks
    P = ray_matrices(cc, H, W)
    R, t = P[..., :3, :3], P[..., :3, 3]
    eye3 = torch.eye(3, dtype=cc.dtype).expand_as(R)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye3, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=cc.dtype), rtol=0, atol=1e-12
    )
    assert (P[..., 3, :] == torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=cc.dtype)).all()

    c2w = cc[..., :16].reshape(B, T, 4, 4)
    fx, fy, cx, cy = cc[..., 16:].unbind(-1)
    v, u = torch.meshgrid(torch.arange(H, dtype=cc.dtype), torch.arange(W, dtype=cc.dtype), indexing="ij")
    d_cam = torch.stack(
        [
            (u - cx[..., None, None]) / fx[..., None, None],
            (v - cy[..., None, None]) / fy[..., None, None],
            torch.ones_like(u).expand(B, T, H, W),
        ],
        dim=-1,
    )
    d_world = torch.einsum("btij,bthwj->bthwi", c2w[..., :3, :3], d_cam)
    d_world = d_world / d_world.norm(dim=-1, keepdim=True)
    # The ray's own frame has the ray as +Z …
    e_z = torch.tensor([0.0, 0.0, 1.0], dtype=cc.dtype).expand_as(d_world)
    torch.testing.assert_close(torch.einsum("bthwij,bthwj->bthwi", R, d_world), e_z, rtol=0, atol=1e-12)
    # … and the camera centre as its origin.
    centre = c2w[..., :3, 3][:, :, None, None, :].expand_as(t)
    torch.testing.assert_close(
        torch.einsum("bthwij,bthwj->bthwi", R, centre) + t, torch.zeros_like(t), rtol=0, atol=1e-12
    )
    # The ray's x axis is horizontal in the camera's image plane sense: orthogonal to camera down (c_y).
    c_y = c2w[..., :3, 1][:, :, None, None, :].expand_as(t)
    torch.testing.assert_close(
        (R[..., 0, :] * c_y).sum(-1), torch.zeros(B, T, H, W, dtype=cc.dtype), rtol=0, atol=1e-12
    )


def test_identity_pose_centre_ray_is_identity():
    H, W = 22, 40
    cc = torch.zeros(1, 1, 20)
    cc[0, 0, :16] = torch.eye(4).reshape(16)
    cc[0, 0, 16:] = torch.tensor([31.25, 31.25, 20.0, 11.0])  # principal point on node (u=20, v=11)
    P = ray_matrices(cc, H, W)
    centre = P[0, 0, 11, 20]
    torch.testing.assert_close(
        centre @ torch.tensor([0.0, 0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0]), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(centre, torch.eye(4), rtol=0, atol=1e-6)
    # A ray to the right of centre turns about the camera's vertical axis only (no roll, y stays down).
    right = P[0, 0, 11, 39]
    torch.testing.assert_close(right[1, :3], torch.tensor([0.0, 1.0, 0.0]), rtol=0, atol=1e-6)
    assert right[2, 0] > 0.4  # its +Z leans toward camera +X


def test_nan_rays_become_identity_and_do_not_leak():
    B, T, H, W = 1, 3, 4, 5
    cc = make_conditions(B, T, H, W, seed=3).float()
    cc[0, 1, 16] = float("nan")
    P = ray_matrices(cc, H, W)
    torch.testing.assert_close(P[0, 1], torch.eye(4).expand(H, W, 4, 4), rtol=0, atol=0)
    assert torch.isfinite(P).all()
    clean = ray_matrices(cc[:, [0, 2]], H, W)
    torch.testing.assert_close(P[:, [0, 2]], clean, rtol=0, atol=0)


def test_bf16_geometry_stays_bf16_and_reproduces_focal_rounding():
    # In bf16 the FOV round trip moves fx = 31.25 to 31.125 (docs/design/camera.md §6).
    f = _focal_round_trip(torch.tensor([31.25], dtype=torch.bfloat16), 40, 40)
    assert f.dtype == torch.bfloat16 and f.item() == 31.125
    assert abs(_focal_round_trip(torch.tensor([31.25]), 40, 40).item() - 31.25) < 1e-4
    B, T, H, W = 1, 2, 22, 40
    cc = make_conditions(B, T, H, W, seed=6).float()
    P16 = ray_matrices(cc.bfloat16(), H, W)
    assert P16.dtype == torch.bfloat16
    torch.testing.assert_close(P16.float(), ray_matrices(cc, H, W), rtol=0, atol=0.1)


def test_autocast_does_not_change_float32_geometry():
    B, T, H, W = 1, 2, 6, 8
    cc = make_conditions(B, T, H, W, seed=7).float()
    ref = ray_frames(cc, H, W)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ray_frames(cc, H, W)
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ray_matrices_input_errors():
    cc = make_conditions(1, 2, 4, 4).float()
    with pytest.raises(ValueError, match=r"\(B, T, 20\).*got \(2, 20\)"):
        ray_matrices(cc[0], 4, 4)
    with pytest.raises(ValueError, match=r"\(B, T, 20\)"):
        ray_matrices(cc[..., :19], 4, 4)
    with pytest.raises(ValueError, match="floating"):
        ray_matrices(cc.long(), 4, 4)
    with pytest.raises(ValueError, match="`width` must be a positive integer"):
        ray_matrices(cc, 4, 0)
    with pytest.raises(ValueError, match="`patch_size`"):
        ray_matrices(cc, 4, 4, patch_size=(1, 2, 2))


@pytest.mark.gpu
def test_bf16_ray_frames_match_port_on_cuda():
    """The pipeline passes bf16 conditions; on CUDA the port builds the raymats in bf16 too.

    Same ops in the same order, so the result is bit-identical (seen on an H100, torch 2.11)."""
    B, T, H, W = 1, 4, 22, 40
    cc = make_conditions(B, T, H, W, seed=8).to("cuda", torch.bfloat16)
    ref_P, ref_PT, ref_Pinv, _ = port._prepare_ucpe_ray_transforms(112, cc, (T, H, W), (1, 1, 1))
    got = ray_frames(cc, H, W)
    assert got.P.dtype == torch.bfloat16 and got.P.device.type == "cuda"
    for mine, ref in zip(got, (ref_P, ref_PT, ref_Pinv), strict=True):
        torch.testing.assert_close(mine, ref, rtol=0, atol=0)
