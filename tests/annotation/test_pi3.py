"""Pi3 / Pi3X: checkpoint layout and strict loading, sizes, geometry post-processing, chunked prediction."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from annotation.geometry import Sim3, apply_sim3
from annotation.models.pi3 import (
    MULTIMODAL_PREFIXES,
    PRESETS,
    Pi3,
    Priors,
    build_pi3,
    intrinsics_from_points,
    load_pi3,
    predict,
    rescale_intrinsics,
    svd_orthogonalize,
    working_size,
)


def _layout(model: torch.nn.Module) -> tuple[int, str]:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return len(shapes), hashlib.sha256(repr(sorted(shapes.items())).encode()).hexdigest()


# Parameter counts and state-dict layouts (sorted (name, shape) pairs, hashed) of the released models.
# The same numbers come out of the upstream yyfz/Pi3 modules built with default arguments, so a
# checkpoint saved by them loads strictly here.
REAL = {
    "pi3": (958_696_732, 1210, "57e8459a816edbb647602c1b99c3f73891cd7f37471dd2fddcaf2fe9a39ece47"),
    "pi3x": (992_465_329, 1437, "7bddecdcfcdca5f1234e73e9165b2cd46fc172e1d40b73eaaa9edff5716154f2"),
    "pi3x_multimodal": (1_360_032_433, 1873, "e0afd80dc9be082c585ad2bf37038652c5069bd1adbb82b2122093208227091c"),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_presets_have_the_released_size_and_key_layout(name):
    with torch.device("meta"):
        model = Pi3(PRESETS[name])
    params, n_keys, digest = REAL[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert _layout(model) == (n_keys, digest)


def test_released_layout_has_the_documented_module_names():
    with torch.device("meta"):
        keys = set(Pi3(PRESETS["pi3x_multimodal"]).state_dict())
    for k in ("encoder.cls_token", "encoder.pos_embed", "encoder.register_tokens", "encoder.patch_embed.proj.weight",
              "encoder.blocks.23.ls2.gamma", "encoder.norm.weight", "decoder.35.attn.q_norm.weight", "register_token",
              "point_decoder.blocks.4.mlp.fc2.bias", "point_head.upsample_blocks.2.2.layers.5.weight",
              "point_head.output_block.1.2.weight", "conf_head.output_block.0.0.weight",
              "camera_head.res_conv.1.res_conv3.weight", "camera_head.more_mlps.2.weight", "camera_head.fc_rot.bias",
              "metric_token", "metric_decoder.blocks.4.cross_attn.v_proj.weight", "metric_decoder.projects_y.weight",
              "metric_head.weight", "depth_encoder.patch_embed.proj.weight", "depth_emb", "ray_embed.proj.weight",
              "pose_inject_blk.4.attn.k_norm.bias", "image_mean", "image_std"):
        assert k in keys, k
    assert "encoder.mask_token" not in keys


def _save(model: Pi3, folder, config: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config if config is not None else {}))
    return folder


def _random(model: Pi3) -> Pi3:
    with torch.no_grad():  # zero-initialised tensors (ray embedding) must round-trip too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def test_tiny_pi3x_multimodal_round_trips_strictly_with_and_without_the_prior_branch(tmp_path):
    model = _random(build_pi3("tiny", multimodal=True))
    folder = _save(model, tmp_path / "pi3x")
    x = torch.rand(1, 2, 3, 28, 42)
    K = torch.tensor([[30.0, 0, 21], [0, 30, 14], [0, 0, 1]]).expand(1, 2, 3, 3)
    poses = torch.eye(4).repeat(1, 2, 1, 1)
    poses[0, 1, 0, 3] = 0.5
    priors = Priors(depths=torch.rand(1, 2, 28, 42) + 1, intrinsics=K, poses=poses)

    full = load_pi3(folder, "pi3x", multimodal=True, preset_config=PRESETS["tiny"])
    plain = load_pi3(folder / "model.safetensors", "pi3x", multimodal=False, preset_config=PRESETS["tiny"])
    assert not any(k.startswith(MULTIMODAL_PREFIXES) for k in plain.state_dict())
    with torch.no_grad():
        ref, ref_plain = model(x, priors), model(x)
        got, got_plain = full(x, priors), plain(x)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)
        torch.testing.assert_close(got_plain[k], ref_plain[k], rtol=0, atol=0)
    # the priors reach the output (the branch is not dead code)
    assert (ref["camera_poses"] - ref_plain["camera_poses"]).abs().max() > 1e-4


def test_tiny_pi3_round_trips_strictly(tmp_path):
    model = _random(build_pi3("tiny", variant="pi3"))
    folder = _save(model, tmp_path / "pi3", {"pos_type": "rope100", "decoder_size": "large"})
    loaded = load_pi3(folder, "pi3", preset_config=PRESETS["tiny"])
    x = torch.rand(1, 2, 3, 28, 28)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert set(a) == {"points", "local_points", "conf", "camera_poses"}
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_loading_errors_name_the_path_and_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: expected a folder holding model.safetensors \(\+ config.json\)"):
        load_pi3(tmp_path / "nowhere", "pi3x")
    folder = _save(build_pi3("tiny"), tmp_path / "x")
    with pytest.raises(ValueError, match=r"holds pi3x weights .* variant 'pi3'"):
        load_pi3(folder, "pi3", preset_config=PRESETS["tiny"])
    with pytest.raises(ValueError, match="no multimodal keys"):
        load_pi3(folder, "pi3x", multimodal=True, preset_config=PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"missing: decoder\.0\.attn\.proj\.bias"):
        state = build_pi3("tiny").state_dict()
        del state["decoder.0.attn.proj.bias"]
        save_file(state, str(tmp_path / "broken.safetensors"))
        load_pi3(tmp_path / "broken.safetensors", "pi3x", preset_config=PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"missing: camera_decoder.blocks.1.* \(1100 in all\); wrong shape: camera_decoder.blocks.0.attn.proj.bias \(32,\) ≠ \(1024,\)"):
        load_pi3(folder, "pi3x")  # real sizes asked for, tiny file given
    _save(build_pi3("tiny", variant="pi3"), tmp_path / "small", {"decoder_size": "small"})
    with pytest.raises(ValueError, match=r"decoder_size = 'small'"):
        load_pi3(tmp_path / "small", "pi3", preset_config=PRESETS["tiny"])


def test_priors_need_the_branch():
    with pytest.raises(ValueError, match="without the multimodal branch"):
        build_pi3("tiny")(torch.rand(1, 1, 3, 28, 28), Priors(depths=torch.ones(1, 1, 28, 28)))


def test_tiny_model_is_permutation_equivariant_over_frames():
    torch.manual_seed(1)
    model = _random(build_pi3("tiny"))
    x = torch.rand(1, 5, 3, 28, 42)
    perm = torch.tensor([3, 0, 4, 2, 1])
    with torch.no_grad():
        a, b = model(x), model(x[:, perm])
    for k in ("camera_poses", "local_points", "points", "conf", "rays"):
        torch.testing.assert_close(b[k], a[k][:, perm], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["metric"], a["metric"], rtol=1e-5, atol=0)


def test_working_size_follows_the_reference_rule():
    assert working_size(704, 1280) == (364, 686)  # 26 × 49 patches
    assert working_size(1080, 1920) == (378, 672)
    assert working_size(518, 518) == (504, 504)
    for h, w in ((704, 1280), (1080, 1920), (480, 640), (1280, 720)):
        hh, ww = working_size(h, w)
        assert hh % 14 == 0 and ww % 14 == 0 and hh * ww <= 255_000


def _points_from_K(K: torch.Tensor, H: int, W: int, seed: int = 0) -> torch.Tensor:
    """Camera-frame points seen by K at every integer pixel, at random depths."""
    g = torch.Generator().manual_seed(seed)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    z = torch.rand(H, W, generator=g, dtype=torch.float64) * 9 + 1
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    return torch.stack([x, y, z], -1)


def test_intrinsics_from_points_recover_the_camera_exactly():
    H, W = 26, 49
    centred = torch.tensor([[41.3, 0, (W - 1) / 2], [0, 38.9, (H - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    K = intrinsics_from_points(_points_from_K(centred, H, W), "centre")
    torch.testing.assert_close(K, centred, rtol=1e-5, atol=1e-5)
    off = torch.tensor([[55.0, 0, 20.7], [0, 57.5, 14.2], [0, 0, 1]], dtype=torch.float64)
    pts = torch.stack([_points_from_K(off, H, W, s) for s in range(3)])  # batched (3, H, W, 3)
    K = intrinsics_from_points(pts.float(), "fit")
    torch.testing.assert_close(K, off.expand(3, 3, 3), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="'centre' or 'fit'"):
        intrinsics_from_points(pts, "middle")


def test_rescaled_intrinsics_project_points_to_the_same_place_in_the_resized_image():
    K = np.array([[300.0, 0, 342.5], [0, 310.0, 181.5], [0, 0, 1]])
    big = rescale_intrinsics(K, (364, 686), (704, 1280))
    X = np.array([0.3, -0.2, 2.0])
    u_small = K[:2, :2] @ (X[:2] / X[2]) + K[:2, 2]
    u_big = big[:2, :2] @ (X[:2] / X[2]) + big[:2, 2]
    # pixel centres scale with the image: (u + ½) / size is preserved
    np.testing.assert_allclose((u_big + 0.5) / [1280, 704], (u_small + 0.5) / [686, 364], rtol=0, atol=1e-12)


def test_svd_orthogonalisation_gives_proper_rotations():
    torch.manual_seed(0)
    m = torch.randn(256, 9, dtype=torch.float64)
    m[:128] = (-torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(128, 3, 3, dtype=torch.float64)).reshape(128, 9)
    R = svd_orthogonalize(m)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, torch.eye(3, dtype=torch.float64).expand(256, 3, 3),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.det(R), torch.ones(256, dtype=torch.float64), rtol=0, atol=1e-12)
    Q = torch.linalg.qr(torch.randn(8, 3, 3, dtype=torch.float64)).Q
    Q = Q * torch.det(Q)[:, None, None]  # proper rotations come back unchanged
    torch.testing.assert_close(svd_orthogonalize(Q.reshape(8, 9) * 3.0), Q, rtol=0, atol=1e-12)


class _GaugeModel(torch.nn.Module):
    """Stands in for Pi3: returns exact poses/points of the frames it is given (frame i is filled with
    value i/255), each forward pass in its own random Sim(3) gauge, as a real model's chunks are."""

    def __init__(self, c2w: np.ndarray, K: np.ndarray, hw: tuple[int, int]):
        super().__init__()
        self.cfg = PRESETS["tiny"]
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.c2w, self.K, self.hw = c2w, K, hw
        self.rng = np.random.default_rng(0)
        self.calls = 0

    def forward(self, images, priors=None):
        idx = (images[0, :, 0, 0, 0] * 255).round().long().numpy()
        H, W = self.hw
        v, u = np.mgrid[:H, :W]
        z = 2.0 + np.sin(u / 7.0) + np.cos(v / 5.0)
        local = np.stack([(u - self.K[0, 2]) / self.K[0, 0] * z, (v - self.K[1, 2]) / self.K[1, 1] * z, z], -1)
        q = np.linalg.qr(self.rng.normal(size=(3, 3)))[0]
        gauge = Sim3(float(self.rng.uniform(0.5, 2.0)), q * np.linalg.det(q), self.rng.normal(size=3))
        poses = apply_sim3(gauge, self.c2w[idx])
        local = local[None] * gauge.scale
        points = np.einsum("nij,hwj->nhwi", poses[:, :3, :3], local[0]) + poses[:, None, None, :3, 3]
        self.calls += 1
        return {
            "camera_poses": torch.from_numpy(poses)[None].float(),
            "local_points": torch.from_numpy(np.repeat(local, len(idx), 0))[None].float(),
            "points": torch.from_numpy(points)[None].float(),
            "conf": torch.full((1, len(idx), H, W, 1), 3.0),
        }


def test_predict_stitches_overlapping_chunks_into_one_trajectory():
    rng = np.random.default_rng(3)
    N, H, W = 11, 28, 42
    c2w = np.tile(np.eye(4), (N, 1, 1))
    for i in range(N):
        c2w[i, :3, :3] = np.linalg.qr(np.eye(3) + 0.05 * i * rng.normal(size=(3, 3)))[0]
        c2w[i, :3, :3] *= np.linalg.det(c2w[i, :3, :3])
        c2w[i, :3, 3] = [0.2 * i, 0.3 * np.sin(i), -0.1 * i + 0.05 * i**2]
    K = np.array([[30.0, 0, 20.5], [0, 30.0, 13.5], [0, 0, 1]])
    frames = np.repeat(np.arange(N, dtype=np.uint8)[:, None, None, None], H * W * 3).reshape(N, H, W, 3)
    model = _GaugeModel(c2w, K, (H, W))
    pred = predict(model, frames, frame_budget=5, overlap=2, pixel_limit=H * W)
    assert pred.chunks == [(0, 5), (3, 8), (6, 11)] and model.calls == 3
    assert pred.working_hw == (H, W)
    # one Sim(3) takes the stitched trajectory to the truth: the chunk gauges were all removed
    from annotation.geometry import trajectory_errors

    err = trajectory_errors(pred.c2w, c2w)
    assert err["ate_max"] < 1e-4 and err["rot_max_deg"] < 1e-3
    np.testing.assert_allclose(pred.K, np.broadcast_to(K, (N, 3, 3)), atol=1e-3)
    np.testing.assert_allclose(pred.confidence, 1 / (1 + np.exp(-3.0)), rtol=1e-6)


def test_predict_runs_the_tiny_model_end_to_end():
    model = build_pi3("tiny").eval()
    frames = np.random.default_rng(0).integers(0, 255, (7, 40, 60, 3), dtype=np.uint8)
    pred = predict(model, frames, frame_budget=4, overlap=2, pixel_limit=28 * 42)
    assert pred.working_hw == (28, 42) and pred.chunks == [(0, 4), (2, 6), (4, 7)]
    assert pred.c2w.shape == (7, 4, 4) and pred.K.shape == (7, 3, 3) and pred.metric is not None
    np.testing.assert_allclose(np.linalg.det(pred.c2w[:, :3, :3]), 1.0, atol=1e-5)
    assert np.isfinite(pred.K).all() and (pred.confidence > 0).all() and (pred.confidence < 1).all()
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) uint8"):
        predict(model, frames.astype(np.float32))


@pytest.mark.gpu
def test_predict_on_cuda_runs_the_trunk_in_bf16_and_the_heads_in_fp32():
    model = build_pi3("tiny").cuda().eval()
    frames = np.random.default_rng(0).integers(0, 255, (6, 40, 60, 3), dtype=np.uint8)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(torch.rand(1, 3, 3, 28, 42, device="cuda"))
    assert out["camera_poses"].dtype == torch.float32 and out["local_points"].dtype == torch.float32
    pred = predict(model, frames, frame_budget=4, overlap=2, pixel_limit=28 * 42)
    np.testing.assert_allclose(np.linalg.det(pred.c2w[:, :3, :3]), 1.0, atol=1e-5)


def test_predict_feeds_known_intrinsics_to_the_prior_branch_at_the_working_resolution():
    model = _random(build_pi3("tiny", multimodal=True))
    seen = []

    class Recorder(torch.nn.Module):
        cfg = model.cfg

        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, images, priors=None):
            seen.append(priors)
            return self.inner(images, priors)

    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 60, 3), dtype=np.uint8)
    K = np.tile(np.array([[50.0, 0, 29.5], [0, 50.0, 19.5], [0, 0, 1]]), (3, 1, 1))  # centred, integer-index
    with_prior = predict(Recorder(), frames, frame_budget=4, overlap=2, pixel_limit=28 * 42, known_K=K)
    # 40×60 → 28×42 (×0.7): f 35; the centred principal point lands on the working image's centre in the
    # prior's +½ convention: (21, 14)
    expected = torch.tensor([[35.0, 0, 21.0], [0, 35.0, 14.0], [0, 0, 1]]).expand(1, 3, 3, 3)
    torch.testing.assert_close(seen[0].intrinsics.cpu(), expected, rtol=0, atol=1e-5)
    without = predict(model, frames, frame_budget=4, overlap=2, pixel_limit=28 * 42)
    assert np.abs(with_prior.c2w - without.c2w).max() > 1e-4
    with pytest.raises(ValueError, match="built without that branch"):
        predict(build_pi3("tiny"), frames, pixel_limit=28 * 42, known_K=K)
