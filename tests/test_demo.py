"""`make demo` (sana_wm.demo): its pieces (fast) and the whole run at a reduced size (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sana_wm.demo import EVAL_ACTIONS, contact_sheet, main
from sana_wm.inference.motion import command_segments


def test_eval_actions_are_balanced_33_frame_commands():
    assert len(EVAL_ACTIONS) >= 8
    segs = [s for a in EVAL_ACTIONS for s in command_segments(a)]
    assert all(command_segments(a)[-1][1] == 32 for a in EVAL_ACTIONS)
    yaws = [s[2] for s in segs if s[2]]
    moves = [s[3] for s in segs if s[3]]
    assert (yaws.count(1), yaws.count(-1)) == (10, 10)
    assert (moves.count(1), moves.count(-1)) == (10, 10)


def test_contact_sheet_layout(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (9, 16, 24, 3), dtype=np.uint8)
    path = contact_sheet(tmp_path / "s.png", frames[0], "w-4,l-4", {"a": frames, "b": frames}, num_shown=4, zoom=2)
    w, h = Image.open(path).size
    # 4 columns of 48-px frames with 4-px gaps; 3 rows (input + path, a, b) of 32 px + 14-px labels + gaps
    assert (w, h) == (4 * (48 + 4) + 4, 3 * (32 + 14 + 4) + 4)


@pytest.mark.slow
def test_demo_end_to_end_at_reduced_size(tmp_path):
    """The whole demo with a handful of steps everywhere: every stage runs and the summary has its fields."""
    rc = main(["--out", str(tmp_path / "demo"), "--num-clips", "4", "--clips-per-room", "2", "--heldout-clips", "1",
               "--dit-steps", "10", "--steps", "2", "--eval-actions", "8", "--eval-steps", "1", "--eval-seeds", "2"])
    assert rc == 0
    out = tmp_path / "demo"
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["wall_seconds"]) == {"world", "codec", "cache", "train", "generate", "evaluate", "total"}
    assert (summary["world"]["num_clips"], summary["world"]["clips_per_room"]) == (4, 2)
    vae = summary["vae"]
    assert (vae["init"], vae["spatial_compression"], vae["latent_channels"], vae["heldout_clips"]) == ("pca", 16, 64, 1)
    assert np.isfinite(vae["psnr_heldout"]) and np.isfinite(vae["psnr_train"])
    assert 0 < vae["patch_variance_kept"] <= 1 and 0 < vae["group_variance_kept"] <= 1
    assert [s for s, _ in summary["dit_loss_curve"]] and all(np.isfinite(v) for _, v in summary["dit_loss_curve"])
    cf = summary["camera_following"]
    assert cf["actions"] == list(EVAL_ACTIONS[:8])
    assert cf["motion_block_px"] == 16  # the motion estimate ignores the codec's 16-px block grid
    assert cf["seeds"] == [0, 1]
    assert cf["camera_cfg_scale"] == 2.0  # the demo's default camera guidance, for both models
    for label in ("with_camera", "camera_branch_zeroed"):  # 8 strings x 2 checks each x 2 seeds
        assert cf[label]["checks"] == 32 and 0.0 <= cf[label]["rate"] <= 1.0
        assert len(cf[label]["details"]) == 32 and len(cf[label]["rate_per_seed"]) == 2
        assert np.isclose(np.mean(cf[label]["rate_per_seed"]), cf[label]["rate"])
    for key in ("video", "contact_sheet", "dit_checkpoint"):
        assert (out / summary["outputs"][key]).is_file(), key
