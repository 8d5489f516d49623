"""The two fused prologue ops against Inductor's compiled PyTorch composition, op level, on one GPU.

At the model's shapes (C = 2240, 20 heads × 112, bf16, B = 1, 18 480 tokens = 161 frames and 106 480 = 961 frames):
  qk    `sana_wm.ops.qk_prologue`: RMSNorm → ×weight → ReLU → ×key scale → RoPE (GDN main branch)
  ucpe  `sana_wm.ops.ucpe`: RMSNorm → ×weight → ReLU → ×key scale → UCPE → RMS clamp → norm ratio (camera key)
Forward and forward + backward of the Triton op vs `torch.compile` of `naive.py` (what the model ran before), medians
of CUDA-event timings, in one process. Prints a table (card, tokens, ms, ratio); `--out` writes JSON. Never asserts
speed.

    python bench/prologue_ops.py --tokens 18480,106480
"""

from __future__ import annotations

import argparse
import json

import torch
from common import cuda_time, report

from sana_wm.ops.qk_prologue import naive_rms_relu_rope, rms_relu_rope
from sana_wm.ops.ucpe import naive_ucpe_clamp, ucpe_clamp

C, HEADS, D = 2240, 20, 112


def cases(N: int, gen: torch.Generator):
    r = lambda *s: torch.randn(*s, device="cuda", generator=gen)  # noqa: E731
    x = r(1, N, 3 * C).bfloat16()[..., C : 2 * C]  # a column slice of a fused projection, as in the model
    w = (1 + 0.1 * r(C)).bfloat16()
    ang, cam = 6 * torch.rand(N, D // 2, device="cuda", generator=gen), 6 * torch.rand(N, D // 4, device="cuda",
                                                                                         generator=gen)
    mat = (0.5 * r(1, N, 4, 4)).bfloat16()
    scale = D**-0.5 * 880**-0.5
    return {
        "qk": (lambda x, w: rms_relu_rope(x, w, ang.cos(), ang.sin(), scale),
               lambda x, w: naive_rms_relu_rope(x, w, ang.cos(), ang.sin(), scale), x, w),
        "ucpe": (lambda x, w: ucpe_clamp(x, mat, cam.cos(), cam.sin(), HEADS, w, True, scale),
                 lambda x, w: naive_ucpe_clamp(x, mat, cam.cos(), cam.sin(), w, True, scale, 1e-5, HEADS), x, w),
    }


def fwd_bwd(fn, x, w):
    xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
    outs = fn(xg, wg)
    grads = [torch.ones_like(o) for o in outs]

    def step():
        torch.autograd.grad(fn(xg, wg), (xg, wg), grads)

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", default="18480,106480")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    card = torch.cuda.get_device_name()
    rows = []
    for N in (int(n) for n in args.tokens.split(",")):
        gen = torch.Generator(device="cuda").manual_seed(0)
        for name, (fused, composition, x, w) in cases(N, gen).items():
            compiled = torch.compile(composition)
            ms = {}
            for impl, fn in (("fused", fused), ("compiled composition", compiled)):
                ms[impl, "fwd"] = cuda_time(lambda fn=fn: fn(x, w), 3, args.reps)[0]
                ms[impl, "fwd+bwd"] = cuda_time(fwd_bwd(fn, x, w), 3, args.reps)[0]
            for part in ("fwd", "fwd+bwd"):
                base, ours = ms["compiled composition", part], ms["fused", part]
                rows.append(dict(card=card, op=name, tokens=N, part=part, fused_ms=round(ours, 3),
                                 composition_ms=round(base, 3), speedup=round(base / ours, 2)))
                print(json.dumps(rows[-1]), flush=True)
    return report(rows, dict(card="card", op="op", tokens="tokens", part="part", fused_ms="fused ms",
                             composition_ms="compiled composition ms", speedup="×"), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
