"""NVIDIA's demo inputs through infer.py on a tiny random release root: files in the form of its
asset/sana_wm/demo_N.{png,txt}, demo_N_pose.npy and demo_N_intrinsics.npy (NVlabs/Sana; float32 arrays of the shapes
shipped there: 321 poses with 321 per-frame K, 326 poses with 321 K, 323 poses with one K), and its example action
string. 33 frames in the default suite; the demo script's 321 frames in a `slow` run. The arrays here are synthetic;
only their forms are NVIDIA's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from infer_testing import load_infer
from PIL import Image

from sana_wm.camera import action_to_c2w

pytestmark = pytest.mark.filterwarnings("ignore")
DEMO_ACTION = "w-100,dw-60,w-100,aw-60"  # NVIDIA's run_sana_wm.sh example: 320 DSL frames → 321 poses


def _walk(n: int) -> np.ndarray:
    """(n, 4, 4) float32 c2w: forward along +z while turning slowly right, frame 0 = identity (as the demos)."""
    pose = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    yaw = np.radians(0.2) * np.arange(n)
    pose[:, 0, 0], pose[:, 0, 2], pose[:, 2, 0], pose[:, 2, 2] = np.cos(yaw), np.sin(yaw), -np.sin(yaw), np.cos(yaw)
    pose[:, 2, 3] = 0.02 * np.arange(n)
    return pose


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from sana_wm.testing.model_root import write_random_model_root

    d = tmp_path_factory.mktemp("demo")
    root = write_random_model_root(d / "root", sample_size=(64, 96), text_max_length=32)
    W, H = 167, 94  # the demos' 16:9-ish aspect (about 1672 × 940), scaled down
    yy, xx = np.mgrid[0:H, 0:W]
    K = np.array([[80.0, 0, 83.5], [0, 83.0, 46.9], [0, 0, 1]], np.float32)
    forms = {0: (321, 321), 1: (326, 321), 3: (323, None)}  # poses, per-frame K count (None: one K)
    for i, (n_pose, n_k) in forms.items():
        Image.fromarray(np.stack([xx * 1.5, yy * 2.0 + 10 * i, (xx + yy) % 256], -1).astype(np.uint8)).save(
            d / f"demo_{i}.png")
        (d / f"demo_{i}.txt").write_text(f"A first-person walk through scene {i}, seen from eye level.\n")
        np.save(d / f"demo_{i}_pose.npy", _walk(n_pose))
        np.save(d / f"demo_{i}_intrinsics.npy", K if n_k is None else np.tile(K, (n_k, 1, 1)))
    return d, root


def _run(demo, out, *extra):
    d, root = demo
    return load_infer().main(["--model_root", str(root), "--step", "2", "--output_dir", str(out), *extra])


@pytest.mark.parametrize("i, frames", [(0, 33), (1, 33), (3, 33), pytest.param(1, 321, marks=pytest.mark.slow)])
def test_demo_camera_files_run(demo, tmp_path, capsys, i, frames):
    d, _ = demo
    rc = _run(demo, tmp_path, "--image", str(d / f"demo_{i}.png"), "--prompt", str(d / f"demo_{i}.txt"),
              "--camera", str(d / f"demo_{i}_pose.npy"), "--intrinsics", str(d / f"demo_{i}_intrinsics.npy"),
              "--num_frames", str(frames))
    assert rc == 0, capsys.readouterr().err
    record = json.loads((tmp_path / f"demo_{i}.json").read_text())
    assert record["frames_generated"] == frames and record["frames_in_video"] == frames - 1 and record["refined"]
    c2w = np.load(tmp_path / f"demo_{i}_c2w.npy")
    np.testing.assert_allclose(c2w, _walk(frames)[1:frames], atol=1e-5)  # sink frame dropped, as NVIDIA does
    assert np.load(tmp_path / f"demo_{i}_intrinsics.npy").shape == (frames - 1, 3, 3)


def test_demo_action_string_runs(demo, tmp_path, capsys):
    d, _ = demo
    rc = _run(demo, tmp_path, "--image", str(d / "demo_0.png"), "--prompt", str(d / "demo_0.txt"),
              "--intrinsics", str(d / "demo_3_intrinsics.npy"), "--action", DEMO_ACTION, "--num_frames", "33")
    assert rc == 0, capsys.readouterr().err
    np.testing.assert_allclose(np.load(tmp_path / "demo_0_c2w.npy"), action_to_c2w(DEMO_ACTION)[1:33], atol=1e-5)
