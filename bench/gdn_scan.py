"""GDN kernel benchmark: our frame-wise bidirectional GDN op vs cuDNN softmax SDPA at the same N (docs/design/flops.md).

For T latent frames of S = 880 tokens, H = 20 heads, D = 112, B = 1: times the main-branch op (`bidirectional_gdn`,
num + den) and the camera op (`bidirectional_delta`): the forward through the fused Triton kernels (transitions +
state scan + read-out from token layout, `*_fused`), and forward / forward+backward through the composite path with
the Triton state scan and with the PyTorch-loop scan (baselines, same process), next to
`F.scaled_dot_product_attention` (cuDNN, bf16). `gdn_fb_fused` is forward+backward of the training path (fused
transitions and read-out under autograd, Triton state scans).
Prints a table; `--out` writes JSON. Never asserts speed.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from common import cuda_time
from torch.nn.attention import SDPBackend, sdpa_kernel

from sana_wm.ops import switch
from sana_wm.ops.gdn import bidirectional_delta, bidirectional_gdn


def timeit(fn, warmup=2, reps=5) -> float:
    return cuda_time(fn, warmup, reps)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", default="11,21,41,121")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    S, H, D = 880, 20, 112
    rows = []
    for T in map(int, args.frames.split(",")):
        mk = lambda *s, sc=1.0: (torch.rand(*s, device="cuda", dtype=torch.bfloat16) * sc).requires_grad_()
        q, k, qr, kr = mk(1, T, S, H, D), mk(1, T, S, H, D, sc=(D * S) ** -0.5), mk(1, T, S, H, D), mk(
            1, T, S, H, D, sc=(D * S) ** -0.5)
        v, beta = mk(1, T, S, H, D), mk(1, T, S, H)
        g = (0.9 + 0.1 * torch.rand(1, T, H, device="cuda")).requires_grad_()
        row = dict(T=T, N=T * S)
        with torch.no_grad():
            row["gdn_fwd_fused"] = timeit(lambda: bidirectional_gdn(q, k, qr, kr, v, beta, g, out_dtype=q.dtype))
            row["cam_fwd_fused"] = timeit(lambda: bidirectional_delta(q, kr, v, beta, g, out_dtype=q.dtype))
        # training: fused transitions / read-out with their PyTorch backward, the state scans in between
        row["gdn_fb_fused"] = timeit(lambda: bidirectional_gdn(q, k, qr, kr, v, beta, g).sum().backward())
        for backend in ("triton", "torch"):  # the composite path with the Triton state scan, then the PyTorch loop
            with switch.override(SANA_WM_FUSED_GDN=False, SANA_WM_FUSED_GDN_SCAN=backend == "triton"):
                with torch.no_grad():
                    row[f"gdn_fwd_{backend}"] = timeit(lambda: bidirectional_gdn(q, k, qr, kr, v, beta, g))
                    row[f"cam_fwd_{backend}"] = timeit(lambda: bidirectional_delta(q, kr, v, beta, g))
                row[f"gdn_fb_{backend}"] = timeit(lambda: bidirectional_gdn(q, k, qr, kr, v, beta, g).sum().backward())
        qs, ks, vs = (x.detach().transpose(1, 2).reshape(1, T * S, H, D).transpose(1, 2) for x in (q, k, v))
        with torch.no_grad(), sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            row["sdpa_cudnn_fwd"] = timeit(lambda: F.scaled_dot_product_attention(qs, ks, vs))
        rows.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
        print(json.dumps(rows[-1]), flush=True)
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if args.out:
        json.dump(rows, open(args.out, "w"), indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
