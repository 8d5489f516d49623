"""End to end: a tiny random model root, a 2-case benchmark (+ 1 bad case), 2 settings; folders, resume, CSV rows."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

import sana_wm.eval.sweep as sweep
from sana_wm.camera import action_to_c2w
from sana_wm.eval.bench_set import write_case
from sana_wm.testing.data import tiny_video_clip
from sana_wm.testing.eval import forward_track
from sana_wm.testing.model_root import write_random_model_root

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs" / "eval")
STUB = "sana_wm.testing.eval:ForwardTrackEstimator"


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return write_random_model_root(tmp_path_factory.mktemp("root"), refiner=False)


def _bench(root: Path) -> Path:
    video, _, K = tiny_video_clip(9, 64, 96)
    c2w = forward_track(9, 0.2)  # what the stub estimator returns (up to scale): zero camera error
    write_case(root / "a_gt", video[0], "a room", c2w, K, video, {"fps": 16, "trajectory_type": "forward"})
    write_case(root / "b_fails", video[0], "a hall", c2w, K, None, {"fps": 8, "trajectory_type": "forward"})
    write_case(root / "c_bad", video[0], "no pose", c2w, K)
    (root / "c_bad" / "c2w.npy").unlink()
    return root


def _cfg(model_root, bench, out, cfg_scale):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("eval", overrides=[
            f"model_root={model_root}", f"bench={bench}", f"output_root={out}", "device=cpu", "step=1",
            f"cfg_scale={cfg_scale}", "num_frames=9",
            f"metrics.estimators.sana_wm.target={STUB}",
            f"metrics.estimators.cami2v.target={STUB}", "metrics.estimators.cami2v.trials=2",
            "+metrics.estimators.cami2v.kwargs.raise_at_fps=8.0", "metrics.revisit.min_gap=4",
        ])


def test_two_settings_resume_and_rows(model_root, tmp_path, monkeypatch):
    sweep._PIPELINES.clear()
    bench, out = _bench(tmp_path / "bench"), tmp_path / "out"
    generated = []
    real_eval = sweep._evaluate_case
    monkeypatch.setattr(sweep, "_evaluate_case", lambda pipe, case, *a: generated.append(case.name)
                        or real_eval(pipe, case, *a))
    cells = [sweep.run_cell(_cfg(model_root, bench, out, s)) for s in (1.0, 3.0)]
    assert generated == ["a_gt", "b_fails"] * 2
    assert len({c.name for c in cells}) == 2 and all(c.parent == out / "cells" for c in cells)
    assert cells[0].name.startswith("ckpt=root,cfg_scale=1.0,step=1,seed=42,")
    for cell in cells:
        assert {p.name for p in cell.iterdir()} >= {"a_gt.mp4", "b_fails.mp4", "a_gt_c2w.npy", "rows", "done.json",
                                                    "settings.json"}
        assert sorted(p.name for p in (cell / "rows").iterdir()) == ["a_gt.json", "b_fails.json", "c_bad.json"]

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    by = {(r["cfg_scale"], r["case"]): r for r in rows}
    a = by[("1.0", "a_gt")]
    assert a["status"] == "ok" and a["error"] == "" and a["trajectory_type"] == "forward" and a["frames"] == "9"
    for col in ("rot_err_deg_mean[sana_wm]", "trans_err_mean[sana_wm]", "cammc_mean[sana_wm]",
                "rot_err_rad_sum[cami2v]", "trans_err_sum[cami2v]", "cammc_sum[cami2v]"):
        assert float(a[col]) == pytest.approx(0.0, abs=1e-5), col
    # every 4th frame: the case moves 0.8 between estimated frames, the stub 0.1, so the fit scales by 8
    assert float(a["align_scale[sana_wm]"]) == pytest.approx(8.0, rel=1e-6)
    assert 0.0 < float(a["psnr_db_mean[gt]"]) <= 100.0 and -1.0 <= float(a["ssim_mean[gt]"]) <= 1.0
    assert "psnr_db_mean[t=0-10s]" in a
    b = by[("3.0", "b_fails")]
    assert b["status"] == "partial"
    assert b["error"] == "estimator[cami2v]: RuntimeError: stub estimator: no poses at 8.0 fps"
    assert b["rot_err_deg_mean[sana_wm]"] != "" and b["rot_err_rad_sum[cami2v]"] == ""
    assert b["psnr_db_mean[gt]"] == ""  # no ground truth for this case
    c = by[("1.0", "c_bad")]
    assert c["status"] == "bad_case" and "no trajectory" in c["error"]

    report = (out / "report.md").read_text()
    assert "b_fails` (partial): estimator[cami2v]" in report
    assert "lpips_alex: no local torchvision AlexNet weights configured" in report
    assert "fvd: no local I3D TorchScript configured" in report
    assert "fid: no local Inception TorchScript configured" in report
    assert "![rot_err_deg_mean[sana_wm] vs cfg_scale](plots/" in report  # matplotlib is in the `eval` extra

    # Rerun: finished cells are skipped without loading a model or generating.
    generated.clear()
    monkeypatch.setattr(sweep, "_pipeline", lambda cfg: pytest.fail("a finished cell loaded a model"))
    for s in (1.0, 3.0):
        sweep.run_cell(_cfg(model_root, bench, out, s))
    assert generated == []
    # An interrupted cell (no done.json, one case row missing) regenerates only that case.
    monkeypatch.undo()
    monkeypatch.setattr(sweep, "_evaluate_case", lambda pipe, case, *a: generated.append(case.name)
                        or real_eval(pipe, case, *a))
    (cells[1] / "done.json").unlink()
    (cells[1] / "rows" / "b_fails.json").unlink()
    sweep.run_cell(_cfg(model_root, bench, out, 3.0))
    assert generated == ["b_fails"]
    assert json.loads((cells[1] / "done.json").read_text())["cases"] == 2
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 6


@pytest.mark.slow
def test_hydra_multirun_cli(model_root, tmp_path):
    bench, out = _bench(tmp_path / "bench"), tmp_path / "out"
    cmd = [sys.executable, "-m", "sana_wm.eval", "-m", f"model_root={model_root}", f"bench={bench}",
           f"output_root={out}", "device=cpu", "step=2", "num_frames=9", "cfg_scale=1,3", "seed=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((out / "cells").iterdir())) == 2
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["cfg_scale"], r["case"], r["status"]) for r in rows) == [
        ("1", "a_gt", "ok"), ("1", "b_fails", "ok"), ("1", "c_bad", "bad_case"),
        ("3", "a_gt", "ok"), ("3", "b_fails", "ok"), ("3", "c_bad", "bad_case")]
    assert "camera[sana_wm]: no pose estimator configured" in (out / "report.md").read_text()
    np.testing.assert_equal(len(list(out.glob("cells/*/a_gt.mp4"))), 2)


def test_report_means_per_setting_and_type(tmp_path, monkeypatch):
    """write_report alone, on hand-written rows: the CSV columns, the means and the plots (or why none)."""
    rows = [("c1", "1", "t1", "ok", 1.0), ("c1", "2", "t2", "ok", 3.0), ("c2", "1", "t1", "failed", None),
            ("c2", "2", "t1", "ok", 5.0)]
    for cell, case, kind, status, value in rows:
        d = tmp_path / "cells" / cell / "rows"
        d.mkdir(parents=True, exist_ok=True)
        row = {"cell": cell, "cfg_scale": 3.0 if cell == "c1" else 5.0, "case": case, "trajectory_type": kind,
               "status": status, "error": "boom" if value is None else ""}
        if value is not None:
            row["psnr_db_mean[gt]"] = value
        (d / f"{case}.json").write_text(json.dumps(row))
    sweep.write_report(tmp_path)
    with open(tmp_path / "results.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:9] == ["cell", "ckpt", "cfg_scale", "step", "seed", "sampler", "flow_shift",
                                         "refine", "num_frames"]
        assert len(list(reader)) == 4
    report = (tmp_path / "report.md").read_text()
    assert "| c1 | 2 | 2 |" in report and "| c2 | 1 | 5 |" in report
    assert "| c1 | t2 | 1 | 3 |" in report
    assert "- `c2` / `1` (failed): boom" in report
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "psnr_db_mean_gt_by_cfg_scale.png", "psnr_db_mean_gt_by_trajectory_type.png"]
    assert "![psnr_db_mean[gt] vs cfg_scale](plots/psnr_db_mean_gt_by_cfg_scale.png)" in report
    # Without matplotlib (not installed) the report says so instead of dropping the plots silently.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    sweep.write_report(tmp_path)
    assert "not drawn: matplotlib is not installed" in (tmp_path / "report.md").read_text()


def test_pipeline_input_check_rejects_before_any_model_loads(tmp_path, monkeypatch):
    """With the refiner on, a 5-frame trajectory leaves it one latent frame: plan_trajectory's error becomes the
    case's bad_case row, and with no case left the model is never loaded (model_root need not even exist)."""
    video, _, K = tiny_video_clip(5, 64, 96)
    write_case(tmp_path / "bench" / "short", video[0], "p", forward_track(5), K)
    monkeypatch.setattr(sweep, "_pipeline", lambda cfg: pytest.fail("loaded a model for no valid case"))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"model_root={tmp_path / 'none'}", f"bench={tmp_path / 'bench'}",
                                         f"output_root={tmp_path / 'out'}", "refine=true"])
    cell = sweep.run_cell(cfg)
    row = json.loads((cell / "rows" / "short.json").read_text())
    assert row["status"] == "bad_case" and "refine" in row["error"], row["error"]
    assert json.loads((cell / "done.json").read_text())["bad_cases"] == 1


def test_zeroed_camera_branch_cell_ignores_the_camera_and_scores_motion(model_root, tmp_path, monkeypatch):
    """`zero_camera_branch=true` is its own cell; its model generates the same video for two commands (the random
    root's camera projections are non-zero, so the trained cell's videos differ), and cases with an action get the
    motion-based following columns."""
    import sana_wm.inference.video as video_io

    sweep._PIPELINES.clear()
    # The generated frames as written (x264 does not re-encode noise-like frames bit-identically from run to run,
    # so the mp4s cannot be compared).
    written = {}
    real_write = video_io.write_mp4
    monkeypatch.setattr(video_io, "write_mp4", lambda path, frames, fps: written.__setitem__(
        (Path(path).parent.name, Path(path).stem), frames.copy()) or real_write(path, frames, fps))
    video, _, K = tiny_video_clip(9, 64, 96)
    for name, action in (("fwd", "w-4,s-4"), ("turn", "l-4,j-4")):
        write_case(tmp_path / "bench" / name, video[0], "a room", action_to_c2w(action), K, action=action)
    out = tmp_path / "out"

    def cfg(zeroed: bool):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("eval", overrides=[f"model_root={model_root}", f"bench={tmp_path / 'bench'}",
                                              f"output_root={out}", "device=cpu", "step=1", "cfg_scale=1.0",
                                              f"zero_camera_branch={zeroed}"])

    trained = sweep.run_cell(cfg(False))
    dit = next(iter(sweep._PIPELINES.values())).dit
    assert any(lin.weight.abs().sum() > 0 for lin in dit.camera_output_projections())
    zeroed = sweep.run_cell(cfg(True))
    assert zeroed.name.startswith("ckpt=root,cfg_scale=1.0,step=1,seed=42,camera=zeroed,")
    dit = next(iter(sweep._PIPELINES.values())).dit
    assert all(lin.weight.abs().sum() == 0 and lin.bias.abs().sum() == 0 for lin in dit.camera_output_projections())
    assert not np.array_equal(written[(trained.name, "fwd")], written[(trained.name, "turn")])
    np.testing.assert_array_equal(written[(zeroed.name, "fwd")], written[(zeroed.name, "turn")])

    with open(out / "results.csv") as f:
        rows = {(r["zero_camera_branch"], r["case"]): r for r in csv.DictReader(f)}
    assert set(rows) == {("False", "fwd"), ("False", "turn"), ("True", "fwd"), ("True", "turn")}
    for r in rows.values():
        assert r["status"] == "ok" and r["follow_checks[motion]"] == "2.0"
        assert float(r["follow_passed[motion]"]) / 2 == float(r["follow_rate[motion]"])
    assert rows[("True", "turn")]["follow_rate_turn[motion]"] != "" and rows[("True", "turn")]["follow_rate_move[motion]"] == ""
    assert rows[("True", "fwd")]["follow_rate_move[motion]"] != ""
    passed = sum(float(r["follow_passed[motion]"]) for r in rows.values() if r["zero_camera_branch"] == "True")
    assert f"- `{zeroed.name}`: {passed:g} / 4 checks passed = {passed / 4:.3f}" in (out / "report.md").read_text()
