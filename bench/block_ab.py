"""Block-level A/B: a few full-width SANA-WM blocks (camera on), compiled per block, one process, one GPU, bf16.

Cheaper than `dit_step.py` for trying a kernel or a PyTorch rewrite: two GDN blocks compile in about 30 s where the
whole model takes minutes. Times a 961-frame forward (B = 1) and a 161-frame forward + backward (B = 1, no
checkpointing) for each variant below, one after another on the same weights and inputs, and prints a table with the
ratio to the first variant and the output difference from it; `--kernels N` also lists each variant's top N kernels.

Variants (the process-wide switches of the fused ops):
  fused           every fused kernel on (the default code)
  no-short-conv   the keys' short conv as the op's PyTorch shifted adds, run eagerly inside the op (not the
                  Inductor-fused form of earlier code, which no longer exists)
  no-fused-gdn    GDN transitions / read-outs as float32 cuBLAS GEMMs (the composite path)
  no-prologue     the GDN query/key prologue as the PyTorch composition (Inductor-fused, the code before 2026-12-01's
                  fifth session)
  no-ucpe         the camera prologue (norm, UCPE, RMS clamp) as the PyTorch composition, likewise

    python bench/block_ab.py --blocks 2 --variants fused,no-prologue,no-ucpe --kernels 25

Runs 14 and 15 of bench/RESULTS.md used a scratch form of this script (with monkeypatched RoPE / UCPE variants); this
kept form has not itself run on a GPU yet. Never asserts speed.
"""

from __future__ import annotations

import argparse
import json

import torch
from common import cuda_time
from dit_step import make_inputs, ours_fn, top_kernels

from sana_wm import SanaWM
from sana_wm.ops import switch

# variant name → the kernel switch (`sana_wm.ops.switch`) it turns off
SWITCHES = {"short-conv": "SANA_WM_FUSED_SHORT_CONV", "fused-gdn": "SANA_WM_FUSED_GDN",
            "prologue": "SANA_WM_FUSED_PROLOGUE", "ucpe": "SANA_WM_FUSED_UCPE"}
VARIANTS = {"fused": ()} | {f"no-{name}": (name,) for name in SWITCHES}  # variant → switches turned off


def set_variant(name: str) -> None:
    for short, env in SWITCHES.items():
        switch.get(env).set(short not in VARIANTS[name])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=2, help="blocks in the model (all GDN unless --softmax)")
    ap.add_argument("--softmax", action="store_true", help="keep the preset's softmax block every 4th")
    ap.add_argument("--variants", default="fused,no-short-conv")
    ap.add_argument("--kernels", type=int, default=0, help="list each variant's top N CUDA kernels")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; expected some of {sorted(VARIANTS)}")
    torch.manual_seed(0)
    overrides = {} if args.softmax else {"softmax_every_n": 0}
    with torch.device("cuda"):
        model = SanaWM.from_preset("sana_wm_1600m_720p", depth=args.blocks, **overrides)
    with torch.no_grad():  # the zero-initialised camera / temporal paths and identity short convs made non-trivial
        for name, p in model.named_parameters():
            if any(s in name for s in ("out_proj_cam", "plucker_proj", "plucker_embedder", "t_conv", "conv_k")):
                p.normal_(std=0.02)
    model = model.to(torch.bfloat16)
    plain = list(model.blocks)
    fwd_in, train_in = make_inputs(1, 121), make_inputs(1, 21)
    card = torch.cuda.get_device_name()
    rows, first_out = [], None
    for name in names:
        set_variant(name)
        torch._dynamo.reset()
        model.blocks = torch.nn.ModuleList(torch.compile(b) for b in plain)
        model.eval()
        with torch.no_grad():
            fwd = ours_fn(model, fwd_in)
            out = fwd().float()
            fwd_ms, fwd_gib = cuda_time(fwd, 1, args.reps)
            if args.kernels:
                top_kernels(fwd, args.kernels)
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            ours_fn(model, train_in)().float().square().mean().backward()

        train_ms, train_gib = cuda_time(step, 2, args.reps)
        if args.kernels:
            top_kernels(step, args.kernels)
        model.zero_grad(set_to_none=True)
        first_out = out if first_out is None else first_out
        diff = ((out - first_out).norm() / first_out.norm()).item()
        rows.append(dict(variant=name, fwd961_ms=round(fwd_ms, 2), fwd_peak_gib=round(fwd_gib, 2),
                         train161_ms=round(train_ms, 2), train_peak_gib=round(train_gib, 2), rel_diff=diff))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print(f"\n{card}, {args.blocks} blocks of 2240 channels, 704×1280, bf16; forward 121 latent frames (961 f) B=1, "
          f"train 21 latent frames (161 f) B=1")
    print("| variant | fwd 961 f ms | × first | train 161 f ms | × first | peak GiB fwd / train | rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['fwd961_ms']:.2f} | {r['fwd961_ms'] / base['fwd961_ms']:.3f} | "
              f"{r['train161_ms']:.2f} | {r['train161_ms'] / base['train161_ms']:.3f} | "
              f"{r['fwd_peak_gib']:.2f} / {r['train_peak_gib']:.2f} | {r['rel_diff']:.2e} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(card=card, blocks=args.blocks, rows=rows), f, indent=2)
    set_variant("fused")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
