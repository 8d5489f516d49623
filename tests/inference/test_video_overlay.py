"""Image preparation, mp4 writing, and the WASD + joystick overlay derived from camera trajectories."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sana_wm.camera import (
    ACTION_KEYMAPS,
    action_to_c2w,
    crop_intrinsics,
    ground_axes,
    parse_action,
    pitch_matrix,
    yaw_matrix,
)
from sana_wm.inference.overlay import derive_controls, draw_overlay
from sana_wm.inference.video import (
    image_to_tensor,
    load_image,
    read_mp4,
    resize_center_crop,
    video_to_uint8,
    write_mp4,
)


def test_resize_center_crop_matches_release_geometry():
    # 1920x1080 → 1280x720, then 8 rows cropped top and bottom (docs/design/camera.md §3).
    img = np.zeros((1080, 1920, 3), np.uint8)
    img[:, :960] = 255  # left half white: the crop must keep the boundary at the centre column
    out, geom = resize_center_crop(img, 704, 1280)
    assert out.shape == (704, 1280, 3) and out.dtype == np.uint8
    assert (geom.resized_h, geom.resized_w, geom.top, geom.left) == (720, 1280, 8, 0)
    assert out[:, 600].min() > 250 and out[:, 700].max() < 5
    K = crop_intrinsics(np.array([[1000.0, 1000.0, 960.0, 540.0]]), geom)
    np.testing.assert_allclose(K, [[1000 * 2 / 3, 1000 * 2 / 3, 640.0, 360.0 - 8.0]])
    t = image_to_tensor(out)
    assert t.shape == (1, 3, 1, 704, 1280) and float(t.min()) == -1.0 and float(t.max()) == 1.0


def test_load_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(bad)
    with pytest.raises(ValueError, match="not found"):
        load_image(tmp_path / "missing.png")
    Image.new("L", (10, 8)).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").mode == "RGB"


def test_mp4_roundtrip(tmp_path):
    yy, xx = np.mgrid[0:64, 0:96]
    base = np.stack([xx * 2.5, yy * 4.0, np.full_like(xx, 128.0)], axis=-1).astype(np.uint8)  # smooth content
    frames = np.repeat(base[None], 9, axis=0)
    frames[4:] = 255 - frames[4:]
    path = write_mp4(tmp_path / "v.mp4", frames, fps=16)
    back, fps = read_mp4(path)
    assert back.shape == frames.shape and fps == pytest.approx(16.0)
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 4  # lossy, but the content survives
    assert not (tmp_path / "v.tmp.mp4").exists()
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "odd.mp4", np.zeros((2, 63, 96, 3), np.uint8), fps=16)


def test_video_to_uint8_layout():
    v = np.linspace(-1, 1, 3 * 2 * 4 * 5).reshape(1, 3, 2, 4, 5)
    import torch

    out = video_to_uint8(torch.from_numpy(v))
    assert out.shape == (2, 4, 5, 3) and out.dtype == np.uint8
    assert out[0, 0, 0, 0] == 0 and out[-1, -1, -1, -1] == 255


def test_controls_recover_dsl_keys_and_signs():
    """The DSL sign checks, read back from the poses alone: l = yaw right, i = look up, d = +x, w = +z."""
    action = "w-6,d-6,l-6,i-6,a-6,s-6,j-6,k-6,wl-4,sa-3,none-3,wdi-5"
    c2w = action_to_c2w(action)
    controls = derive_controls(c2w)
    assert len(controls) == len(c2w)
    assert controls.keys[:-1] == parse_action(action)
    assert controls.keys[-1] == controls.keys[-2]
    # stick: yaw right → knob right (+x), pitch up → +y; strafe right → move +x
    assert controls.look[12, 0] > 0.9 and controls.look[18, 1] > 0.9 and controls.move[6, 0] > 0.9


def test_controls_from_camera_file_in_another_world_frame():
    """A --camera trajectory is usually not identity-anchored: shift and yaw the whole path, keys must not change."""
    action = "w-5,l-5,d-5,k-5"
    c2w = action_to_c2w(action).astype(np.float64)
    a = np.deg2rad(70)
    world = np.eye(4)
    world[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    world[:3, 3] = [3.0, -1.0, 7.0]
    moved = world @ c2w
    assert derive_controls(moved).keys[:-1] == parse_action(action)
    # small jitter on a static camera does not light keys
    still = np.repeat(np.eye(4)[None], 10, axis=0)
    still[:, :3, 3] += np.random.default_rng(0).normal(0, 1e-9, (10, 3))
    assert all(not k for k in derive_controls(still).keys)


def test_unified_scheme_relabels_keys():
    c2w = action_to_c2w("a-4,l-4", scheme="unified")  # unified: a = yaw left, l = strafe right
    assert derive_controls(c2w, scheme="unified").keys[:-1] == parse_action("a-4,l-4")


@pytest.mark.parametrize("scheme", ["release", "unified"])
def test_controls_name_motions_as_sana_wm_camera_does(scheme):
    """Trajectories built from sana_wm.camera's yaw/pitch rotations and ground axes, not from the DSL: the overlay
    lights the key that sana_wm.camera's key map gives each motion. Fails if the overlay read yaw, pitch or the
    walking axes with other signs than the camera module, or carried its own key table."""
    keys = ACTION_KEYMAPS[scheme]
    base = yaw_matrix(0.6) @ pitch_matrix(-0.2)  # not the identity: a camera file in another world frame
    fwd, right = ground_axes(base)
    step = np.radians(1.5)

    def path(rotations, positions):
        P = np.tile(np.eye(4), (len(rotations), 1, 1))
        P[:, :3, :3], P[:, :3, 3] = rotations, positions
        return P

    still, n = [base] * 7, np.arange(7)[:, None]
    cases = {
        keys.yaw_right: path([yaw_matrix(i * step) @ base for i in range(7)], 0 * n),
        keys.yaw_left: path([yaw_matrix(-i * step) @ base for i in range(7)], 0 * n),
        keys.pitch_up: path([base @ pitch_matrix(i * step) for i in range(7)], 0 * n),
        keys.pitch_down: path([base @ pitch_matrix(-i * step) for i in range(7)], 0 * n),
        keys.forward: path(still, 0.05 * n * fwd),
        keys.back: path(still, -0.05 * n * fwd),
        keys.right: path(still, 0.05 * n * right),
        keys.left: path(still, -0.05 * n * right),
    }
    for key, c2w in cases.items():
        assert derive_controls(c2w, scheme=scheme).keys == [frozenset(key)] * 7, key


def test_draw_overlay_lights_held_keys():
    c2w = action_to_c2w("w-3,s-3")
    controls = derive_controls(c2w)[:6]
    H, W = 704, 1280
    frames = np.full((6, H, W, 3), 60, np.uint8)
    out = draw_overlay(frames, controls)
    assert out.shape == frames.shape and not np.shares_memory(out, frames)
    u = round(min(H, W) / 10)
    m = u // 3
    w_key = (H - 2 * u - m + u // 2 + u // 4, m + u + u // 2)  # (row, col) inside the W key, off its letter
    s_key = (H - u - m + u // 2 + u // 4, m + u + u // 2)
    lit = np.array([255, 196, 40])
    assert np.abs(out[0][w_key].astype(int) - lit).max() < 20  # W held on frame 0
    assert np.abs(out[0][s_key].astype(int) - lit).max() > 100  # S not held
    assert np.abs(out[4][s_key].astype(int) - lit).max() < 20
    assert (out[:, : H // 2] == 60).all()  # the picture above the widgets is untouched
    with pytest.raises(ValueError, match="entries"):
        draw_overlay(frames, derive_controls(c2w))
