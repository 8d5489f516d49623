"""Pi3X throughput and peak memory vs clip length (full size, random weights; no downloads).

    python bench/annotation_pi3.py [--frames 8 16 32 64 128] [--height 704 --width 1280] [--variant pi3x]

Frames are taken at the reference resolution and resized by the model's input rule (704×1280 → 364×686);
each length runs one warm-up and then the best of ``--repeats`` forward passes under bf16 autocast
(trunk bf16, heads fp32), as ``annotation.models.pi3.predict`` runs a chunk.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from annotation.models.pi3 import build_pi3, working_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--variant", default="pi3x")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    dev = torch.device("cuda")
    model = build_pi3(args.variant).to(dev).eval()
    h, w = working_size(args.height, args.width)
    rows = []
    for n in args.frames:
        x = torch.rand(1, n, 3, h, w, device=dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        best = float("inf")
        try:
            for i in range(args.repeats + 1):
                torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    out = model(x)
                torch.cuda.synchronize()
                if i:
                    best = min(best, time.perf_counter() - t)
                del out
        except torch.OutOfMemoryError:
            rows.append({"frames": n, "oom": True})
            print(json.dumps(rows[-1]), flush=True)
            continue
        rows.append({"frames": n, "input_hw": [h, w], "seconds": round(best, 4), "frames_per_s": round(n / best, 2),
                     "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "variant": args.variant,
                      "params": sum(q.numel() for q in model.parameters())}))


if __name__ == "__main__":
    main()
