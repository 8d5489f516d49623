"""GDN kernel benchmark: our frame-wise bidirectional GDN op vs cuDNN softmax SDPA and fla's token-level GDN at the
same N (docs/design/flops.md).

For T latent frames of S = 880 tokens, H = 20 heads, D = 112, B = 1: times the main-branch op (`bidirectional_gdn`,
num + den) and the camera op (`bidirectional_delta`): the forward through the fused Triton kernels (transitions +
state scan + read-out from token layout, `*_fused`), and forward / forward+backward through the composite path with
the Triton state scan and with the PyTorch-loop scan (baselines, same process), next to
`F.scaled_dot_product_attention` (cuDNN, bf16). `gdn_fb_fused` is forward+backward of the training path (fused
transitions and read-out under autograd, Triton state scans).

`fla_bidir_fwd` / `fla_bidir_fb`: flash-linear-attention's chunked gated-delta-rule kernel over the same N = T·S
tokens, run forward and on the time-reversed sequence (the flips included), numerator only — the cost of a
token-recurrent bidirectional GDN, which updates its state per token where ours writes a whole frame in one step.
Compare with `cam_fwd_fused` (our numerator-only op). The rows are left out, with the reason printed, where fla's
kernels do not import.
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


def fla_chunk_kernel():
    """(fla's `chunk_gated_delta_rule`, None), or (None, why not): it needs Triton and a GPU."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as err:  # noqa: BLE001 - any import problem means the baseline rows are left out
        return None, f"{type(err).__name__}: {err}"
    return chunk_gated_delta_rule, None


def fla_token_inputs(q, k, v, beta, g):
    """Our frame layout (q, k, v [B, T, S, H, D], β [B, T, S, H], decay g [B, T, H]) → fla's token layout for the same
    N = T·S tokens: q, k, v [B, N, H, D], β [B, N, H], and the frame's decay as a log-gate on its first token (zero on
    the others, so that the decay per frame is the same), float32 [B, N, H]."""
    B, T, S, H, _ = q.shape
    tokens = lambda x: x.reshape(B, T * S, *x.shape[3:])  # noqa: E731 - frames are contiguous runs of S tokens
    log_g = torch.zeros(B, T, S, H, device=g.device, dtype=torch.float32)
    log_g[:, :, 0] = g.float().log()
    return tokens(q), tokens(k), tokens(v), tokens(beta), log_g.reshape(B, T * S, H)


def token_bidirectional(kernel, q, k, v, beta, log_g):
    """`kernel` (fla's gated delta rule, chunked or reference; keyword arguments suit both) run over the tokens
    forward and time-reversed, the outputs summed: o [B, N, H, D]."""
    fwd = kernel(q=q, k=k, v=v, g=log_g, beta=beta, scale=1.0)[0]
    rq, rk, rv, rg, rb = (x.flip(1) for x in (q, k, v, log_g, beta))
    return fwd + kernel(q=rq, k=rk, v=rv, g=rg, beta=rb, scale=1.0)[0].flip(1)


def check_kernels() -> None:
    """The `*_fused` and `*_triton` rows need our kernels imported and switched on; say which are not."""
    off = [repr(s) for s in map(switch.get, ("SANA_WM_FUSED_GDN", "SANA_WM_FUSED_GDN_SCAN"))
           if not (s.available and s.enabled)]
    if off:
        raise SystemExit(f"gdn_scan.py needs the fused GDN kernels: {', '.join(off)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", default="11,21,41,121")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    check_kernels()
    fla_chunk, why_not = fla_chunk_kernel()
    if fla_chunk is None:
        print(f"fla baseline rows left out: {why_not}", flush=True)
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
        if fla_chunk is not None:
            tok = [x.detach().requires_grad_() for x in fla_token_inputs(q, kr, v, beta, g)]
            with torch.no_grad():
                row["fla_bidir_fwd"] = timeit(lambda: token_bidirectional(fla_chunk, *tok))
            row["fla_bidir_fb"] = timeit(lambda: token_bidirectional(fla_chunk, *tok).sum().backward())
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
