"""Camera motion re-estimated from pixels (sana_wm.inference.motion): exact shifts, and the synthetic world's
ground-truth camera paths, rendered, read back as the commanded turns and moves."""

from __future__ import annotations

import numpy as np
import pytest

from sana_wm.inference.motion import (
    camera_following,
    command_segments,
    following_rate,
    phase_shift,
    segment_motion,
)


def _texture(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.random((h // 4, w // 4))
    return np.kron(img, np.ones((4, 4)))


@pytest.mark.parametrize("dy, dx", [(0, 3), (-2, 0), (5, -7)])
def test_phase_shift_recovers_an_integer_translation(dy, dx):
    a = _texture()
    b = np.roll(a, (dy, dx), axis=(0, 1))
    got = phase_shift(a, b)
    assert got == pytest.approx((dy, dx), abs=0.05)


def test_phase_shift_rejects_mismatched_images():
    with pytest.raises(ValueError, match=r"\(48, 64\) and \(48, 32\)"):
        phase_shift(_texture(), _texture()[:, :32])


def _panned_with_block_noise(dx: int, noise: float, frames: int = 6, block: int = 8) -> list[np.ndarray]:
    """Grayscale frames (64, 112) of a smooth random scene panned by ``dx`` px per frame (content moves right), each
    frame plus fresh ``block`` × ``block`` block noise of std ``noise`` on a fixed grid — a patch codec's artefact
    (the scene's std is 1)."""
    rng = np.random.default_rng(0)
    H, W = 64, 112
    k = np.exp(-0.5 * (np.arange(-9, 10) / 3.0) ** 2)
    k /= k.sum()
    scene = np.kron(rng.random((H // 8 + 2, (W + dx * frames) // 8 + 2)), np.ones((8, 8)))
    scene = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 1, scene)
    scene = np.apply_along_axis(lambda c: np.convolve(c, k, "same"), 0, scene)[:H]
    scene = (scene - scene.mean()) / scene.std()
    x0 = dx * frames
    return [scene[:, x0 - dx * i: x0 - dx * i + W]
            + noise * np.kron(rng.standard_normal((H // block, W // block)), np.ones((block, block)))
            for i in range(frames)]


def test_block_noise_makes_plain_phase_correlation_alias_and_the_block_low_pass_reads_the_true_pan():
    """Fresh 8-px block noise on every frame (std half the scene's) over a scene panned 3 px per frame: plain phase
    correlation locks onto multiples of the block period whatever the motion; with ``block_px=8`` every pair reads
    the 3-px pan."""
    fr = _panned_with_block_noise(3, noise=0.5)
    pairs = list(zip(fr[:-1], fr[1:], strict=True))
    plain = [phase_shift(a, b)[1] for a, b in pairs]
    assert [round(v / 8) * 8 for v in plain] == pytest.approx(plain, abs=0.05)  # every pair on the block grid
    assert plain == pytest.approx([8.0, -8.0, 8.0, 0.0, -16.0], abs=0.01)  # a "turn" of -8 px against the true +15
    low = [phase_shift(a, b, block_px=8)[1] for a, b in pairs]
    assert low == pytest.approx([2.428, 3.662, 1.664, 2.778, 3.844], abs=1e-3)
    assert sum(low) == pytest.approx(15.0, abs=1.0)
    # A true pan of exactly one block period is still read as such (the widened peak reads it up to 5 % short).
    clean = _panned_with_block_noise(8, noise=0.0)
    read = [phase_shift(a, b, block_px=8)[1] for a, b in zip(clean[:-1], clean[1:], strict=True)]
    assert read == pytest.approx([7.75] * 5, abs=0.15)


def test_block_period_must_be_an_integer_of_at_least_two():
    with pytest.raises(ValueError, match="block_px must be None or an integer >= 2 .*; got 1"):
        phase_shift(_texture(), _texture(), block_px=1)
    with pytest.raises(ValueError, match="got 8.0"):
        camera_following(np.zeros((3, 8, 8, 3), np.uint8), "l-2", block_px=8.0)


def test_command_segments_signs_and_frames():
    assert command_segments("w-11,l-21") == [(0, 11, 0, 1), (11, 32, 1, 0)]
    assert command_segments("sj-4,none-2") == [(0, 4, -1, -1), (4, 6, 0, 0)]
    with pytest.raises(ValueError, match="'w4'"):
        command_segments("w4")


def _rendered(action: str, h: int = 48, w: int = 80) -> np.ndarray:
    """Frames of a synthetic room seen along the DSL path (start pose centred in the room, looking along +Z)."""
    from data.synthetic import pinhole_intrinsics, random_scene, render
    from sana_wm.camera import action_to_c2w

    scene = random_scene(np.random.default_rng(3), pattern_scale=2.0)
    c2w = action_to_c2w(action, rotation_speed_deg=2.0).astype(np.float64)
    K = pinhole_intrinsics(h, w, 75.0)
    return np.stack([render(scene, c, K, h, w) for c in c2w])


def test_rendered_turns_and_moves_are_read_back_and_a_reversed_video_fails():
    action = "w-6,l-6,j-6"
    frames = _rendered(action)
    checks = camera_following(frames, action)
    assert [(c.segment, c.kind, c.expected) for c in checks] == [(0, "move", 1), (1, "turn", 1), (2, "turn", -1)]
    assert all(c.ok for c in checks), checks
    assert following_rate(checks)["rate"] == 1.0
    # Played backwards the video turns right, then left, then walks back: read as such it passes, and against the
    # mirrored command (left, right, forward) every check fails.
    backwards = frames[::-1].copy()
    assert [c.ok for c in camera_following(backwards, "l-6,j-6,s-6")] == [True, True, True]
    assert [c.ok for c in camera_following(backwards, "j-6,l-6,w-6")] == [False, False, False]
    # A frozen video moves nowhere: it fails rather than scoring a coin flip.
    frozen = camera_following(np.repeat(frames[:1], len(frames), axis=0), action)
    assert following_rate(frozen) == {**following_rate(frozen), "rate": 0.0, "passed": 0, "checks": 3}


def test_frame_offset_shifts_the_command_onto_a_video_without_its_first_frame():
    """After the refiner drops the sink frame the video starts at command frame 1: the segments move one frame
    earlier, the first is cut at frame 0, and the measured cues are those of the same original frames."""
    action = "w-6,l-6"
    frames = _rendered(action)
    shifted = camera_following(frames[1:], action, frame_offset=1)
    assert [(c.segment, c.kind) for c in shifted] == [(0, "move"), (1, "turn")]
    assert shifted[0].measured == segment_motion(frames, 1, 6)[1]
    assert shifted[1].measured == -segment_motion(frames, 6, 12)[0]
    with pytest.raises(ValueError, match="frame_offset must be >= 0; got -1"):
        camera_following(frames, action, frame_offset=-1)
