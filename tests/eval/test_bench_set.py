"""sana_wm.eval.bench_set: both layouts, per-case errors, the synthetic and shard builders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sana_wm.camera import action_to_c2w
from sana_wm.eval.bench_set import (
    CaseError,
    load_bench_set,
    write_case,
    write_shard_bench,
    write_synthetic_bench,
)
from sana_wm.testing.data import raw_video_sample, tiny_video_clip, write_raw_shard


def _demo_case(root, n: int, frames: int = 9, intrinsics_shape: str = "K"):
    video, c2w, K = tiny_video_clip(frames, 32, 64, seed=n)
    Image.fromarray(video[0]).save(root / f"demo_{n}.png")
    (root / f"demo_{n}.txt").write_text(f"prompt {n}\n")
    np.save(root / f"demo_{n}_pose.npy", c2w)
    intr = {"K": K, "per_frame": np.repeat(K[None], frames, 0), "vec": np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])}
    np.save(root / f"demo_{n}_intrinsics.npy", intr[intrinsics_shape])
    return c2w, K


def test_nvidia_demo_naming_is_read_as_is(tmp_path):
    c2w, K = _demo_case(tmp_path, 0, intrinsics_shape="K")
    _demo_case(tmp_path, 1, intrinsics_shape="per_frame")
    _demo_case(tmp_path, 2, intrinsics_shape="vec")
    bench = load_bench_set(tmp_path)
    assert bench.errors == []
    assert [c.name for c in bench.cases] == ["demo_0", "demo_1", "demo_2"]
    case = bench.cases[0]
    assert case.prompt == "prompt 0" and case.trajectory_type == "c2w" and case.fps == 16.0
    np.testing.assert_array_equal(case.c2w, c2w)
    assert case.intrinsics.shape == (9, 4)
    np.testing.assert_allclose(case.intrinsics[3], [K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    for other in bench.cases[1:]:
        np.testing.assert_allclose(other.intrinsics, np.tile(other.intrinsics[0], (9, 1)))


def test_case_folders_with_action_and_ground_truth(tmp_path):
    video, c2w, K = tiny_video_clip(17, 32, 64)
    write_case(tmp_path / "a", video[0], "go", c2w, K, video, {"fps": 8, "trajectory_type": "orbit"})
    b = tmp_path / "b"
    write_case(b, video[0], "act", c2w, K)
    (b / "c2w.npy").unlink()
    (b / "action.txt").write_text("w-8,wl-8\n")
    bench = load_bench_set(tmp_path, num_frames=9)
    assert bench.errors == []
    a, act = bench.cases
    assert (a.fps, a.trajectory_type, a.gt_video.shape, a.c2w.shape) == (8.0, "orbit", (9, 32, 64, 3), (9, 4, 4))
    np.testing.assert_array_equal(a.gt_video, video[:9])
    assert act.action == "w-8,wl-8" and act.trajectory_type == "action"
    np.testing.assert_allclose(act.c2w, action_to_c2w("w-8,wl-8")[:9])


def test_bad_cases_are_reported_per_case_and_loading_continues(tmp_path):
    _demo_case(tmp_path, 0)
    _demo_case(tmp_path, 1)
    (tmp_path / "demo_1.png").unlink()  # missing image
    _demo_case(tmp_path, 2)
    (tmp_path / "demo_2_pose.npy").unlink()  # missing trajectory
    _demo_case(tmp_path, 3, frames=5)  # too short for num_frames=9
    _demo_case(tmp_path, 4)
    np.save(tmp_path / "demo_4_intrinsics.npy", np.zeros((3, 3, 3)))  # 3 per-frame rows for 9 frames
    _demo_case(tmp_path, 5)
    bad = np.load(tmp_path / "demo_5_pose.npy")
    bad[2, :3, :3] *= -1  # a reflection
    np.save(tmp_path / "demo_5_pose.npy", bad)
    video, c2w, K = tiny_video_clip(9, 32, 64)
    write_case(tmp_path / "short_gt", video[0], "p", c2w, K, video[:4])
    (tmp_path / "action_bad").mkdir()
    write_case(tmp_path / "action_bad", video[0], "p", c2w, K)
    (tmp_path / "action_bad" / "c2w.npy").unlink()
    (tmp_path / "action_bad" / "action.txt").write_text("q-3")

    bench = load_bench_set(tmp_path, num_frames=9)
    assert [c.name for c in bench.cases] == ["demo_0"]
    reasons = {e.name: e.reason for e in bench.errors}
    assert set(reasons) == {"demo_1", "demo_2", "demo_3", "demo_4", "demo_5", "short_gt", "action_bad"}
    assert "no first image" in reasons["demo_1"]
    assert "no trajectory" in reasons["demo_2"]
    assert reasons["demo_3"] == "trajectory has 5 frames; the set asks for 9"
    assert "demo_4_intrinsics.npy" in reasons["demo_4"]
    assert "demo_5_pose.npy" in reasons["demo_5"] and "det(R)" in reasons["demo_5"]
    assert reasons["short_gt"] == "gt.npy has 4 frames; the trajectory has 9"
    assert "action.txt" in reasons["action_bad"]
    assert isinstance(bench.errors[0], CaseError)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_bench_set(tmp_path / "nope")


def test_synthetic_builder_writes_held_out_cases_with_ground_truth(tmp_path):
    write_synthetic_bench(tmp_path, 2, seed=1000, num_frames=9, height=32, width=64, supersample=1)
    bench = load_bench_set(tmp_path)
    assert bench.errors == []
    assert [c.name for c in bench.cases] == ["synth-1000-000000", "synth-1000-000001"]
    assert [c.trajectory_type for c in bench.cases] == ["dsl", "smooth"]
    case = bench.cases[0]
    assert case.gt_video.shape == (9, 32, 64, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(case.image_path)), case.gt_video[0])


def test_synthetic_builder_at_the_demo_world_keeps_each_dsl_command(tmp_path):
    """64 × 112 with the demo's coarse patterns, DSL paths only: every case carries the action its poses roll out
    (same rotations; the world scales the steps' length), and the rooms are the demo world's at that seed."""
    from data.synthetic import make_clip
    from sana_wm.camera import relative_to_first

    write_synthetic_bench(tmp_path, 2, seed=1000, num_frames=9, height=64, width=112, trajectory="dsl",
                          pattern_scale=3.0, supersample=1)
    bench = load_bench_set(tmp_path)
    assert bench.errors == [] and [c.trajectory_type for c in bench.cases] == ["dsl", "dsl"]
    for i, case in enumerate(bench.cases):
        clip = make_clip(i, 1000, 9, 64, 112, 16.0, "dsl", 1, 3.0)
        assert case.action == clip.meta["trajectory"]["action"]
        np.testing.assert_array_equal(case.gt_video, clip.frames)
        np.testing.assert_allclose(relative_to_first(case.c2w)[:, :3, :3], action_to_c2w(case.action)[:, :3, :3],
                                   atol=1e-5)
    # A command the model was trained on is passed over: the next clip takes its place.
    write_synthetic_bench(tmp_path / "held_out", 2, seed=1000, num_frames=9, height=64, width=112, trajectory="dsl",
                          pattern_scale=3.0, supersample=1, exclude_actions={bench.cases[0].action})
    held_out = load_bench_set(tmp_path / "held_out").cases
    assert [c.name for c in held_out] == ["synth-1000-000001", "synth-1000-000002"]
    assert bench.cases[0].action not in {c.action for c in held_out}
    with pytest.raises(ValueError, match="only 0 of 1 clips from index 0 on have an action outside the 1 excluded"):
        write_synthetic_bench(tmp_path / "none", 1, seed=1000, num_frames=9, height=64, width=112, trajectory="dsl",
                              exclude_actions=_AnyAction())


class _AnyAction(frozenset):
    """Excludes every action string."""

    def __contains__(self, item):
        return True

    def __len__(self):
        return 1


def test_an_action_beside_c2w_is_the_command_and_must_match_its_length(tmp_path):
    video, _, K = tiny_video_clip(9, 32, 64)
    c2w = action_to_c2w("w-4,l-4").astype(np.float64)
    c2w[:, :3, 3] *= 2.5  # a world with longer steps: the file's poses are the trajectory
    write_case(tmp_path / "ok", video[0], "p", c2w, K, action="w-4,l-4", meta={"trajectory_type": "dsl"})
    write_case(tmp_path / "wrong_length", video[0], "p", c2w, K, action="w-4,l-6")
    bench = load_bench_set(tmp_path)
    (case,) = bench.cases
    assert (case.name, case.action, case.trajectory_type) == ("ok", "w-4,l-4", "dsl")
    np.testing.assert_allclose(case.c2w, c2w)
    assert bench.errors == [CaseError("wrong_length", "action.txt commands 11 frames; c2w.npy has 9 (the action "
                                                      "must be the command the trajectory rolls out)")]


def test_shard_builder_reads_any_video_shard(tmp_path):
    video, c2w, K = tiny_video_clip(9, 32, 64)
    shard = write_raw_shard(str(tmp_path / "s-000000.tar"),
                            [raw_video_sample(f"clip{i}", video, c2w, K, caption=f"cap {i}") for i in range(3)])
    write_shard_bench(shard, tmp_path / "set", 2, num_frames=9, height=32, width=64)
    bench = load_bench_set(tmp_path / "set")
    assert bench.errors == []
    assert [(c.name, c.prompt, c.trajectory_type) for c in bench.cases] == [
        ("clip0", "cap 0", "shard"), ("clip1", "cap 1", "shard")]
    case = bench.cases[0]
    np.testing.assert_allclose(case.c2w[:, :3, 3], c2w[:, :3, 3] - c2w[0, :3, 3], atol=1e-5)
    assert case.gt_video.shape == (9, 32, 64, 3)
    with pytest.raises(ValueError, match="gave 3 usable clips; 5 were asked for"):
        write_shard_bench(shard, tmp_path / "set2", 5, num_frames=9, height=32, width=64)


def test_cli_builds_a_synthetic_set_and_checks_it(tmp_path, capsys):
    from sana_wm.eval.bench_set import main

    out = tmp_path / "set"
    assert main(["synthetic", "--out", str(out), "--num-cases", "1", "--num-frames", "9", "--height", "32",
                 "--width", "64"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ok   synth-1000-000000: 9 frames at 16 fps, dsl, ground truth", f"1 cases, 0 bad, in {out}"]
    (out / "broken").mkdir()
    assert main(["check", str(out)]) == 1
    assert capsys.readouterr().out.splitlines()[1] == "bad  broken: no first image (expected one of .png, .jpg, .jpeg, .webp)"


def test_cli_holds_out_the_commands_of_training_shards(tmp_path, capsys):
    from data.synthetic import build_default_dataset, dataset_actions, plan_clip
    from sana_wm.eval.bench_set import main

    build_default_dataset(tmp_path / "train", num_clips=2, num_frames=9, height=32, width=64, workers=0)
    trained = dataset_actions(tmp_path / "train")
    assert trained == {plan_clip(0, 0, 9, 32, 64).meta["trajectory"]["action"]}  # clip 1 is smooth
    # seed 0 again (same rooms): the first DSL clip's command is the training one, so it is passed over
    assert main(["synthetic", "--out", str(tmp_path / "set"), "--num-cases", "2", "--seed", "0", "--num-frames", "9",
                 "--height", "32", "--width", "64", "--trajectory", "dsl", "--held-out-from",
                 str(tmp_path / "train")]) == 0
    bench = load_bench_set(tmp_path / "set")
    assert [c.name for c in bench.cases] == ["synth-0000-000001", "synth-0000-000002"]
    assert not trained & {c.action for c in bench.cases}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["synthetic", "--out", str(tmp_path / "x"), "--held-out-from", str(tmp_path / "set")])
    assert "no video shard with action strings there" in capsys.readouterr().err
