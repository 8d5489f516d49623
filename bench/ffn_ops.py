"""The FFN middle's training ops at op level on one GPU, against what they replaced, in one process.

At the model's shapes (bf16, 2h = 13 440 channels, 22×40 latents, 21 / 121 latent frames = 18 480 / 106 480 tokens):
  glu    the GLU's backward with the conv bias folded in (`sana_wm.ops.glu_conv.triton_glu.glu_backward`, one line per
         --glu-tiles entry) against Inductor's compiled adjoint (`naive_glu_backward` under torch.compile: the `cat`
         kernel and the bias reduction the model ran before); `--glu-tiles` is the tile sweep of the Triton kernel
  dgrad  the depthwise 3×3 conv's data gradient as a forward conv with the flipped kernel (`_DepthwiseConv3x3`)
         against cuDNN's data-gradient kernel (`convolution_backward`, data part only)
  dw     the Triton depthwise 3×3 conv (`sana_wm.ops.glu_conv.triton_dwconv`) against cuDNN: the forward (with bias;
         one line per --dw-tiles entry) and the weight + bias gradient (one line per --dw-wgrad-tiles entry)
Medians of CUDA-event timings; prints a table (card, tokens, op, variant, ms, GB/s of the op's minimum traffic, ratio
to the baseline) and writes JSON with --out. Never asserts speed.

    python bench/ffn_ops.py --tokens 18480,106480 --glu-tiles 128x16x64x4,256x16x64x4,64x16x256x4
    python bench/ffn_ops.py --ops dw --dw-tiles 32x64x2x0,0x32x4x22 --dw-wgrad-tiles 32x64x4x0,64x32x4x0
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from common import cuda_time, report

H, W, C2 = 22, 40, 13440


def parse_ints(spec: str, names: tuple[str, ...], flag: str) -> list[dict]:
    """'AxBxC,...' → [{names[0]: A, ...}, ...]; every field a non-negative integer (a tile sweep's entries).

    >>> parse_ints("32x128x4", ("bp", "bc", "num_warps"), "--dw-tiles")
    [{'bp': 32, 'bc': 128, 'num_warps': 4}]
    """
    out = []
    for item in filter(None, spec.split(",")):
        parts = item.lower().split("x")
        if len(parts) != len(names) or not all(p.isdigit() for p in parts):
            raise ValueError(f"{flag} entry {item!r}: expected {'x'.join(n.upper() for n in names)}, integers")
        out.append(dict(zip(names, map(int, parts), strict=True)))
    return out


def parse_tiles(spec: str) -> list[dict]:
    """'ROWSxRBxBLOCK_CxWARPS,...' → [{'rows', 'rb', 'block_c', 'num_warps'}, ...] (the GLU kernel's keyword tile).

    >>> parse_tiles("64x16x256x4")
    [{'rows': 64, 'rb': 16, 'block_c': 256, 'num_warps': 4}]
    """
    tiles = parse_ints(spec, ("rows", "rb", "block_c", "num_warps"), "--glu-tiles")
    for t in tiles:
        if min(t.values()) <= 0 or t["rows"] % t["rb"]:
            raise ValueError(f"--glu-tiles entry {t}: positive integers, ROWS a multiple of RB")
    return tiles


def dw_rows(N: int, fwd_tiles: list[dict], wgrad_tiles: list[dict], reps: int, card: str) -> list[dict]:
    from sana_wm.ops.glu_conv.triton_dwconv import depthwise3x3, depthwise3x3_wgrad

    frames = N // (H * W)
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(frames, H, W, C2, device="cuda", generator=g).bfloat16()
    dy = torch.randn(frames, H, W, C2, device="cuda", generator=g).bfloat16()
    w = (0.3 * torch.randn(C2, 1, 3, 3, device="cuda", generator=g)).bfloat16()
    taps = w.reshape(C2, 9).t().float().contiguous()
    xc, dyc = x.permute(0, 3, 1, 2), dy.permute(0, 3, 1, 2)  # the NHWC memory as channels-last NCHW, as the model has
    gbytes = 2 * x.numel() * 2 / 1e9  # read x (or dy), write y; the weight gradient reads x and dy

    def rel(a, r):
        return ((a.float() - r.float()).norm() / r.float().norm()).item()

    out = []
    # Without bias, as the compiled model runs it (Inductor moves a conv's bias into the next element-wise kernel;
    # cuDNN's kernel with the bias fused is about twice as slow at this shape).
    ref = F.conv2d(xc, w, None, padding=1, groups=C2).permute(0, 2, 3, 1)
    base = cuda_time(lambda: F.conv2d(xc, w, None, padding=1, groups=C2), 3, reps)[0]
    out.append(dict(op="depthwise forward", variant="cuDNN", ms=base, base=base))
    for t in fwd_tiles:
        err = rel(depthwise3x3(x, taps, None, **t), ref)
        ms = cuda_time(lambda t=t: depthwise3x3(x, taps, None, **t), 3, reps)[0]
        label = ("Triton rows {rows}x{bc}, {num_warps} warps" if t["rows"] else
                 "Triton taps {bp}x{bc}, {num_warps} warps").format(**t)
        out.append(dict(op="depthwise forward", variant=label, ms=ms, base=base, rel_err=err, tile=t))

    def cudnn_wgrad():
        return torch.ops.aten.convolution_backward(dyc, xc, w, [C2], [1, 1], [1, 1], [1, 1], False, [0, 0], C2,
                                                   [False, True, True])

    _, rw, rb = cudnn_wgrad()
    base = cuda_time(cudnn_wgrad, 3, reps)[0]
    out.append(dict(op="depthwise weight+bias gradient", variant="cuDNN", ms=base, base=base))
    for t in wgrad_tiles:
        got = depthwise3x3_wgrad(x, dy, **t)
        err = max(rel(got[:9].t().reshape(C2, 1, 3, 3), rw), rel(got[9], rb))
        ms = cuda_time(lambda t=t: depthwise3x3_wgrad(x, dy, **t), 3, reps)[0]
        out.append(dict(op="depthwise weight+bias gradient",
                        variant="Triton {bp}x{bc}, {num_warps} warps, {splits} splits".format(**t), ms=ms, base=base,
                        rel_err=err, tile=t))
    for r in out:
        ms, base = r["ms"], r.pop("base")
        r.update(card=card, tokens=N, ms=round(ms, 3), gb_per_s=round(gbytes / (ms * 1e-3)),
                 speedup=round(base / ms, 2))
    return out


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
    ap.add_argument("--dw-tiles", default="32x128x4x0",
                    help="BPxBCxWARPSxROWS,... (triton_dwconv.FWD_TILE; ROWS > 0: the row-sliding kernel)")
    ap.add_argument("--dw-wgrad-tiles", default="32x64x4x0",
                    help="BPxBCxWARPSxSPLITS,... (triton_dwconv.WGRAD_TILE; 0 splits = from the SM count)")
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
        if "dw" in args.ops.split(","):
            rows += dw_rows(N, parse_ints(args.dw_tiles, ("bp", "bc", "num_warps", "rows"), "--dw-tiles"),
                            parse_ints(args.dw_wgrad_tiles, ("bp", "bc", "num_warps", "splits"), "--dw-wgrad-tiles"),
                            args.reps, card)
        for r in rows:
            if r["tokens"] == N:
                print(json.dumps(r), flush=True)
        torch.cuda.empty_cache()
    return report(rows, dict(card="card", tokens="tokens", op="op", variant="variant", ms="ms", gb_per_s="GB/s",
                             speedup="×"), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
