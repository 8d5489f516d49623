"""infer.py end to end on a tiny random release layout written to disk, and its input checks.

The CLI is called in-process through ``main(argv)`` (one subprocess run checks the real exit status)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from infer_testing import REPO, load_infer
from PIL import Image

from sana_wm.camera import action_to_c2w
from sana_wm.inference.pipeline import SanaWMPipeline
from sana_wm.inference.video import read_mp4

pytestmark = pytest.mark.filterwarnings("ignore")


infer = load_infer()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from sana_wm.testing.model_root import write_random_model_root

    d = tmp_path_factory.mktemp("cli")
    root = write_random_model_root(d / "root", sample_size=(64, 96), text_max_length=32)
    yy, xx = np.mgrid[0:120, 0:160]
    Image.fromarray(np.stack([xx * 1.5, yy * 2.0, (xx + yy) % 256], -1).astype(np.uint8)).save(d / "img.png")
    (d / "prompt.txt").write_text("A quiet forest path in the morning.\n", encoding="utf-8")
    np.save(d / "K.npy", np.array([[90.0, 0, 80], [0, 90.0, 60], [0, 0, 1]]))
    return {"root": root, "dir": d, "image": d / "img.png", "prompt": d / "prompt.txt", "K": d / "K.npy"}


def argv(files, out, *extra):
    return ["--model_root", str(files["root"]), "--image", str(files["image"]), "--prompt", str(files["prompt"]),
            "--intrinsics", str(files["K"]), "--step", "2", "--output_dir", str(out), *extra]


def test_cli_two_stage_end_to_end(files, tmp_path, capsys):
    rc = infer.main(argv(files, tmp_path, "--action", "w-8,l-8", "--num_frames", "16", "--save_stage1"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "snapped to 17" in captured.err
    video, fps = read_mp4(tmp_path / "img.mp4")
    assert video.shape == (16, 64, 96, 3) and fps == pytest.approx(16.0)  # 17 generated, sink frame dropped
    assert read_mp4(tmp_path / "img_stage1.mp4")[0].shape[0] == 17
    c2w = np.load(tmp_path / "img_c2w.npy")
    np.testing.assert_allclose(c2w, action_to_c2w("w-8,l-8")[1:17], atol=1e-6)
    K = np.load(tmp_path / "img_intrinsics.npy")
    assert K.shape == (16, 3, 3)
    np.testing.assert_allclose(K[0], [[54.0, 0, 48.0], [0, 54.0, 32.0], [0, 0, 1]], atol=1e-4)  # 0.6 scale, 4-row crop
    record = json.loads((tmp_path / "img.json").read_text())
    assert record["frames_generated"] == 17 and record["frames_in_video"] == 16 and record["refined"]
    for stage in ("load", "text_encoder", "vae_encode", "stage1", "stage2", "vae_decode", "write"):
        assert record["timings_s"][stage] >= 0, stage
    assert record["peak_memory_bytes"]["process_max_rss"] > 0 and record["realtime_factor"] > 0
    assert record["intrinsics_source"] == {"kind": "file", "path": str(files["K"].resolve())}
    assert record["intrinsics_estimate"] is None
    assert captured.out.strip() == str(tmp_path / "img.mp4")


def test_cli_stage1_only_with_camera_file_and_overlay(files, tmp_path, capsys):
    c2w = action_to_c2w("w-4,d-4,j-4,k-4").astype(np.float64)
    world = np.eye(4)
    world[:3, 3] = [1.0, 2.0, 3.0]  # a camera file need not start at the identity
    np.save(tmp_path / "cam.npy", world @ c2w)
    np.save(tmp_path / "Kf.npy", np.repeat(np.load(files["K"])[None], 17, axis=0))
    common = ["--camera", str(tmp_path / "cam.npy"), "--intrinsics", str(tmp_path / "Kf.npy"), "--num_frames", "17",
              "--no_refiner", "--seed", "5"]
    assert infer.main(argv(files, tmp_path / "a", *common)) == 0
    assert infer.main(argv(files, tmp_path / "b", *common, "--no_action_overlay")) == 0
    capsys.readouterr()
    with_overlay, _ = read_mp4(tmp_path / "a" / "img.mp4")
    plain, _ = read_mp4(tmp_path / "b" / "img.mp4")
    assert with_overlay.shape == plain.shape == (17, 64, 96, 3)
    diff = np.abs(with_overlay.astype(int) - plain.astype(int))
    assert diff[:, -20:].mean() > 5 * max(diff[:, :20].mean(), 0.5)  # widgets in the bottom band only
    np.testing.assert_allclose(np.load(tmp_path / "a" / "img_c2w.npy"), (world @ c2w)[:17], atol=1e-6)
    assert not json.loads((tmp_path / "a" / "img.json").read_text())["refined"]


def test_cli_with_our_checkpoint_file(files, tmp_path, capsys, monkeypatch):
    """--checkpoint (our save_checkpoint format, config in its metadata) gives the same video as the release
    layout's dit/ with the same weights and seed.

    The frames are compared as handed to the H.264 encoder: libx264's AVX-512 kernels do not encode identical
    frames of this tiny size (96x64) to identical bitstreams from one call to the next (decoded pixels then differ
    by up to ~40), so comparing the decoded mp4 files would test the encoder, not the checkpoint."""
    from sana_wm.checkpoint import load_checkpoint, save_checkpoint
    from sana_wm.inference import video as video_module

    written = {}
    write_mp4 = video_module.write_mp4

    def recording_write_mp4(path, frames, fps, *args, **kwargs):
        written[Path(path).parent.name] = np.array(frames, copy=True)
        return write_mp4(path, frames, fps, *args, **kwargs)

    monkeypatch.setattr(video_module, "write_mp4", recording_write_mp4)
    from sana_wm.inference.model_root import load_inference_config, resolve_model_paths
    from sana_wm.models import SanaWM

    cfg = load_inference_config(resolve_model_paths(files["root"], need_refiner=False))
    model = SanaWM(cfg.model)
    load_checkpoint(model, next((files["root"] / "dit").glob("*.safetensors")))
    ckpt = save_checkpoint(model, tmp_path / "ours.safetensors")
    common = ["--action", "w-8", "--num_frames", "9", "--no_refiner", "--step", "1", "--no_action_overlay"]
    assert infer.main(argv(files, tmp_path / "a", *common)) == 0
    assert infer.main(argv(files, tmp_path / "b", *common, "--checkpoint", str(ckpt))) == 0
    capsys.readouterr()
    assert written["a"].shape == written["b"].shape == (9, 64, 96, 3)
    np.testing.assert_array_equal(written["a"], written["b"])
    assert read_mp4(tmp_path / "b" / "img.mp4")[0].shape == (9, 64, 96, 3)


def test_cli_dsl_signs(files, tmp_path, capsys):
    """The DSL sign checks (docs/design/camera.md §8) through the CLI: d → +x, w → +z, l turns toward +x, i looks up (−y)."""
    rc = infer.main(argv(files, tmp_path, "--action", "d-8,w-8,l-8,i-8", "--num_frames", "33", "--no_refiner",
                         "--step", "1", "--no_action_overlay"))
    assert rc == 0, capsys.readouterr().err
    c2w = np.load(tmp_path / "img_c2w.npy")
    assert c2w.shape == (33, 4, 4)
    np.testing.assert_allclose(c2w[8, :3, 3], [0.4, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(c2w[16, :3, 3], [0.4, 0.0, 0.4], atol=1e-5)
    assert c2w[24, 0, 2] > 0.15 and abs(c2w[24, 1, 2]) < 1e-6  # forward gains +x, no pitch yet
    assert c2w[32, 1, 2] < -0.15  # forward gains −y: looking up
    # translation speed and rotation speed flags scale the rollout
    rc = infer.main(argv(files, tmp_path / "fast", "--action", "d-8", "--num_frames", "9", "--no_refiner", "--step",
                         "1", "--translation_speed", "0.1"))
    assert rc == 0
    np.testing.assert_allclose(np.load(tmp_path / "fast" / "img_c2w.npy")[8, :3, 3], [0.8, 0, 0], atol=1e-5)


def test_cli_flags_single_shot_refiner_offload_dpm(files, tmp_path, capsys):
    rc = infer.main(argv(files, tmp_path, "--action", "w-8", "--num_frames", "9", "--refiner_block_size", "0",
                         "--offload_refiner", "--offload_vae", "--offload_text_encoder", "--prefetch_refiner",
                         "--sampling_algo", "flow_dpm-solver", "--output_name", "clip", "--vae_tiling", "spatial"))
    assert rc == 0, capsys.readouterr().err
    assert read_mp4(tmp_path / "clip.mp4")[0].shape == (8, 64, 96, 3)
    record = json.loads((tmp_path / "clip.json").read_text())
    assert record["args"]["refiner_block_size"] == 0 and record["refined"]
    assert "refiner_text" in record["timings_s"]  # encoded before stage 1 with --prefetch_refiner
    # on the CPU the offload device is the execution device: nothing moves during generation
    assert {k: record["offload"][k] for k in ("moves", "h2d_bytes", "d2h_bytes")} == {
        "moves": 0, "h2d_bytes": 0, "d2h_bytes": 0}


def test_cli_camera_guidance_reaches_the_pipeline(files, tmp_path, capsys, monkeypatch):
    seen = []
    generate = SanaWMPipeline.generate

    def recording(self, *a, **kw):
        seen.append(kw["camera_guidance"])
        return generate(self, *a, **kw)

    monkeypatch.setattr(SanaWMPipeline, "generate", recording)
    common = ("--action", "w-8", "--num_frames", "9", "--no_refiner", "--step", "1", "--no_action_overlay")
    assert infer.main(argv(files, tmp_path / "off", *common)) == 0
    assert infer.main(argv(files, tmp_path / "on", *common, "--camera_cfg_scale", "2.5")) == 0, capsys.readouterr().err
    assert seen == [1.0, 2.5]
    assert json.loads((tmp_path / "on" / "img.json").read_text())["args"]["camera_cfg_scale"] == 2.5


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("infer.py: error: ")
    return err[0]


BAD = {
    "camera_and_action": (["--action", "w-16", "--camera", "{d}/cam.npy"], "not allowed with"),
    "no_trajectory": ([], "--action"),
    "short_trajectory": (["--action", "w-8", "--num_frames", "17"], "9 poses"),
    "bad_dsl": (["--action", "w-16,q-3"], "'q'"),
    "camera_shape": (["--camera", "{d}/cam_shape.npy"], "(F, 4, 4)"),
    "camera_nonrigid": (["--camera", "{d}/cam_scaled.npy"], "non-rigid"),
    "intrinsics_shape": (["--action", "w-16", "--intrinsics", "{d}/K_bad.npy"], "must have shape"),
    "intrinsics_nonpositive": (["--action", "w-16", "--intrinsics", "{d}/K_zero.npy"], "> 0"),
    "intrinsics_length": (["--action", "w-16", "--intrinsics", "{d}/K_short.npy"], "per-frame"),
    "intrinsics_missing": (["--action", "w-16", "--intrinsics", None], "--intrinsics_estimator_weights <folder"),
    "image_unreadable": (["--action", "w-16", "--image", "{d}/notimage.png"], "not a readable image"),
    "prompt_empty": (["--action", "w-16", "--prompt", "{d}/empty.txt"], "empty"),
    "prompt_missing": (["--action", "w-16", "--prompt", "{d}/nope.txt"], "not found"),
    "prompt_not_utf8": (["--action", "w-16", "--prompt", "{d}/latin1.txt"], "UTF-8"),
    "output_unwritable": (["--action", "w-16", "--output_dir", "{d}/afile/out"], "cannot write"),
    "too_few_frames_for_refiner": (["--action", "w-16", "--num_frames", "1"], "--no_refiner"),
    "bad_number": (["--action", "w-16", "--step", "0"], "--step"),
    "camera_cfg_negative": (["--action", "w-16", "--camera_cfg_scale", "-1"],
                            "--camera_cfg_scale must be a finite number >= 0 (1 = off); got -1.0"),
    "camera_cfg_inf": (["--action", "w-16", "--camera_cfg_scale", "inf"], "--camera_cfg_scale must be a finite"),
    "missing_refiner": (["--action", "w-16", "--refiner_root", "{d}/norefiner"], "norefiner"),
    "fp8_not_bf16": (["--action", "w-16", "--fp8", "rowwise", "--dtype", "fp32"], "--fp8 needs the DiT in bfloat16"),
    "fp8_without_gpu": (["--action", "w-16", "--fp8", "tensorwise", "--device", "cpu"],
                        "GPU of compute capability 8.9 or newer (sm_89 Ada, sm_90 Hopper); the device is cpu"),
}


@pytest.fixture(scope="module")
def bad_files(files):
    d = files["dir"] / "bad"
    d.mkdir()
    np.save(d / "cam.npy", action_to_c2w("w-16"))
    np.save(d / "cam_shape.npy", np.zeros((17, 3, 4)))
    scaled = action_to_c2w("w-16")
    scaled[5, :3, :3] *= 1.5
    np.save(d / "cam_scaled.npy", scaled)
    np.save(d / "K_bad.npy", np.ones((2, 2)))
    np.save(d / "K_zero.npy", np.array([0.0, 90.0, 80.0, 60.0]))
    np.save(d / "K_short.npy", np.repeat(np.load(files["K"])[None], 5, axis=0))
    (d / "notimage.png").write_text("hello")
    (d / "empty.txt").write_text("  \n")
    (d / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (d / "afile").write_text("a file, not a folder")
    return d


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_before_loading(files, bad_files, tmp_path, capsys, monkeypatch, case):
    def boom(*a, **k):
        raise AssertionError("a model was loaded despite bad input")

    monkeypatch.setattr(SanaWMPipeline, "from_model_root", classmethod(boom))
    extra, message = BAD[case]
    flags = {"--model_root": str(files["root"]), "--image": str(files["image"]), "--prompt": str(files["prompt"]),
             "--intrinsics": str(files["K"]), "--num_frames": "17", "--output_dir": str(tmp_path / "out")}
    flags.update({extra[i]: extra[i + 1] for i in range(0, len(extra), 2)})  # None removes a flag
    args = []
    for flag, value in flags.items():
        if value is not None:
            args += [flag, value.format(d=bad_files)]
    rc = infer.main(args)
    assert rc == infer.EXIT_BAD_INPUT
    assert message in _one_line_error(capsys)


def test_fp8_with_refiner_offload_is_refused_before_loading(files, tmp_path, capsys):
    rc = infer.main(argv(files, tmp_path, "--action", "w-16", "--fp8", "--offload_refiner"))
    assert rc == infer.EXIT_BAD_INPUT
    assert "--fp8 with --offload_refiner is not supported" in _one_line_error(capsys)


@pytest.mark.parametrize("extra, message", [
    ((), "--prefetch_refiner needs --offload_refiner (without it the refiner stays on the GPU); add "
         "--offload_refiner or drop --prefetch_refiner"),
    (("--offload_refiner", "--no_refiner"), "--prefetch_refiner uploads the refiner, which --no_refiner leaves out; "
                                            "drop one"),
])
def test_prefetch_refiner_needs_the_offloaded_refiner(files, tmp_path, capsys, monkeypatch, extra, message):
    def boom(*a, **k):
        raise AssertionError("a model was loaded despite bad input")

    monkeypatch.setattr(SanaWMPipeline, "from_model_root", classmethod(boom))
    rc = infer.main(argv(files, tmp_path, "--action", "w-16", "--prefetch_refiner", *extra))
    assert rc == infer.EXIT_BAD_INPUT
    assert _one_line_error(capsys) == f"infer.py: error: {message}"


def test_subprocess_exit_status(files, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "infer.py"), *argv(files, tmp_path, "--action", "w-4", "--num_frames", "17")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("infer.py: error: --action gives 5 poses")


# --------------------------------------------------------------------------------------------------
# Without --intrinsics: K estimated from --image by the annotation package's Pi3X
# --------------------------------------------------------------------------------------------------

PASS_INTRINSICS = ("pass --intrinsics <file.npy> with (4,) [fx, fy, cx, cy], (3, 3) K, (F, 4) or (F, 3, 3) in "
                   "input-image pixels")


@pytest.fixture(scope="module")
def pi3x_weights(files):
    """A tiny random Pi3X in the released layout (model.safetensors + config.json).

    Seed 11 is one whose random heads give this image a usable K (FOV ~35° wide, ~117° high); most random tiny models give
    a negative or near-zero focal length, which the FOV gate rejects (test below)."""
    import torch
    from safetensors.torch import save_file

    from annotation.models.pi3 import build_pi3

    torch.manual_seed(11)
    model = build_pi3("tiny")
    folder = files["dir"] / "pi3x"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"pos_type": "rope100", "decoder_size": "large"}))
    return folder


@pytest.fixture
def tiny_pi3x_sizes(monkeypatch):
    """The loader builds the released Pi3X sizes; here the tiny preset stands in for them."""
    from annotation.models import pi3

    monkeypatch.setitem(pi3.PRESETS, "pi3x", pi3.PRESETS["tiny"])


def _no_intrinsics_argv(files, out, *extra):
    return ["--model_root", str(files["root"]), "--image", str(files["image"]), "--prompt", str(files["prompt"]),
            "--action", "w-8", "--num_frames", "9", "--no_refiner", "--step", "1", "--no_action_overlay",
            "--device", "cpu", "--output_dir", str(out), *extra]


def _fov(focal: float, extent: int = 160) -> float:
    return float(np.degrees(2 * np.arctan(extent / (2 * focal))))


def test_cli_estimates_intrinsics_with_pi3x_weights(files, pi3x_weights, tiny_pi3x_sizes, tmp_path, capsys):
    from annotation.estimators.pi3 import Pi3Estimator

    frame = np.asarray(Image.open(files["image"]).convert("RGB"))[None]
    K = Pi3Estimator(pi3x_weights, device="cpu").estimate(frame, 16.0).K[0]
    assert 25 < _fov(K[0, 0]) < 120 and 25 < _fov(K[1, 1], 120) < 120, "the fixture's seed no longer gives a usable K"

    rc = infer.main(_no_intrinsics_argv(files, tmp_path, "--intrinsics_estimator_weights", str(pi3x_weights)))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "intrinsics estimated by pi3x (CC-BY-NC-4.0 weights) from --image" in err
    estimate = json.loads((tmp_path / "img.json").read_text())["intrinsics_estimate"]
    assert {k: estimate[k] for k in ("estimator", "version", "licence", "weights", "image_hw")} == {
        "estimator": "pi3x", "version": "pi3x-impl1", "licence": "CC-BY-NC-4.0", "weights": str(pi3x_weights),
        "image_hw": [120, 160]}
    np.testing.assert_allclose(estimate["K"], K, rtol=1e-6)
    assert estimate["hfov_deg"] == pytest.approx(_fov(K[0, 0]), rel=1e-6)
    assert estimate["vfov_deg"] == pytest.approx(_fov(K[1, 1], 120), rel=1e-6)
    # the estimate is what the pipeline used: 0.6 resize, 4 rows cropped top and bottom (120x160 → 64x96)
    expected = np.array([[0.6 * K[0, 0], 0, 0.6 * K[0, 2]], [0, 0.6 * K[1, 1], 0.6 * K[1, 2] - 4], [0, 0, 1]])
    np.testing.assert_allclose(np.load(tmp_path / "img_intrinsics.npy")[0], expected, rtol=1e-5)


def _fixed_estimate(monkeypatch, K):
    """Pi3X still loads the weights folder; only its output is replaced by ``K`` (for an exact FOV)."""
    from annotation.estimators import PoseResult
    from annotation.estimators.pi3 import Pi3Estimator

    def estimate(self, frames, fps, known_intrinsics=None):
        assert frames.shape == (1, 120, 160, 3)
        return PoseResult(c2w=np.eye(4)[None], K=np.asarray(K, float)[None], confidence=np.ones(1), scale=1.0,
                          scale_kind="metric", estimator=self.name, version=self.version, licence=self.licence)

    monkeypatch.setattr(Pi3Estimator, "estimate", estimate)


def test_cli_estimated_K_reaches_the_pipeline_and_the_json(files, pi3x_weights, tiny_pi3x_sizes, tmp_path, capsys,
                                                            monkeypatch):
    K = [[90.0, 0, 80], [0, 90.0, 60], [0, 0, 1]]
    _fixed_estimate(monkeypatch, K)
    seen = {}
    generate = SanaWMPipeline.generate

    def spy(self, image, prompt, c2w, intrinsics, **kw):
        seen["intrinsics"] = np.array(intrinsics, copy=True)
        return generate(self, image, prompt, c2w, intrinsics, **kw)

    monkeypatch.setattr(SanaWMPipeline, "generate", spy)
    rc = infer.main(_no_intrinsics_argv(files, tmp_path, "--intrinsics_estimator_weights", str(pi3x_weights)))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "fx=90.0 fy=90.0 cx=80.0 cy=60.0, horizontal FOV 83.3°, vertical 67.4°" in err
    np.testing.assert_array_equal(seen["intrinsics"], np.tile([90.0, 90.0, 80.0, 60.0], (9, 1)))
    record = json.loads((tmp_path / "img.json").read_text())
    assert record["intrinsics_source"] == {"kind": "estimated", "estimator": "pi3x"}
    estimate = record["intrinsics_estimate"]
    assert estimate["K"] == K and estimate["estimator"] == "pi3x" and estimate["licence"] == "CC-BY-NC-4.0"
    assert estimate["hfov_deg"] == pytest.approx(2 * np.degrees(np.arctan(80 / 90)), abs=1e-12)
    assert estimate["vfov_deg"] == pytest.approx(2 * np.degrees(np.arctan(60 / 90)), abs=1e-12)
    np.testing.assert_allclose(np.load(tmp_path / "img_intrinsics.npy")[0], [[54.0, 0, 48.0], [0, 54.0, 32.0],
                                                                             [0, 0, 1]], atol=1e-4)


def _abort_without_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the generator was loaded despite unusable intrinsics")

    monkeypatch.setattr(SanaWMPipeline, "from_model_root", classmethod(boom))


_WIDE = 80 / np.tan(np.radians(75))  # fx giving 150° across the 160-px-wide image


@pytest.mark.parametrize("K, message", [
    ([[_WIDE, 0, 80], [0, _WIDE, 60], [0, 0, 1]],
     "horizontal FOV of 150.0° (fx = 21.4 px for a 160-px-wide image)"),
    ([[90.0, 0, 80], [0, 300.0, 60], [0, 0, 1]],  # 83.3° wide but 22.6° high: not a square-pixel camera
     "vertical FOV of 22.6° (fy = 300.0 px for a 120-px-high image)"),
], ids=["horizontal_150", "vertical_22.6"])
def test_cli_aborts_on_an_estimated_fov_outside_25_to_120(files, pi3x_weights, tiny_pi3x_sizes, tmp_path, capsys,
                                                         monkeypatch, K, message):
    _abort_without_loading(monkeypatch)
    _fixed_estimate(monkeypatch, K)
    rc = infer.main(_no_intrinsics_argv(files, tmp_path, "--intrinsics_estimator_weights", str(pi3x_weights)))
    assert rc == infer.EXIT_BAD_INPUT
    assert _one_line_error(capsys) == (
        f"infer.py: error: the intrinsics estimated by pi3x give a {message}, outside [25°, 120°]: the estimate is "
        "not trusted; " + PASS_INTRINSICS + ", or pass other --intrinsics_estimator_weights")


def test_cli_without_intrinsics_or_estimator_weights_names_both_ways_out(files, tmp_path, capsys, monkeypatch):
    _abort_without_loading(monkeypatch)
    rc = infer.main(_no_intrinsics_argv(files, tmp_path))
    assert rc == infer.EXIT_BAD_INPUT
    assert _one_line_error(capsys) == (
        "infer.py: error: --intrinsics is required unless K can be estimated from the image: " + PASS_INTRINSICS +
        ", or pass --intrinsics_estimator_weights <folder with the pi3x model.safetensors (+ config.json)> to "
        "estimate K with pi3x (weights CC BY-NC 4.0, non-commercial)")


def test_cli_estimator_weights_missing_or_of_the_wrong_variant(files, pi3x_weights, tiny_pi3x_sizes, tmp_path, capsys,
                                                               monkeypatch):
    _abort_without_loading(monkeypatch)
    missing = tmp_path / "nowhere"
    assert infer.main(_no_intrinsics_argv(files, tmp_path, "--intrinsics_estimator_weights", str(missing))) == 2
    assert _one_line_error(capsys) == (
        f"infer.py: error: --intrinsics_estimator_weights {str(missing)!r}: no Pi3 checkpoint at "
        f"{missing}: expected a folder holding model.safetensors (+ config.json) as released for "
        "'pi3x', or the .safetensors file itself.")
    rc = infer.main(_no_intrinsics_argv(files, tmp_path, "--intrinsics_estimator_weights", str(pi3x_weights),
                                        "--intrinsics_estimator", "pi3"))
    assert rc == 2
    assert "holds pi3x weights ('metric_token' present) but variant 'pi3' was asked for" in _one_line_error(capsys)
