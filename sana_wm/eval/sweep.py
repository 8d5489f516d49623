"""One evaluation cell (a checkpoint × sampling setting over a benchmark set), resumable, and the sweep's report.

Layout under ``output_root``::

    cells/<cell>/settings.json     the cell's settings
    cells/<cell>/<case>.mp4        generated video; <case>_c2w.npy, <case>_intrinsics.npy aligned with it
    cells/<cell>/rows/<case>.json  the case's result row (metrics, or the error)
    cells/<cell>/done.json         written last: the cell is finished and is skipped by a rerun
    results.csv                    every row of every cell (one row per cell × case; tidy: settings + metrics)
    report.md                      per-setting means, per-trajectory-type means, errors, skipped metrics, plots
    plots/*.png                    metric vs setting, per-trajectory-type bars (when matplotlib is installed)

A cell name is readable (``ckpt=<stem>,cfg_scale=…,step=…,seed=…``) plus a hash of every setting, so two
settings never share a folder and a rerun with the same settings finds its folder. Cases already holding a row
are not regenerated (an interrupted cell resumes per case). Pipelines are cached per (model root, checkpoint,
refiner, device), so the jobs of a Hydra multirun (run one after another in one process) load each model once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from sana_wm.eval.bench_set import BenchCase, load_bench_set
from sana_wm.eval.estimator import camera_accuracy, load_estimator
from sana_wm.eval.quality import (
    Skipped,
    fid,
    fvd,
    gt_metrics,
    load_i3d,
    load_inception,
    load_lpips,
    revisit_metrics,
    temporal_windows,
)
from sana_wm.inference.pipeline import plan_trajectory

log = logging.getLogger(__name__)

__all__ = ["SETTING_KEYS", "cell_name", "run_cell", "write_report"]

#: The sweepable settings: they name the cell and become columns of results.csv. ``zero_camera_branch``: generate
#: with the DiT's camera output projections zeroed (:meth:`sana_wm.models.SanaWM.zero_camera_branch`), the
#: no-camera control that says how much of the camera accuracy the camera branch is responsible for.
SETTING_KEYS = ("ckpt", "cfg_scale", "step", "seed", "sampler", "flow_shift", "refine", "num_frames",
                "zero_camera_branch")

_PIPELINES: dict[tuple, Any] = {}


def _settings(cfg) -> dict[str, Any]:
    return {k: (None if cfg.get(k) is None else cfg.get(k)) for k in SETTING_KEYS}


def cell_name(settings: dict[str, Any]) -> str:
    ckpt = settings.get("ckpt")
    stem = "root" if ckpt is None else Path(str(ckpt)).stem
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    readable = f"ckpt={stem},cfg_scale={settings['cfg_scale']},step={settings['step']},seed={settings['seed']}"
    if settings.get("zero_camera_branch"):
        readable += ",camera=zeroed"
    return f"{readable},{digest}".replace(os.sep, "_")


def _pipeline(cfg):
    from sana_wm.inference.pipeline import SanaWMPipeline

    zeroed = bool(cfg.get("zero_camera_branch"))
    key = (str(cfg.model_root), str(cfg.ckpt), bool(cfg.refine), str(cfg.device), zeroed)
    if key not in _PIPELINES:
        _PIPELINES.clear()  # one model in memory at a time
        pipe = SanaWMPipeline.from_model_root(
            cfg.model_root, checkpoint=cfg.ckpt, use_refiner=bool(cfg.refine), device=cfg.device)
        if zeroed:
            log.info("camera branch zeroed: %d tensors", pipe.dit.zero_camera_branch())
        _PIPELINES[key] = pipe
    return _PIPELINES[key]


def _estimators(metrics_cfg) -> dict[str, Any]:
    """convention → (estimator, interval, trials) or Skipped."""
    out: dict[str, Any] = {}
    for conv in metrics_cfg.conventions:
        spec = (metrics_cfg.estimators or {}).get(conv)
        if spec is None or spec.get("target") is None:
            out[conv] = Skipped(f"camera[{conv}]", f"no pose estimator configured (metrics.estimators.{conv})")
            continue
        kwargs = OmegaConf.to_container(spec.kwargs) if spec.get("kwargs") is not None else {}
        out[conv] = (load_estimator(spec.target, kwargs), int(spec.get("interval", 1)), int(spec.get("trials", 1)))
    return out


def _camera_rows(video, result, fps: float, estimators: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    row: dict[str, float] = {}
    problems: list[str] = []
    for conv, est in estimators.items():
        if isinstance(est, Skipped):
            continue
        estimator, interval, trials = est
        try:
            row.update(camera_accuracy(estimator, video, result.c2w, result.intrinsics, fps, interval=interval,
                                       trials=trials, conventions=(conv,)))
        except Exception as err:  # an estimator failing on one video is reported for that case only
            problems.append(f"estimator[{conv}]: {type(err).__name__}: {err}")
    return row, problems


def _motion_row(video: np.ndarray, action: str, frame_offset: int) -> dict[str, float]:
    """Motion-based camera following (:mod:`sana_wm.inference.motion`): did each commanded turn and forward/back
    move show in the pixels? Needs no pose estimator, so it scores videos too small or too blurry for one."""
    from sana_wm.inference.motion import camera_following, following_rate

    rate = following_rate(camera_following(video, action, frame_offset=frame_offset))
    if not rate["checks"]:
        return {"follow_checks[motion]": 0.0}
    row = {"follow_rate[motion]": rate["rate"], "follow_checks[motion]": float(rate["checks"]),
           "follow_passed[motion]": float(rate["passed"])}
    row.update({f"follow_rate_{kind}[motion]": v for kind, v in rate["by_kind"].items()})
    return row


def _crop_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Ground-truth frames resized and centre-cropped like the pipeline's first image."""
    from sana_wm.inference.video import resize_center_crop

    return np.stack([resize_center_crop(f, height, width)[0] for f in frames])


def _evaluate_case(pipe, case: BenchCase, cfg, cell_dir: Path, estimators, lpips_fn) -> dict[str, Any]:
    from sana_wm.inference.video import load_image, write_mp4

    num_frames = int(cfg.num_frames) if cfg.num_frames is not None else len(case.c2w)
    result = pipe.generate(
        load_image(case.image_path), case.prompt, case.c2w, case.intrinsics, num_frames=num_frames, fps=case.fps,
        num_steps=int(cfg.step), cfg_scale=float(cfg.cfg_scale), flow_shift=cfg.flow_shift, sampler=cfg.sampler,
        seed=int(cfg.seed), refine=bool(cfg.refine), progress=False,
    )
    video = result.video
    write_mp4(cell_dir / f"{case.name}.mp4", video, case.fps)
    np.save(cell_dir / f"{case.name}_c2w.npy", result.c2w)
    np.save(cell_dir / f"{case.name}_intrinsics.npy", result.intrinsics)
    row: dict[str, Any] = {"frames": len(video), "notices": " | ".join(result.notices)}
    cam, problems = _camera_rows(video, result, case.fps, estimators)
    row.update(cam)
    if case.action is not None:
        row.update(_motion_row(video, case.action, result.frame_offset))
    row.update(revisit_metrics(video, result.c2w, lpips_fn, **OmegaConf.to_container(cfg.metrics.revisit)))
    if case.gt_video is not None:
        per_frame = gt_metrics(video, _crop_frames(
            case.gt_video[result.frame_offset : result.frame_offset + len(video)], pipe.height, pipe.width), lpips_fn)
        row.update({f"{k}_mean[gt]": float(np.mean(v)) for k, v in per_frame.items()})
        row.update(temporal_windows(per_frame, case.fps, float(cfg.metrics.window_s)))
    if problems:
        row["status"], row["error"] = "partial", "; ".join(problems)
    return row


def run_cell(cfg) -> Path:
    """Evaluate one setting over the benchmark set; returns the cell folder. Skips a finished cell."""
    root = Path(cfg.output_root).resolve()
    settings = _settings(cfg)
    cell_dir = root / "cells" / cell_name(settings)
    if (cell_dir / "done.json").is_file():
        log.info("cell %s is finished; skipped", cell_dir.name)
        write_report(root)
        return cell_dir
    (cell_dir / "rows").mkdir(parents=True, exist_ok=True)
    (cell_dir / "settings.json").write_text(json.dumps(settings, indent=1, default=str) + "\n")
    bench = load_bench_set(cfg.bench, num_frames=cfg.num_frames)
    base = {"cell": cell_dir.name, **settings}
    bad = {e.name: e.reason for e in bench.errors}
    for case in bench.cases:  # the pipeline's own input check, before any model is loaded
        try:
            plan_trajectory(case.c2w, case.intrinsics, len(case.c2w), refine=bool(cfg.refine),
                            clip_to_trajectory=False)
        except (TypeError, ValueError) as err:
            bad[case.name] = str(err)
    for name, reason in bad.items():  # bad cases: one row each, the sweep continues
        _write_row(cell_dir, name, {**base, "case": name, "status": "bad_case", "error": reason})
    cases = [c for c in bench.cases if c.name not in bad]
    skipped = []
    estimators = _estimators(cfg.metrics)
    skipped += [e for e in estimators.values() if isinstance(e, Skipped)]
    lpips_fn = load_lpips(cfg.metrics.lpips.backbone_weights, cfg.metrics.lpips.linear_weights, cfg.metrics.lpips.net)
    if isinstance(lpips_fn, Skipped):
        skipped.append(lpips_fn)
    todo = [c for c in cases if not (cell_dir / "rows" / f"{c.name}.json").is_file()]
    if todo:
        pipe = _pipeline(cfg)
    for case in todo:
        row = {**base, "case": case.name, "trajectory_type": case.trajectory_type, "status": "ok", "error": ""}
        try:
            row.update(_evaluate_case(pipe, case, cfg, cell_dir, estimators, lpips_fn))
        except Exception as err:  # one failing case must not end the sweep; the row says why
            log.exception("case %s failed", case.name)
            row.update(status="failed", error=f"{type(err).__name__}: {err}")
        _write_row(cell_dir, case.name, row)
    set_metrics = {}
    real, fake = _cell_videos(cfg, cell_dir, cases)
    fvd_value = fvd(real, fake, load_i3d(cfg.metrics.i3d_torchscript), int(cfg.metrics.fvd_clip_frames))
    fid_value = fid(real, fake, load_inception(cfg.metrics.fid_inception_torchscript))
    for name, value in ((f"fvd[i3d,{int(cfg.metrics.fvd_clip_frames)}f,224px]", fvd_value),
                        ("fid[inception,frames]", fid_value)):
        if isinstance(value, Skipped):
            skipped.append(value)
        else:
            set_metrics[name] = value
    (cell_dir / "done.json").write_text(json.dumps(
        {"cases": len(cases), "bad_cases": len(bad), "set_metrics": set_metrics,
         "skipped_metrics": [{"metric": s.metric, "reason": s.reason} for s in skipped]}, indent=1) + "\n")
    write_report(root)
    return cell_dir


def _cell_videos(cfg, cell_dir: Path, cases: list[BenchCase]) -> tuple[list, list]:
    """The cell's generated videos (re-read from their mp4s) and the cases' ground truth, for FVD and FID."""
    from sana_wm.inference.video import read_mp4

    real, fake = [], []
    for case in cases:
        path = cell_dir / f"{case.name}.mp4"
        if case.gt_video is not None and path.is_file():
            fake.append(read_mp4(path)[0])
            offset = 1 if cfg.refine else 0  # the refiner drops the sink frame
            gt = case.gt_video[offset : offset + len(fake[-1])]
            real.append(_crop_frames(gt, *fake[-1].shape[1:3]))
    return real, fake


def _write_row(cell_dir: Path, case: str, row: dict[str, Any]) -> None:
    path = cell_dir / "rows" / f"{case}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, default=str) + "\n")
    os.replace(tmp, path)


def _rows(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("cells/*/rows/*.json"))]


_FIRST = ("cell", *SETTING_KEYS, "case", "trajectory_type", "status", "error", "frames", "notices")


def _metric_columns(rows) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k, v in r.items() if k not in _FIRST and k not in cols and isinstance(v, (int, float))
                 and not isinstance(v, bool)]
    return cols


def _fmt(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def write_report(root: str | os.PathLike) -> Path:
    """(Re)write results.csv (and results.parquet with pyarrow), report.md and plots from every cell's rows."""
    root = Path(root)
    rows = _rows(root)
    metrics = _metric_columns(rows)
    columns = list(_FIRST) + metrics + sorted({k for r in rows for k in r} - set(_FIRST) - set(metrics))
    with open(root / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), root / "results.parquet")
    except ImportError:
        pass

    ok = [r for r in rows if r.get("status") in ("ok", "partial")]
    by_cell: dict[str, list] = defaultdict(list)
    by_type: dict[tuple[str, str], list] = defaultdict(list)
    for r in ok:
        by_cell[r["cell"]].append(r)
        by_type[(r["cell"], r.get("trajectory_type", ""))].append(r)
    mean = lambda rs, m: float(np.mean([r[m] for r in rs if m in r])) if any(m in r for r in rs) else float("nan")
    lines = ["# Evaluation report", "", f"{len(rows)} rows, {len(ok)} evaluated cases, "
             f"{len(by_cell)} cells. Table: `results.csv`. Each mean is over the cases that have the column (a "
             "case without ground truth, or whose estimator failed, leaves those columns empty).", "",
             "## Mean per setting", ""]
    head = ["cell", "cases", *metrics]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell, rs in sorted(by_cell.items()):
        lines.append("| " + " | ".join([cell, str(len(rs))] + [_fmt(mean(rs, m)) for m in metrics]) + " |")
    lines += ["", "## Mean per trajectory type", ""]
    head = ["cell", "trajectory_type", "cases", *metrics]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (cell, kind), rs in sorted(by_type.items()):
        lines.append("| " + " | ".join([cell, kind, str(len(rs))] + [_fmt(mean(rs, m)) for m in metrics]) + " |")
    lines += ["", "## Camera following from the pixels (motion checks pooled over cases)", ""]
    pooled = []
    for cell, rs in sorted(by_cell.items()):
        checks = sum(r.get("follow_checks[motion]", 0.0) for r in rs)
        if checks:
            passed = sum(r.get("follow_passed[motion]", 0.0) for r in rs)
            pooled.append(f"- `{cell}`: {passed:g} / {checks:g} checks passed = {passed / checks:.3f}")
    lines += pooled or ["no case with an action"]
    problems = [r for r in rows if r.get("error")]
    lines += ["", "## Cases with problems", ""]
    lines += [f"- `{r['cell']}` / `{r['case']}` ({r['status']}): {r['error']}" for r in problems] or ["none"]
    lines += ["", "## Set-level metrics", ""]
    set_lines = []
    for done in sorted(root.glob("cells/*/done.json")):
        for name, value in json.loads(done.read_text()).get("set_metrics", {}).items():
            set_lines.append(f"- `{done.parent.name}` {name}: {_fmt(value)}")
    lines += set_lines or ["none"]
    lines += ["", "## Skipped metrics", ""]
    skipped = set()
    for done in sorted(root.glob("cells/*/done.json")):
        for s in json.loads(done.read_text()).get("skipped_metrics", []):
            skipped.add(f"- {s['metric']}: {s['reason']}")
    lines += sorted(skipped) or ["none"]
    lines += ["", "## Plots", "", *_plots(root, ok, metrics)]
    (root / "report.md").write_text("\n".join(lines) + "\n")
    return root / "report.md"


def _plots(root: Path, rows: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    """Metric vs each swept setting (means over cases) and per-trajectory-type bars; or why none were drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["not drawn: matplotlib is not installed in this environment (the table has every number)"]
    out_dir = root / "plots"
    out_dir.mkdir(exist_ok=True)
    lines = []

    def draw(metric: str, key: str, kind: str, title: str) -> None:
        groups: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            if metric in r:
                groups[str(r.get(key))].append(r[metric])
        if not groups:
            return
        names = sorted(groups)
        fig, ax = plt.subplots(figsize=(4, 3))
        if kind == "line":
            ax.plot(names, [np.mean(groups[n]) for n in names], marker="o")
        else:
            ax.bar(names, [np.mean(groups[n]) for n in names])
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        fig.tight_layout()
        name = f"{metric}_by_{key}.png".replace("[", "_").replace("]", "").replace("=", "")
        fig.savefig(out_dir / name)
        plt.close(fig)
        lines.append(f"![{title}](plots/{name})")

    swept = [k for k in SETTING_KEYS if len({str(r.get(k)) for r in rows}) > 1]
    for metric in metrics:
        for key in swept:
            draw(metric, key, "line", f"{metric} vs {key}")
        draw(metric, "trajectory_type", "bar", f"{metric} by trajectory type")
    return lines
