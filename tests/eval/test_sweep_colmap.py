"""A sweep whose camera columns come from the real COLMAP estimator (no stub): the ground-truth videos of the
synthetic world are passed off as generated, so the requested trajectory scores near zero and a wrong one does not.

Runs in a subprocess: an earlier `decord` import in the test process changes COLMAP's result (see
tests/annotation/test_estimators.py)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from sana_wm.eval.bench_set import write_case

REPO = Path(__file__).resolve().parents[2]
COLMAP = "annotation.estimators:build_estimator"
# `python -m sana_wm.eval …` with the ground-truth pipeline in place of the model.
RUN = ("import runpy, sana_wm.eval.sweep as sweep; from sana_wm.testing.eval import GroundTruthPipeline; "
       "sweep._pipeline = lambda cfg: GroundTruthPipeline(cfg.bench); "
       "runpy.run_module('sana_wm.eval', run_name='__main__', alter_sys=True)")


@pytest.mark.slow
def test_colmap_scores_ground_truth_videos_near_zero_through_the_sweep(tmp_path):
    pytest.importorskip("pycolmap")
    from data.synthetic import make_clip

    # The clip the annotation tests hold COLMAP to (textured room, smooth path, 192 × 336), and its video paired
    # with another clip's path.
    clip = make_clip(0, seed=7, num_frames=33, height=192, width=336, trajectory="smooth")
    other = make_clip(1, seed=7, num_frames=33, height=192, width=336, trajectory="smooth")
    write_case(tmp_path / "bench" / "gt", clip.frames[0], "p", clip.c2w, clip.K, clip.frames, {"fps": 16})
    write_case(tmp_path / "bench" / "wrong_path", clip.frames[0], "p", other.c2w, clip.K, clip.frames, {"fps": 16})
    overrides = [f"model_root={tmp_path}", f"bench={tmp_path / 'bench'}", f"output_root={tmp_path / 'out'}",
                 "num_frames=17"]
    for conv, trials in (("sana_wm", 1), ("cami2v", 1)):  # one thread: COLMAP is deterministic
        overrides += [f"metrics.estimators.{conv}.target={COLMAP}", f"metrics.estimators.{conv}.trials={trials}",
                      f"+metrics.estimators.{conv}.kwargs.name=colmap",
                      f"+metrics.estimators.{conv}.kwargs.num_threads=1"]
    proc = subprocess.run([sys.executable, "-c", RUN, *overrides], capture_output=True, text=True, timeout=900,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "out" / "results.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    gt, wrong = rows["gt"], rows["wrong_path"]
    assert (gt["status"], gt["error"], wrong["status"]) == ("ok", "", "ok")
    val = lambda r, c: float(r[c])
    # measured (17 frames; sana_wm on every 4th): 0.249°, 0.018, 0.019; cami2v 0.105 rad, 0.881, 0.893
    assert val(gt, "rot_err_deg_mean[sana_wm]") < 0.5
    assert val(gt, "trans_err_mean[sana_wm]") < 0.04 and val(gt, "cammc_mean[sana_wm]") < 0.04
    assert val(gt, "rot_err_rad_sum[cami2v]") < 0.2
    assert val(gt, "trans_err_sum[cami2v]") < 1.2 and val(gt, "cammc_sum[cami2v]") < 1.2
    # measured: 2.53°, 0.045, 0.078; cami2v 1.11 rad, 1.72, 2.32 — the same video against another path
    assert val(wrong, "rot_err_deg_mean[sana_wm]") > 5 * val(gt, "rot_err_deg_mean[sana_wm]")
    assert val(wrong, "rot_err_rad_sum[cami2v]") > 5 * val(gt, "rot_err_rad_sum[cami2v]")
    assert val(wrong, "cammc_sum[cami2v]") > 2 * val(gt, "cammc_sum[cami2v]")
    # PSNR of the ground truth against itself: the cap
    assert val(gt, "psnr_db_mean[gt]") == 100.0
