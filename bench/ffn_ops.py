"""The FFN middle's training ops at op level on one GPU, against what they replaced, in one process.

At the model's shapes (bf16, 2h = 13 440 channels, 22×40 latents, 21 / 121 latent frames = 18 480 / 106 480 tokens):
  glu    the GLU's backward with the conv bias folded in (`sana_wm.ops.glu_conv.triton_glu.glu_backward`, one line per
         --glu-tiles entry) against Inductor's compiled adjoint (`naive_glu_backward` under torch.compile: the `cat`
         kernel and the bias reduction the model ran before); `--glu-tiles` is the tile sweep of the Triton kernel
  dgrad  the depthwise 3×3 conv's data gradient as a forward conv with the flipped kernel (`_DepthwiseConv3x3`)
         against cuDNN's data-gradient kernel (`convolution_backward`, data part only)
Medians of CUDA-event timings; prints a table (card, tokens, op, variant, ms, GB/s of the op's minimum traffic, ratio
to the baseline) and writes JSON with --out. Never asserts speed.

    python bench/ffn_ops.py --tokens 18480,106480 --glu-tiles 128x16x64x4,256x16x64x4,64x16x256x4
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from common import cuda_time, report

H, W, C2 = 22, 40, 13440


def parse_tiles(spec: str) -> list[dict]:
    """'ROWSxRBxBLOCK_CxWARPS,...' → [{'rows', 'rb', 'block_c', 'num_warps'}, ...] (the kernel's keyword tile).

    >>> parse_tiles("64x16x256x4")
    [{'rows': 64, 'rb': 16, 'block_c': 256, 'num_warps': 4}]
    """
    tiles = []
    for item in filter(None, spec.split(",")):
        parts = item.lower().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--glu-tiles entry {item!r}: expected ROWSxRBxBLOCK_CxWARPS, four positive integers")
        rows, rb, block_c, warps = map(int, parts)
        if rows % rb:
            raise ValueError(f"--glu-tiles entry {item!r}: ROWS ({rows}) must be a multiple of RB ({rb})")
        tiles.append(dict(rows=rows, rb=rb, block_c=block_c, num_warps=warps))
    return tiles


def glu_rows(N: int, tiles: list[dict], reps: int, card: str) -> list[dict]:
    from sana_wm.ops.glu_conv import naive_glu_backward
    from sana_wm.ops.glu_conv.triton_glu import glu_backward

    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(N, C2, device="cuda", generator=g).bfloat16()
    b = torch.randn(C2, device="cuda", generator=g).bfloat16()
    dout = torch.randn(N, C2 // 2, device="cuda", generator=g).bfloat16()
    gbytes = (z.numel() + dout.numel() + z.numel()) * 2 / 1e9  # read z and dout, write dz
    inductor = torch.compile(naive_glu_backward)
    base = cuda_time(lambda: inductor(z, b, dout), 3, reps)[0]
    ref = inductor(z, b, dout)
    out = [dict(card=card, tokens=N, op="glu backward", variant="Inductor (cat + bias reduction)", ms=base)]
    for tile in tiles:
        dz, db = glu_backward(z, b, dout, **tile)
        err = ((dz.float() - ref[0].float()).norm() / ref[0].float().norm()).item()
        ms = cuda_time(lambda tile=tile: glu_backward(z, b, dout, **tile), 3, reps)[0]
        label = "Triton {rows}x{rb}x{block_c}, {num_warps} warps".format(**tile)
        out.append(dict(card=card, tokens=N, op="glu backward", variant=label, ms=ms, rel_err=err))
    for r in out:
        r.update(ms=round(r["ms"], 3), gb_per_s=round(gbytes / (r["ms"] * 1e-3)), speedup=round(base / r["ms"], 2))
    return out


def dgrad_rows(N: int, reps: int, card: str) -> list[dict]:
    frames = N // (H * W)
    g = torch.Generator(device="cuda").manual_seed(1)
    dy = torch.randn(frames, H, W, C2, device="cuda", generator=g).bfloat16().permute(0, 3, 1, 2)  # channels-last
    img = torch.randn(frames, H, W, C2, device="cuda", generator=g).bfloat16().permute(0, 3, 1, 2)
    w = (0.3 * torch.randn(C2, 1, 3, 3, device="cuda", generator=g)).bfloat16()
    gbytes = 2 * dy.numel() * 2 / 1e9  # read dy, write dx

    def cudnn():
        return torch.ops.aten.convolution_backward(dy, img, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], C2,
                                                   [True, False, False])[0]

    def flipped():
        return F.conv2d(dy, w.flip(-2, -1), None, padding=1, groups=C2)

    ref = cudnn().float()
    err = ((flipped().float() - ref).norm() / ref.norm()).item()
    base = cuda_time(cudnn, 3, reps)[0]
    ms = cuda_time(flipped, 3, reps)[0]
    return [dict(card=card, tokens=N, op="depthwise data gradient", variant=v, ms=round(t, 3),
                 gb_per_s=round(gbytes / (t * 1e-3)), speedup=round(base / t, 2), **extra)
            for v, t, extra in (("cuDNN dgrad", base, {}), ("flipped-kernel forward conv", ms, dict(rel_err=err)))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", default="18480,106480", help="token counts, multiples of 880 (22×40 per frame)")
    ap.add_argument("--ops", default="glu,dgrad")
    ap.add_argument("--glu-tiles", default="128x16x64x4",
                    help="ROWSxRBxBLOCK_CxWARPS,... (triton_glu.TILE, the kernel's default, is 128x16x64x4)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    tiles = parse_tiles(args.glu_tiles)
    card = torch.cuda.get_device_name()
    rows = []
    for N in (int(n) for n in args.tokens.split(",")):
        if N % (H * W):
            raise ValueError(f"--tokens {N}: must be a multiple of {H * W} (whole 22×40 frames)")
        if "glu" in args.ops:
            rows += glu_rows(N, tiles, args.reps, card)
        if "dgrad" in args.ops:
            rows += dgrad_rows(N, args.reps, card)
        for r in rows:
            if r["tokens"] == N:
                print(json.dumps(r), flush=True)
        torch.cuda.empty_cache()
    return report(rows, dict(card="card", tokens="tokens", op="op", variant="variant", ms="ms", gb_per_s="GB/s",
                             speedup="×"), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
