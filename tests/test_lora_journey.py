"""The LoRA journey of docs/lora-journey.md, end to end, as the user's commands: videos without poses →
`python -m annotation` → shards → `python train.py experiment=lora_custom_footage` → merge → `python infer.py`.

The footage is rendered from the bundled synthetic world and handed over as bare .mp4 files (plus one caption
sidecar); the true poses stay in the test, never on disk. The models are tiny and random (a release layout the test
writes), so nothing is downloaded and the run fits a CPU. Every step runs as a subprocess with exactly the command
line the docs show, plus the tiny-model overrides; COLMAP therefore runs in its own process (importing decord before
COLMAP in one process changes COLMAP's result).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

#: the tiny-model overrides of the journey's train.py command (a tiny DiT whose latent and caption widths match the
#: tiny release layout, one CPU process, 17 frames at 64×96, a few steps)
TINY_TRAIN = [
    "model=tiny", "model.in_channels=8", "model.out_channels=8", "model.caption_channels=32", "trainer=cpu",
    "strategy=single", "logger=csv", "data.num_workers=0", "data.pin_memory=false", "data.num_frames=17",
    "data.height=64", "data.width=96", "encoders.dtype=float32", "validation.every_n_steps=0",
    "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "lora.rank=4", "lora.alpha=4",
    "optim.lr=1e-2", "optim.warmup_steps=0",
]
STEPS = 3


def _cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}
    run = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{' '.join(args[:3])} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return run


def _footage(videos: Path):
    """The user's folder: one 2-second walk through a brick room with a caption, and three videos the annotation
    must skip with a reason. Returns the walk's true (unsaved) poses and K."""
    from data.synthetic import make_clip
    from data.video import encode_mp4

    videos.mkdir()
    clip = make_clip(0, seed=7, num_frames=33, height=192, width=336, trajectory="smooth")
    (videos / "room.mp4").write_bytes(encode_mp4(clip.frames, 16.0, crf=18))
    (videos / "room.txt").write_text("A camera glides through a brick room.\n")
    (videos / "short.mp4").write_bytes(encode_mp4(clip.frames[:9], 16.0))        # shorter than quality.min_frames
    (videos / "slideshow.mp4").write_bytes(encode_mp4(clip.frames[:17], 8.0))    # slower than the 16 fps trained at
    (videos / "broken.mp4").write_bytes(b"not a video")
    return clip.c2w, clip.K


@pytest.mark.slow
def test_lora_journey_from_videos_without_poses_to_a_generated_video(tmp_path):
    from safetensors.torch import load_file

    from annotation.geometry import trajectory_errors
    from sana_wm.checkpoint import load_checkpoint
    from sana_wm.inference.video import read_mp4
    from sana_wm.testing.model_root import write_random_model_root
    from sana_wm.training.export import model_from_checkpoint_file
    from sana_wm.training.lora import checkpoint_digest, read_lora

    true_c2w, true_K = _footage(tmp_path / "videos")

    # 1. annotate: weight-free COLMAP, intrinsics estimated, unit scale marked relative
    _cli(["-m", "annotation", "videos", "annotated", "estimator_options.num_threads=1",
          "estimator_options.guided_matching=true"], tmp_path)
    ann = tmp_path / "annotated"
    summary = json.loads((ann / "summary.json").read_text())
    assert (summary["videos"], summary["kept"]) == (4, 1)
    assert summary["rejected"] == {"fps_too_low": 1, "too_short": 1, "unreadable": 1}
    assert [json.loads(line)["reason"] for line in (ann / "rejected.jsonl").read_text().splitlines()] == [
        "unreadable", "too_short", "fps_too_low"]  # videos in name order: broken, short, slideshow
    clip = ann / "clips" / "room-s000-c00"
    meta = json.loads(clip.with_suffix(".json").read_text())
    assert (meta["metric_scale"], meta["pose_scale"], meta["annotation"]["scale_kind"]) == (1.0, "relative", "relative")
    assert meta["annotation"]["estimator"] == "colmap" and meta["annotation"]["info"]["intrinsics"] == "estimated"
    assert meta["annotation"]["info"]["registered"] == 33 and meta["caption_source"] == "sidecar"
    c2w, K = np.load(f"{clip}.c2w.npy"), np.load(f"{clip}.intrinsics.npy")
    assert c2w.shape == (33, 4, 4) and K.shape == (33, 3, 3)
    rel = np.linalg.inv(c2w[0]) @ c2w  # the loader reads poses relative to the first (COLMAP's world is arbitrary)
    assert min(np.abs(r - np.eye(4)).max() for r in rel[1:]) > 1e-3  # no frame sits at the first one's pose
    # the camera turned and moved: 1 m in a room a few metres deep (COLMAP poses are in median scene depths)
    assert meta["quality"]["rotation_deg"] > 30 and 0.15 < meta["quality"]["path_length"] < 0.5
    err = trajectory_errors(c2w, true_c2w)
    assert err["ate_rmse"] < 0.35 and err["rot_mean_deg"] < 4  # an estimated K costs accuracy (bench/RESULTS.md)
    np.testing.assert_array_equal(K, np.broadcast_to(K[0], K.shape))  # one shared camera, principal point centred
    assert (K[0, 0, 2], K[0, 1, 2], K[0, 0, 0]) == (167.5, 95.5, K[0, 1, 1])
    assert abs(K[0, 0, 0] / true_K[0, 0] - 1) < 0.1
    manifest = json.loads((ann / "shards" / "manifest.json").read_text())
    assert (manifest["num_samples"], manifest["num_frames"]) == (1, 33)

    # 2. the release folder (here: tiny random components in the release layout, DiT in NVIDIA's key layout)
    root = write_random_model_root(tmp_path / "SANA-WM_tiny", refiner=False)
    base = root / "dit" / "sana_wm_random.safetensors"

    # 3. LoRA fine-tuning on the annotated shards
    _cli([str(REPO / "train.py"), "experiment=lora_custom_footage", f"paths.model_root={root}",
          f"model.init_checkpoint={base}", "data.train_shards=annotated/shards", "output_dir=lora_run",
          *TINY_TRAIN, f"trainer.max_steps={STEPS}", f"lora.save_every_n_steps={STEPS}",
          f"checkpoint.every_n_steps={STEPS}"], tmp_path)
    run = tmp_path / "lora_run"
    rows = list(csv.DictReader(open(run / "csv" / "version_0" / "metrics.csv")))
    losses = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    assert sorted(losses) == list(range(STEPS)) and all(np.isfinite(list(losses.values())))
    assert sorted(p.name for p in (run / "adapters").iterdir()) == ["last.safetensors", f"step_{STEPS:07d}.safetensors"]
    adapter, adapter_meta = read_lora(run / "adapters" / "last.safetensors")
    assert adapter_meta["base_sha256"] == checkpoint_digest(base) and adapter_meta["global_step"] == str(STEPS)
    assert (run / "export" / "dit.safetensors").is_file()

    # 4. merge the adapter into the base: a full official-layout checkpoint
    _cli(["-m", "sana_wm.training.export", "merge", "--base", str(base), "--adapter",
          "lora_run/adapters/last.safetensors", "--out", "merged/dit.safetensors"], tmp_path)
    merged_file = tmp_path / "merged" / "dit.safetensors"
    model = model_from_checkpoint_file(merged_file)  # its own config metadata
    load_checkpoint(model, merged_file)  # strict
    merged, before, exported = load_file(merged_file), load_file(base), load_file(run / "export" / "dit.safetensors")
    assert merged.keys() == before.keys()
    changed = {k for k in merged if not np.array_equal(merged[k].numpy(), before[k].numpy())}
    targets = json.loads(adapter_meta["lora_config"])["targets"]
    assert len(targets) == 52 and changed == {f"{t}.weight" for t in targets}  # exactly the LoRA targets' weights
    assert all(np.array_equal(merged[k].numpy(), exported[k].numpy()) for k in merged)  # = the run's own export

    # 5. generate from the clip's first frame with an action string and the annotated intrinsics
    import av

    with av.open(str(clip.with_suffix(".mp4"))) as container:
        next(container.decode(video=0)).to_image().save(tmp_path / "first.png")
    (tmp_path / "prompt.txt").write_text("A camera glides through a brick room.\n")
    out = _cli([str(REPO / "infer.py"), "--model_root", str(root), "--checkpoint", "merged/dit.safetensors", "--image",
                "first.png", "--prompt", "prompt.txt", "--action", "w-8,l-8", "--intrinsics",
                f"{clip}.intrinsics.npy", "--num_frames", "17", "--no_refiner", "--step", "2", "--device", "cpu",
                "--output_dir", "generated"], tmp_path)
    gen = tmp_path / "generated"
    assert out.stdout.strip().splitlines()[-1] == "generated/first.mp4"
    video, fps = read_mp4(gen / "first.mp4")
    assert video.shape == (17, 64, 96, 3) and fps == pytest.approx(16.0)
    record = json.loads((gen / "first.json").read_text())
    assert (record["frames_generated"], record["frames_in_video"], record["refined"]) == (17, 17, False)
    assert record["intrinsics_source"] == {"kind": "file", "path": str(Path(f"{clip}.intrinsics.npy").resolve())}
    assert record["intrinsics_estimate"] is None
    # the annotated K at 192×336, resized by 1/3 and centre-cropped by 8 columns to the model's 64×96
    fx, cx, cy = K[0, 0, 0], K[0, 0, 2], K[0, 1, 2]
    np.testing.assert_allclose(np.load(gen / "first_intrinsics.npy")[0],
                               [[fx / 3, 0, cx / 3 - 8], [0, fx / 3, cy / 3], [0, 0, 1]], rtol=1e-6)


class _TruthEstimator:
    """Stands in for COLMAP in the default-suite journey: returns the rendered clip's own poses and K, relative scale."""

    name, version, licence = "truth", "1", "none"

    def __init__(self, c2w, K):
        self.c2w, self.K = c2w, K

    def estimate(self, frames, fps, known_intrinsics=None):
        from annotation.estimators import PoseResult

        n = len(frames)
        return PoseResult(self.c2w[:n], np.broadcast_to(self.K, (n, 3, 3)), np.ones(n), 1.0, "relative", self.name,
                          self.version, self.licence)


def test_lora_journey_in_process_without_colmap(tmp_path, capsys):
    """The journey's new joints, cheap: the annotation pipeline's clip files (poses from a stand-in estimator) →
    shards → LoRA training on video shards with the release layout's encoders → merge → infer.py with the annotated
    intrinsics. The slow test above runs the same chain as the user's commands, with COLMAP."""
    import infer
    from annotation.pipeline import AnnotateConfig, annotate_video
    from data.synthetic import make_clip
    from data.video import encode_mp4
    from data.write_shards import write_folder
    from sana_wm.inference.video import read_mp4
    from sana_wm.testing.model_root import write_random_model_root
    from sana_wm.testing.training import compose_train_config
    from sana_wm.training.export import main as export_main
    from sana_wm.training.launch import train
    from sana_wm.training.lora import read_lora

    clip = make_clip(0, seed=7, num_frames=17, height=64, width=96, trajectory="smooth")
    (tmp_path / "room.mp4").write_bytes(encode_mp4(clip.frames, 16.0, crf=18))
    clips = tmp_path / "annotated" / "clips"
    clips.mkdir(parents=True)
    state = annotate_video(tmp_path / "room.mp4", "room", _TruthEstimator(clip.c2w, clip.K), AnnotateConfig(), clips)
    assert state["kept"] == ["room-s000-c00"] and state["rejected"] == []
    shards = tmp_path / "annotated" / "shards"
    assert write_folder(clips, shards, strict=True)["written"] == 1

    root = write_random_model_root(tmp_path / "root", refiner=False)
    base = root / "dit" / "sana_wm_random.safetensors"
    train(compose_train_config([
        "experiment=lora_custom_footage", f"paths.model_root={root}", f"model.init_checkpoint={base}",
        f"data.train_shards={shards}", f"output_dir={tmp_path / 'run'}", *TINY_TRAIN, "trainer.max_steps=1",
        "lora.save_every_n_steps=1", "checkpoint.every_n_steps=1", "checkpoint.resume=null"]))
    _, meta = read_lora(tmp_path / "run" / "adapters" / "last.safetensors")
    assert meta["global_step"] == "1"

    merged = tmp_path / "merged.safetensors"
    assert export_main(["merge", "--base", str(base), "--adapter", str(tmp_path / "run" / "adapters" /
                                                                        "last.safetensors"), "--out", str(merged)]) == 0
    (tmp_path / "prompt.txt").write_text("A camera glides through a brick room.\n")
    from PIL import Image

    Image.fromarray(read_mp4(clips / "room-s000-c00.mp4")[0][0]).save(tmp_path / "first.png")
    K_file = clips / "room-s000-c00.intrinsics.npy"
    capsys.readouterr()
    assert infer.main(["--model_root", str(root), "--checkpoint", str(merged), "--image", str(tmp_path / "first.png"),
                       "--prompt", str(tmp_path / "prompt.txt"), "--action", "w-4,l-4", "--intrinsics", str(K_file),
                       "--num_frames", "9", "--no_refiner", "--step", "1", "--device", "cpu", "--output_dir",
                       str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert read_mp4(tmp_path / "out" / "first.mp4")[0].shape == (9, 64, 96, 3)
    record = json.loads((tmp_path / "out" / "first.json").read_text())
    assert record["intrinsics_source"] == {"kind": "file", "path": str(K_file.resolve())}
    np.testing.assert_allclose(np.load(tmp_path / "out" / "first_intrinsics.npy")[0], clip.K, rtol=1e-6)
