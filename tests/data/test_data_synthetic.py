"""The bundled synthetic world: pinhole-exact renderer, trajectories, captions, dataset build and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

import data.synthetic as syn
import data.synthetic.raycast  # noqa: F401  (syn.raycast: the renderer's module, whose culling switch is patched)
from data.synthetic import (
    Box,
    Material,
    Scene,
    build_default_dataset,
    dsl_trajectory,
    make_clip,
    pinhole_intrinsics,
    plan_clip,
    random_scene,
    render,
    render_depth,
    smooth_trajectory,
)
from data.webdataset import make_video_dataset
from sana_wm.camera import action_to_c2w, look_angles, validate_c2w


def _pose(yaw: float, pitch: float, roll: float, t) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = Ry @ Rx @ Rz
    T[:3, 3] = t
    return T


def _centroid(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float64)
    w = np.clip((x[..., 0] + x[..., 2]) / 2 - x[..., 1], 0, None)
    v, u = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])


@pytest.mark.parametrize("seed", range(4))
def test_rendered_point_appears_where_the_pinhole_model_says(seed):
    rng = np.random.default_rng(seed)
    H, W = 96, 160
    K = pinhole_intrinsics(H, W, rng.uniform(60, 90))
    c2w = _pose(rng.uniform(-0.6, 0.6), rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2), rng.uniform(-0.5, 0.5, 3))
    # a point 2–3 m in front of the camera, off-axis, as a small flat magenta square facing world -Z
    cam_pt = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3), 1.0]) * rng.uniform(2.0, 3.0)
    X = c2w[:3, :3] @ cam_pt + c2w[:3, 3]
    grey = Material("checker", "grey", "white", scale=0.5)
    marker = Box((X - [0.05, 0.05, 0.001]).tolist(), (X + [0.05, 0.05, 0.001]).tolist(), Material("plain", "magenta", "magenta", emissive=True), "marker")
    scene = Scene([-5, -2, -5], [5, 2, 5], grey, grey, grey, [marker], [0, -1.8, 0])
    img, depth = render(scene, c2w, K, H, W, supersample=4, return_depth=True)
    expected = K[:2, :2] @ (cam_pt[:2] / cam_pt[2]) + K[:2, 2]
    np.testing.assert_allclose(_centroid(img), expected, atol=0.2)
    u, v = np.round(expected).astype(int)
    # z-depth at the marker pixel is the marker's camera z (the square is thin and small)
    assert abs(depth[v, u] - cam_pt[2]) < 0.06


def test_floor_depth_matches_ray_geometry():
    grey = Material("plain", "grey", "grey")
    eye = 1.5
    scene = Scene([-20, -1.0, -20], [20, eye, 20], grey, grey, grey, [], [0, -0.8, 0])
    H, W = 64, 96
    K = pinhole_intrinsics(H, W, 80.0)
    depth = render_depth(scene, np.eye(4), K, H, W)
    fy, cy = K[1, 1], K[1, 2]
    for v in range(H // 2 + 4, H):  # rows below the horizon see the floor plane y = eye
        np.testing.assert_allclose(depth[v, W // 3 : 2 * W // 3], eye * fy / (v - cy), rtol=1e-4)


def test_pattern_scale_coarsens_patterns_of_the_same_room():
    base, coarse = random_scene(np.random.default_rng(5)), random_scene(np.random.default_rng(5), pattern_scale=3.0)
    mats = lambda s: [s.walls, s.floor, s.ceiling, *(b.material for b in s.boxes)]  # noqa: E731
    assert [(m.pattern, m.color, m.color2) for m in mats(base)] == [(m.pattern, m.color, m.color2) for m in mats(coarse)]
    np.testing.assert_allclose([m.scale for m in mats(coarse)], [3.0 * m.scale for m in mats(base)])
    assert (base.room_lo, base.room_hi, base.light) == (coarse.room_lo, coarse.room_hi, coarse.light)
    with pytest.raises(ValueError, match="`pattern_scale` must be a positive number; got 0"):
        random_scene(np.random.default_rng(5), pattern_scale=0)


def test_screen_space_culling_does_not_change_images(monkeypatch):
    rng = np.random.default_rng(3)
    scene = random_scene(rng)
    K = pinhole_intrinsics(64, 96, 75.0)
    c2w, _ = smooth_trajectory(rng, scene, 9, 16.0)
    culled = [render(scene, c, K, 64, 96, 2) for c in c2w]
    monkeypatch.setattr(syn.raycast, "_SCREEN_CULL", False)
    full = [render(scene, c, K, 64, 96, 2) for c in c2w]
    assert all(np.array_equal(a, b) for a, b in zip(culled, full, strict=True))


def test_clips_are_deterministic_per_seed():
    a = make_clip(1, seed=5, num_frames=9, height=32, width=64, supersample=1)
    b = make_clip(1, seed=5, num_frames=9, height=32, width=64, supersample=1)
    c = plan_clip(1, seed=6, num_frames=9, height=32, width=64)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.c2w, b.c2w) and a.caption == b.caption
    assert not np.array_equal(a.c2w, c.c2w)
    assert a.frames.shape == (9, 32, 64, 3) and a.frames.dtype == np.uint8
    assert a.frames.std() > 10  # textured, not blank


@pytest.mark.parametrize("seed", range(3))
def test_dsl_trajectory_is_the_action_rollout_placed_in_free_space(seed):
    rng = np.random.default_rng(seed)
    scene = random_scene(rng)
    c2w, info = dsl_trajectory(rng, scene, 33)
    assert info["kind"] == "dsl" and c2w.shape == (33, 4, 4)
    rel = np.linalg.inv(c2w[0])[None] @ c2w
    expected = action_to_c2w(info["action"], translation_speed=info["translation_speed"], rotation_speed_deg=1.2)
    np.testing.assert_allclose(rel, expected, atol=1e-5)
    assert scene.is_free(c2w[:, :3, 3]).all()
    assert c2w[0, 1, 0] == 0 and c2w[0, 1, 2] == 0  # the start pose only yaws: the DSL's ground plane stays horizontal


@pytest.mark.parametrize("seed", range(3))
def test_smooth_trajectory_is_rigid_smooth_and_inside(seed):
    rng = np.random.default_rng(seed)
    scene = random_scene(rng)
    c2w, info = smooth_trajectory(rng, scene, 65, 16.0)
    validate_c2w(c2w)
    assert scene.is_free(c2w[:, :3, 3]).all()
    steps = np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 0.1  # < 1.6 m/s at 16 fps
    angles = [np.degrees(np.arccos(np.clip((np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2, -1, 1))) for a, b in zip(c2w[:-1], c2w[1:], strict=True)]
    assert max(angles) < 3.0  # < 48°/s
    assert not np.allclose(c2w[:, :3, :3], c2w[0, :3, :3])  # it does rotate (6-DoF, incl. roll)


def test_smooth_captions_name_the_turn_sana_wm_camera_reads():
    """The world turns its cameras with sana_wm.camera's yaw: a caption's "turning right" is a yaw increase as
    sana_wm.camera (and so the overlay) reads the poses. Fails if the world used its own rotation convention."""
    turns = {}
    for index in range(3, 9):
        clip = plan_clip(index, seed=0, num_frames=49, trajectory="smooth")
        yaw, _ = look_angles(clip.c2w)
        total = np.degrees(np.unwrap(yaw)[-1] - np.unwrap(yaw)[0])
        for side, sign in (("right", 1), ("left", -1)):
            if f"turning {side}" in clip.caption:
                turns[index] = side
                assert sign * total > 30, (index, side, total)
    assert sorted(set(turns.values())) == ["left", "right"], turns  # both directions were checked


def test_caption_describes_scene_and_motion():
    clip = plan_clip(0, seed=0, num_frames=17, trajectory="dsl")
    assert clip.scene.walls.color in clip.caption and "walls" in clip.caption and "floor" in clip.caption
    assert "The camera" in clip.caption and clip.meta["trajectory"]["description"] in clip.caption
    assert syn.describe_action("w-10,wl-5,none-3") == "moves forward, then moves forward while turning right, then pauses"


def test_build_dataset_reuse_and_loader_ground_truth(tmp_path):
    out = tmp_path / "synth"
    paths = build_default_dataset(out, num_clips=3, num_frames=9, height=64, width=96, clips_per_shard=2, supersample=1, workers=1)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["synthetic-000000.tar", "synthetic-000001.tar"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 3 and manifest["num_frames"] == 27
    mtimes = [(out / p.rsplit("/", 1)[1]).stat().st_mtime_ns for p in paths]
    assert build_default_dataset(out, num_clips=3, num_frames=9, height=64, width=96, clips_per_shard=2, supersample=1, workers=1) == paths
    assert mtimes == [(out / p.rsplit("/", 1)[1]).stat().st_mtime_ns for p in paths]  # reused, not rebuilt

    ds = make_video_dataset(str(out), num_frames=9, height=64, width=96, target_fps=16.0, frame_sampling="start", shuffle_shards=False, strict=True)
    samples = list(ds)
    assert len(samples) == 3
    gt = plan_clip(1, seed=0, num_frames=9, height=64, width=96)
    s = next(x for x in samples if x.key == gt.key)
    np.testing.assert_allclose(s.c2w.numpy(), np.linalg.inv(gt.c2w[0])[None] @ gt.c2w, atol=1e-5)
    np.testing.assert_allclose(s.intrinsics[0].numpy(), [gt.K[0, 0], gt.K[1, 1], gt.K[0, 2], gt.K[1, 2]], rtol=1e-6)
    assert s.caption == gt.caption and s.meta["source"] == "synthetic" and s.meta["metric_scale"] == 1.0


def test_cli_with_render_processes(tmp_path, capsys):
    assert syn.main(["--out", str(tmp_path / "cli"), "--num-clips", "2", "--num-frames", "9", "--height", "32", "--width", "64", "--supersample", "1", "--workers", "2"]) == 0
    assert "2 clips" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["num_samples"] == 2
    assert syn.main(["--out", str(tmp_path / "bad"), "--num-frames", "10"]) == 2


def test_clips_per_room_share_room_and_first_frame_and_differ_in_path():
    """clips_per_room=3: clips 0-2 share room, K and start pose (so their first frames are equal, pixel for pixel)
    and differ in their DSL paths at full speed; clip 3 starts the next room."""
    kw = dict(seed=0, num_frames=17, height=32, width=56, pattern_scale=3.0)
    clips = [make_clip(i, clips_per_room=3, supersample=1, **kw) for i in range(4)]
    assert [c.meta["room"] for c in clips] == [0, 0, 0, 1]
    for c in clips[1:3]:
        np.testing.assert_array_equal(c.frames[0], clips[0].frames[0])
        np.testing.assert_array_equal(c.c2w[0], clips[0].c2w[0])
        np.testing.assert_array_equal(c.K, clips[0].K)
        assert c.scene == clips[0].scene
    assert len({c.meta["trajectory"]["action"] for c in clips[:3]}) == 3
    assert {c.meta["trajectory"]["translation_speed"] for c in clips} == {0.05}
    assert clips[3].scene != clips[0].scene and not np.array_equal(clips[3].c2w[0], clips[0].c2w[0])
    assert all(c.meta["trajectory"]["kind"] == "dsl" for c in clips)
    assert plan_clip(1, **kw).meta["room"] == 1  # one room per clip (the default)
    fast = plan_clip(0, clips_per_room=3, translation_speed=0.1, **kw)
    np.testing.assert_array_equal(fast.c2w[0], clips[0].c2w[0])  # same room start, paths twice as fast
    assert fast.meta["trajectory"]["translation_speed"] == 0.1
    with pytest.raises(ValueError, match="`translation_speed` must be > 0 .metres per frame.; got 0.0"):
        plan_clip(0, translation_speed=0.0, **kw)
    with pytest.raises(ValueError, match="clips_per_room"):
        plan_clip(0, clips_per_room=2, trajectory="smooth", **kw)
    with pytest.raises(ValueError, match="`clips_per_room` must be >= 1; got 0"):
        plan_clip(0, clips_per_room=0, **kw)


def test_dsl_segments_and_room_only_captions():
    """dsl_segments restricts every segment's keys (here over 40 actions); caption_motion=False leaves the motion
    out of the caption; a key group outside the release scheme is refused by name."""
    rng = np.random.default_rng(0)
    groups = {seg.rsplit("-", 1)[0] for _ in range(40) for seg in syn.random_action(rng, 32, ("w", "jl")).split(",")}
    assert groups == {"w", "jl"}
    clip = plan_clip(2, seed=0, num_frames=17, trajectory="dsl", dsl_segments=("s",), caption_motion=False)
    assert {seg.rsplit("-", 1)[0] for seg in clip.meta["trajectory"]["action"].split(",")} == {"s"}
    assert clip.caption == clip.scene.describe() and "The camera" not in clip.caption
    with pytest.raises(ValueError, match=r"got \['w', 'wx'\]"):
        plan_clip(0, seed=0, num_frames=17, dsl_segments=("w", "wx"))
