"""Tile sweep of the GDN training backward kernels (`triton_fused.transitions_backward` / `readout_backward`).

At the model's shapes (B = 1, T latent frames, S = 880, H = 20, D = 112, bf16 inputs) times each candidate launch
tile and compares its outputs with the first candidate's (the results must not depend on the tile; bf16 gradients
may differ by rounding flips). Prints a table; `--out` writes JSON. Never asserts speed.

    python bench/gdn_bwd_tiles.py --frames 21
"""

from __future__ import annotations

import argparse

import torch
from common import cuda_time, write_json

from sana_wm.ops.gdn.triton_fused import readout_backward, transitions_backward

TRANSITION_TILES = [dict(block_s=bs, num_warps=w, num_stages=ns)
                    for bs, w, ns in ((128, 8, 1), (64, 8, 1), (64, 4, 1), (64, 8, 2), (128, 8, 2), (128, 4, 1))]
READOUT_TILES = [dict(block_s=bs, block_n=bn, num_warps=w, num_stages=ns)
                 for bs, bn, w, ns in ((64, 32, 4, 2), (128, 128, 8, 2), (64, 64, 8, 2), (64, 64, 4, 2),
                                       (64, 128, 8, 2), (64, 128, 4, 2), (32, 64, 4, 2))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    B, T, S, H, D = 1, args.frames, 880, 20, 112
    gen = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=gen)  # noqa: E731
    k, v, beta = (r(B, T, S, H, D) * D**-0.5).bfloat16(), r(B, T, S, H, D).bfloat16(), r(B, T, S, H).bfloat16()
    q, st, do, st1, do1 = r(B, T, S, H, D).bfloat16(), r(B * H, T, D, D), r(B, T, S, H, D), r(B * H, T, 1, D), r(
        B, T, S, H, 1)
    dA, dU, dz = r(B * H, T, D, D), r(B * H, T, D, D), r(B * H, T, 1, D)
    cases = [
        ("transitions, values", lambda **c: transitions_backward(k, v, beta, dA, dU, **c), TRANSITION_TILES),
        ("transitions, normaliser", lambda **c: transitions_backward(k, None, beta, dA, dz, **c), TRANSITION_TILES),
        ("read-out, Dv = 112", lambda **c: readout_backward(q, st, do, **c), READOUT_TILES),
        ("read-out, Dv = 1", lambda **c: readout_backward(q, st1, do1, **c), READOUT_TILES),
    ]
    rows = []
    print(f"{torch.cuda.get_device_name()}, B={B} T={T} S={S} H={H} D={D}, bf16")
    print("| kernel | tile | ms | max rel. diff vs first tile |\n|---|---|---|---|")
    for name, fn, tiles in cases:
        ref = None
        for tile in tiles:
            try:
                out = [o for o in fn(**tile) if o is not None]
                ms = cuda_time(lambda: fn(**tile), 2, 10)[0]  # noqa: B023
            except Exception as e:  # noqa: BLE001 - e.g. a tile that needs more shared memory than the card has
                print(f"| {name} | {tile} | failed: {type(e).__name__} | |")
                continue
            ref = ref or out
            diff = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(out, ref, strict=True))
            rows.append(dict(kernel=name, **tile, ms=round(ms, 4), rel_diff=diff))
            print(f"| {name} | {tile} | {ms:.3f} | {diff:.1e} |", flush=True)
    write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
