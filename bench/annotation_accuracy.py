"""Pose-estimator accuracy on held-out synthetic-world clips with exact poses and intrinsics.

    python bench/annotation_accuracy.py [--estimator colmap] [--weights DIR] [--clips 0 1 2 3]
        [--frames 33 --height 288 --width 512 --seed 7 --trajectory smooth] [--known-K] [--threads 1]
        [--window 0 --overlap 16]

Per clip: ATE (RMS camera-centre error after one Sim(3) alignment, metres), absolute rotation error after
that alignment (mean / max, degrees), frame-to-frame relative rotation error (degrees), focal error (%)
and the seconds the estimator took. Clips are rendered by ``data.synthetic`` (no downloads). With
``--window N`` the clip is estimated in windows of N frames overlapping by ``--overlap`` and stitched
(``annotation.windows``, as the pipeline's ``window.*`` options do); the row then lists each overlap's fit.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from annotation.estimators import EstimationError, build_estimator
from annotation.geometry import trajectory_errors
from annotation.windows import WindowConfig, estimate_windows
from data.synthetic import make_clip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--estimator", default="colmap")
    p.add_argument("--weights", default=None)
    p.add_argument("--clips", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--height", type=int, default=288)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--trajectory", default="smooth")
    p.add_argument("--known-K", action="store_true", help="give the estimator the true intrinsics")
    p.add_argument("--threads", type=int, default=1, help="COLMAP threads (1 = deterministic)")
    p.add_argument("--window", type=int, default=0, help="window length in frames (0 = the whole clip)")
    p.add_argument("--overlap", type=int, default=16)
    args = p.parse_args()
    windows = WindowConfig(frames=args.window, overlap=args.overlap)
    windows.check()
    options = {"num_threads": args.threads} if args.estimator == "colmap" else {}
    est = build_estimator(args.estimator, args.weights, **options)
    for i in args.clips:
        clip = make_clip(i, seed=args.seed, num_frames=args.frames, height=args.height, width=args.width,
                         trajectory=args.trajectory)
        t = time.perf_counter()
        row = {"clip": clip.key, "estimator": est.name, "known_K": args.known_K}
        try:
            res = estimate_windows(est, clip.frames, clip.meta["fps"], clip.K if args.known_K else None, windows)
        except EstimationError as err:
            print(json.dumps({**row, "failed": err.reason, "detail": str(err)[-400:]}), flush=True)
            continue
        e = trajectory_errors(res.c2w, clip.c2w)
        row.update({k: round(v, 4) for k, v in e.items()})
        row.update(focal_err_pct=round(100 * float(np.abs(res.K[:, 0, 0] / clip.K[0, 0] - 1).mean()), 3),
                   seconds=round(time.perf_counter() - t, 2))
        if "stitch" in res.info:
            row.update(windows=res.info["windows"], stitch=[{k: round(v, 4) if isinstance(v, float) else v
                                                              for k, v in f.items()} for f in res.info["stitch"]])
        else:
            row.update(info=res.info)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
