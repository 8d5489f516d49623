"""Pi3X throughput and peak GPU memory vs clip length (full size, random weights; no downloads).

    PYTHONPATH=. python3 bench/annotation_pi3.py [--frames 8 16 32 64 128] [--clips 64 240]
        [--frame-budget 64 --overlap 8] [--height 704 --width 1280] [--variant pi3x] [--repeats 2]

Two tables, one JSON line per row (printed as it is measured, so a run cut short keeps its rows):

* ``forward``: one forward pass of N frames already at the model's input size (704×1280 → 364×686 by the
  reference input rule), trunk under bf16 autocast, heads in fp32 — as ``predict`` runs one chunk. One
  warm-up, then the best of ``--repeats``. A length that does not fit prints ``"oom": true``.
* ``predict``: ``annotation.models.pi3.predict`` end to end on N uint8 frames of 704×1280 — CPU resize
  (LANCZOS), chunks of ``--frame-budget`` frames overlapping by ``--overlap``, each chunk's Sim(3) fit on
  the overlap, intrinsics from rays — as the Pi3X estimator runs a clip. One warm-up on the first
  chunk's length, then one timed run. With random weights the chunk stitching may meet degenerate
  points; such a row prints the error instead of a time.

Peak memory is ``torch.cuda.max_memory_allocated`` over the row, the fp32 weights included (≈ 3.7 GiB;
the estimator keeps them in fp32 too, autocast makes the bf16 copies). The model is built directly on the
GPU. Expected on one H100: about two minutes for the defaults (estimated, not yet measured).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from annotation.models.pi3 import build_pi3, predict, working_size


def _row(**kw) -> dict:
    print(json.dumps(kw), flush=True)
    return kw


def _forward_rows(model, lengths, hw, repeats, dev) -> None:
    h, w = hw
    for n in lengths:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            x = torch.rand(1, n, 3, h, w, device=dev)
            best = float("inf")
            for i in range(repeats + 1):
                torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    out = model(x)
                torch.cuda.synchronize()
                if i:
                    best = min(best, time.perf_counter() - t)
                del out
            del x
        except torch.OutOfMemoryError:
            _row(table="forward", frames=n, input_hw=[h, w], oom=True)
            continue
        _row(table="forward", frames=n, input_hw=[h, w], seconds=round(best, 4), frames_per_s=round(n / best, 2),
             peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))


def _predict_rows(model, lengths, size, budget, overlap, dev) -> None:
    rng = np.random.default_rng(0)
    for n in lengths:
        frames = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
        torch.cuda.empty_cache()
        try:
            predict(model, frames[: min(n, budget)], frame_budget=budget, overlap=overlap, device=dev)  # warm-up
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
            t = time.perf_counter()
            pred = predict(model, frames, frame_budget=budget, overlap=overlap, device=dev)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t
        except torch.OutOfMemoryError:
            _row(table="predict", frames=n, frame_budget=budget, overlap=overlap, oom=True)
            continue
        except (ValueError, np.linalg.LinAlgError) as err:  # random weights: a degenerate stitch
            _row(table="predict", frames=n, frame_budget=budget, overlap=overlap, error=str(err)[:200])
            continue
        _row(table="predict", frames=n, input_hw=list(size), working_hw=list(pred.working_hw),
             frame_budget=budget, overlap=overlap, chunks=len(pred.chunks), seconds=round(seconds, 3),
             frames_per_s=round(n / seconds, 2), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
             finite=bool(np.isfinite(pred.c2w).all() and np.isfinite(pred.K).all()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="*", default=[8, 16, 32, 64, 128], help="forward-pass lengths")
    p.add_argument("--clips", type=int, nargs="*", default=[64, 240], help="predict() clip lengths")
    p.add_argument("--frame-budget", type=int, default=64)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--variant", default="pi3x")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    dev = torch.device("cuda")
    t = time.perf_counter()
    with torch.device(dev):
        model = build_pi3(args.variant).eval()
    torch.cuda.synchronize()
    hw = working_size(args.height, args.width)
    _row(device=torch.cuda.get_device_name(), torch=torch.__version__, variant=args.variant,
         params=sum(q.numel() for q in model.parameters()), input_hw=[args.height, args.width], working_hw=list(hw),
         build_seconds=round(time.perf_counter() - t, 1), weights_gib=round(torch.cuda.memory_allocated() / 2**30, 2))
    _forward_rows(model, args.frames, hw, args.repeats, dev)
    _predict_rows(model, args.clips, (args.height, args.width), args.frame_budget, args.overlap, dev)


if __name__ == "__main__":
    main()
