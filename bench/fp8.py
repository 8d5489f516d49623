"""FP8 (torchao float8, `sana_wm.fp8`) against bf16 in the same process, one GPU of compute capability 8.9+.

Speed cases (--cases, default both), full preset, same random weights, 704×1280 latents, 300-token text:
  fwd    stage-1 forward, 21 latent frames (161 f), B = 2 (one CFG step), compiled: bf16, then a copy quantized by
         `sana_wm.fp8.quantize_for_inference` for each --fwd-recipes entry; speed, peak memory, and the relative L2
         error of the fp8 velocity against the bf16 one (same inputs)
  train  forward + backward (as bench/dit_step.py's train21: no optimizer, which FP8 does not change), 21 latent
         frames, B = 1, compiled, --ac checkpointing (default "ffn", the fastest policy that fits 161 frames): bf16, then a copy
         converted by `sana_wm.fp8.convert_for_training` for each --train-recipes entry
MFU is against the bf16 dense peak for every row (model FLOPs / time / 989.4 TFLOP/s), so the fp8 rows read as
"bf16-equivalent" utilisation.

--loss-curve N instead trains a small DiT (--preset tiny or mid) on the bundled synthetic world for N steps three
times with the trainer's recipe (fp32 master weights, bf16 autocast, AdamW, logit-normal σ, image condition): bf16,
fp8 (--train-recipes' first recipe) from the same seed (same initial weights, batches, noise), and bf16 from another
seed (the run-to-run spread that a difference has to be judged against); the loss is the trainer's own
(`SanaWMLitModule.flow_step`). The clips are 33-frame 64×112 renders
encoded by a seeded random tiny LTX-2 VAE (8× spatial, 16 channels) into 16 × 5 × 8 × 14 latents and normalised per
channel. Writes <out>_loss.json (per-step losses of all three runs and the summary) and <out>_loss.png (smoothed
curves overlaid), and prints the final difference.

    python bench/fp8.py --out fp8.json                          # speed: fwd + train (≈ 5–6 min on one H100)
    python bench/fp8.py --loss-curve 300 --preset mid --out fp8.json     # ≈ 5 min on one H100 (three runs)
    python bench/fp8.py --loss-curve 200 --preset tiny --emulate --clips 16 --out fp8.json   # CPU, no GPU: float32
        # against torchao's float8 emulation (the same float8 roundings, float32 accumulation); ≈ 20 min on 2 cores

Prints tables and writes JSON (--out). Never asserts speed.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import traceback

import torch
from common import cuda_time, markdown_table, write_json
from dit_step import TEXT, H, W, build_models, make_inputs, ours_fn, run_info, set_compiled, train_step

from sana_wm.fp8 import (
    FP8_RECIPES,
    Fp8Unavailable,
    check_fp8_device,
    convert_for_training,
    quantize_for_inference,
)
from sana_wm.models.flops import H100_BF16_PEAK, model_flops
from sana_wm.parallel import AC_POLICIES, apply_compile, parallelize

COLUMNS = {"case": "case", "impl": "impl", "B": "B", "frames": "frames", "ms": "ms", "speedup": "× bf16",
           "peak_gib": "peak GiB", "mfu": "MFU (bf16 peak)", "rel_err": "rel. err vs bf16"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="fwd,train", help="comma list of fwd, train")
    ap.add_argument("--fwd-recipes", default="rowwise,tensorwise", help="inference recipes of the fwd case")
    ap.add_argument("--train-recipes", default="tensorwise", help="training recipes of the train case")
    ap.add_argument("--ac", default="ffn", choices=AC_POLICIES, help="checkpointing policy of the train case")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="extra warm-up runs after the compiling one")
    ap.add_argument("--cap-gib", type=float, default=None, help="cap the CUDA allocator (as bench/dit_step.py)")
    ap.add_argument("--loss-curve", type=int, default=0, metavar="N", help="run the loss-curve comparison instead")
    ap.add_argument("--preset", default="mid", choices=sorted(LOSS_PRESETS), help="model of --loss-curve")
    ap.add_argument("--clips", type=int, default=24, help="synthetic-world clips of --loss-curve")
    ap.add_argument("--batch", type=int, default=8, help="batch size of --loss-curve")
    ap.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate of --loss-curve")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--emulate", action="store_true",
                    help="--loss-curve on the CPU: float32 against torchao's float8 emulation (no GPU needed)")
    ap.add_argument("--out", default=None, help="JSON path; --loss-curve writes <stem>_loss.json / _loss.png")
    args = ap.parse_args(argv)
    for recipe in (*args.fwd_recipes.split(","), *args.train_recipes.split(",")):
        if recipe not in FP8_RECIPES:
            ap.error(f"recipe {recipe!r} is not one of {list(FP8_RECIPES)}")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Speed: forward and training step at 161 frames
# ---------------------------------------------------------------------------------------------------------------------


def row(case, impl, B, T, ms, gib, training, base_ms=None, **extra) -> dict:
    from sana_wm import SanaWMConfig

    flops = model_flops(SanaWMConfig(), (T, H, W), TEXT, batch=B, training=training).total
    r = dict(case=case, impl=impl, B=B, frames=8 * (T - 1) + 1, ms=round(ms, 1), peak_gib=round(gib, 2),
             mfu=f"{100 * flops / (ms * 1e-3) / H100_BF16_PEAK:.1f}%",
             speedup=round(base_ms / ms, 3) if base_ms else "", **extra)
    print(json.dumps(r), flush=True)
    return r


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


class Runs:
    """The rows of one speed run, written to --out after every row (a run cut short keeps what it measured)."""

    def __init__(self, args, info: dict):
        self.args, self.info, self.rows = args, info, []
        self.fwd_inputs = self.fwd_ref = self.fwd_bf16_ms = None

    def add(self, r: dict) -> None:
        self.rows.append(r)
        write_json(self.args.out, {"info": self.info, "rows": self.rows})

    def failed(self, case: str, err: Exception) -> None:
        traceback.print_exception(err)
        print(f"{case} FAILED: {type(err).__name__}: {str(err)[:2000]}", flush=True)
        self.add({"case": case, "impl": f"FAILED: {type(err).__name__}: {str(err)[:200]}"})
        torch.cuda.empty_cache()


def forward_baseline(model, runs: Runs) -> None:
    """fwd: the compiled bf16 forward's time and output, the reference of the fp8 rows."""
    args, plain = runs.args, list(model.blocks)
    runs.fwd_inputs = make_inputs(2, 21)
    set_compiled(model, plain, True)
    with torch.no_grad():
        runs.fwd_bf16_ms, gib = cuda_time(ours_fn(model, runs.fwd_inputs), 1 + args.warmup, args.reps)
        runs.fwd_ref = ours_fn(model, runs.fwd_inputs)()
    runs.add(row("fwd", "bf16, compiled", 2, 21, runs.fwd_bf16_ms, gib, False))
    set_compiled(model, plain, False)


def forward_fp8(model, runs: Runs, recipe: str) -> None:
    """fwd: a copy quantized with `recipe`, compiled as the bf16 one; its time and its error against bf16."""
    args, inp = runs.args, runs.fwd_inputs
    q = copy.deepcopy(model).eval()
    n = quantize_for_inference(q, recipe)
    apply_compile(q)
    with torch.no_grad():
        ms, gib = cuda_time(ours_fn(q, inp), 1 + args.warmup, args.reps)
        err = rel_err(ours_fn(q, inp)(), runs.fwd_ref)
    runs.add(row("fwd", f"fp8 {recipe} ({n} GEMMs), compiled", 2, 21, ms, gib, False, runs.fwd_bf16_ms,
                 rel_err=f"{err:.2e}"))
    del q
    torch.cuda.empty_cache()


def run_train(model, runs: Runs) -> None:
    """train: bf16 with --ac checkpointing, compiled; then a converted copy per recipe, set up by `parallelize`."""
    args = runs.args
    inp = make_inputs(1, 21)
    model.train()
    plain = list(model.blocks)
    parallelize(model, activation_checkpointing=True, ac_policy=args.ac, compile=True)
    ms_bf16, gib = cuda_time(train_step(model, inp, False), 1 + args.warmup, args.reps)
    model.zero_grad(set_to_none=True)
    runs.add(row("train", f"bf16, compiled, {args.ac} AC", 1, 21, ms_bf16, gib, True))
    set_compiled(model, plain, False)  # plain blocks again (no checkpoint wrappers) for the copies
    model.eval()
    for recipe in args.train_recipes.split(","):
        m = copy.deepcopy(model).train()
        parallelize(m, activation_checkpointing=True, ac_policy=args.ac, compile=True, fp8=recipe)
        try:
            ms, gib = cuda_time(train_step(m, inp, False), 1 + args.warmup, args.reps)
            runs.add(row("train", f"fp8 {recipe}, compiled, {args.ac} AC", 1, 21, ms, gib, True, ms_bf16))
        except Exception as err:  # noqa: BLE001 - one device call: report the failure, measure the other cases
            runs.failed(f"train fp8 {recipe}", err)
        del m
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------------
# Loss curves on the synthetic world
# ---------------------------------------------------------------------------------------------------------------------

#: --loss-curve models: the tiny preset, and a mid-sized one (width 1120 = 10 heads of 112, 8 blocks, 2 softmax)
LOSS_PRESETS = {"tiny": {}, "mid": {"hidden_size": 1120, "num_heads": 10, "depth": 8}}


def synthetic_world(num_clips: int, device, seed: int = 0, num_frames: int = 33) -> dict[str, torch.Tensor]:
    """The synthetic world's clips (`num_frames` frames of 64×112) as normalised latents with their camera tensors
    and a fixed random caption embedding per clip (no text encoder: the captions carry no meaning here)."""
    from data.synthetic.clips import make_clip
    from sana_wm.camera import prepare_camera
    from sana_wm.encoders.tiny import tiny_ltx2_vae
    from sana_wm.encoders.vae import LatentCodec

    clips = [make_clip(i, seed=seed, num_frames=num_frames, height=64, width=112) for i in range(num_clips)]
    video = torch.stack([torch.from_numpy(c.frames).permute(3, 0, 1, 2) for c in clips]).float() / 127.5 - 1
    codec = LatentCodec(tiny_ltx2_vae(16, spatial_compression=8, random_stats=False, seed=seed,
                                      encoder_spatial_padding_mode="reflect")).to(device)
    with torch.no_grad():
        z = torch.cat([codec.encode(video[i : i + 4].to(device)) for i in range(0, num_clips, 4)])
    z = (z - z.mean((0, 2, 3, 4), keepdim=True)) / z.std((0, 2, 3, 4), keepdim=True)
    cams = [prepare_camera(c.c2w, [c.K[0, 0], c.K[1, 1], c.K[0, 2], c.K[1, 2]], pixel_hw=(64, 112),
                           latent_hw=tuple(z.shape[-2:])) for c in clips]
    g = torch.Generator().manual_seed(seed)
    return {"latent": z.float(), "cc": torch.stack([c for c, _ in cams]).float().to(device),
            "pl": torch.stack([p for _, p in cams]).float().to(device),
            "text": torch.randn(num_clips, 32, 32, generator=g).to(device)}


def train_curve(data, preset: str, steps: int, batch: int, lr: float, seed: int, fp8: str | None,
                emulate: bool = False) -> list[float]:
    """Per-step losses of `steps` AdamW steps from `seed` with the trainer's objective (`SanaWMLitModule.flow_step`:
    logit-normal σ, here with shift 3 as the CPU demo's small latents, image condition 0.9, caption dropout 0.1),
    fp32 master weights, bf16 autocast on CUDA (float32 on CPU), 20 warm-up steps, gradient clipping at 1.0.
    fp8: a recipe name or None (bf16); emulate: torchao's float8 emulation (tests on CPU)."""
    from sana_wm.training.config import ModelConfig, ObjectiveConfig
    from sana_wm.training.module import SanaWMLitModule

    device = data["latent"].device
    torch.manual_seed(seed)
    lit = SanaWMLitModule(ModelConfig(preset="tiny", **LOSS_PRESETS[preset]), ObjectiveConfig(flow_shift=3.0),
                          seed=seed).to(device).train()
    if fp8 is not None:
        convert_for_training(lit.model, fp8, emulate=emulate)
    opt = torch.optim.AdamW(lit.model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-10, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    g = torch.Generator(device=device).manual_seed(seed + 1)
    n = data["latent"].shape[0]
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g, device=device)
        inputs = {"latent": data["latent"][idx], "text": data["text"][idx],
                  "mask": torch.ones(batch, data["text"].shape[1], dtype=torch.bool, device=device),
                  "camera_conditions": data["cc"][idx], "chunk_plucker": data["pl"][idx]}
        with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = lit.flow_step(inputs, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lit.model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def curve_summary(curves: dict[str, list[float]], tail: int, base: str = "bf16") -> dict[str, float]:
    """Mean loss of each run over its last `tail` steps, and the fp8 and other-seed differences from the `base`
    precision's run there (relative), plus the mean absolute relative gap between the smoothed curves over the run."""
    mean = lambda xs: sum(xs) / len(xs)
    final = {k: mean(v[-tail:]) for k, v in curves.items()}
    w = max(1, tail // 2)
    s = {k: smooth(v, w) for k, v in curves.items()}
    gap = lambda k: mean([abs(a - b) / b for a, b in zip(s[k], s[base], strict=True)][w:])
    other = f"{base}_other_seed"
    return {"tail_steps": tail, **{f"final_{k}": v for k, v in final.items()},
            "final_rel_diff_fp8": (final["fp8"] - final[base]) / final[base],
            "final_rel_diff_other_seed": (final[other] - final[base]) / final[base],
            "mean_abs_rel_gap_fp8": gap("fp8"), "mean_abs_rel_gap_other_seed": gap(other)}


def plot_curves(path: str, curves: dict[str, list[float]], window: int, title: str, base: str = "bf16") -> None:
    """Smoothed loss curves overlaid, as a PNG drawn with Pillow (the GPU machine has no matplotlib)."""
    from PIL import Image, ImageDraw

    size, margin = (900, 540), (70, 40, 20, 50)  # left, top, right, bottom
    order = (base, "fp8", f"{base}_other_seed")
    colors = dict(zip(order, ((31, 119, 180), (214, 39, 40), (150, 150, 150)), strict=True))
    s = {k: smooth(v, window) for k, v in curves.items()}
    lo = min(min(v[window:] or v) for v in s.values())
    hi = max(max(v[window:] or v) for v in s.values())
    steps = len(next(iter(s.values())))
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = margin[0], margin[1], size[0] - margin[2], size[1] - margin[3]
    d.rectangle([x0, y0, x1, y1], outline="black")
    px = lambda i: x0 + (x1 - x0) * i / max(steps - 1, 1)
    py = lambda v: y1 - (y1 - y0) * (v - lo) / max(hi - lo, 1e-12)
    for k in range(5):  # y ticks
        v = lo + (hi - lo) * k / 4
        d.line([x0 - 5, py(v), x0, py(v)], fill="black")
        d.text((5, py(v) - 6), f"{v:.4f}", fill="black")
    for k in range(5):  # x ticks
        i = round((steps - 1) * k / 4)
        d.text((px(i) - 10, y1 + 8), str(i + 1), fill="black")
    for name in (order[2], order[0], order[1]):
        d.line([(px(i), py(v)) for i, v in enumerate(s[name]) if i >= window // 2], fill=colors[name], width=2)
    for j, name in enumerate(order):
        d.line([x1 - 200, y0 + 15 + 18 * j, x1 - 170, y0 + 15 + 18 * j], fill=colors[name], width=3)
        d.text((x1 - 165, y0 + 9 + 18 * j), name.replace("_", " "), fill="black")
    d.text((x0, 12), f"{title} (moving average over {window} steps)", fill="black")
    d.text(((x0 + x1) // 2 - 20, size[1] - 22), "step", fill="black")
    img.save(path)


def run_loss_curves(args, info: dict) -> int:
    recipe = args.train_recipes.split(",")[0]
    # --emulate: on the CPU, float32 against torchao's float8 emulation (the same float8 roundings of both operands,
    # the products accumulated in float32 instead of the tensor cores' fast accumulation).
    device, base = ("cpu", "fp32") if args.emulate else ("cuda", "bf16")
    t0 = time.perf_counter()
    data = synthetic_world(args.clips, device, args.seed)
    print(f"synthetic world: {args.clips} clips -> latents {list(data['latent'].shape)} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    curves, seconds = {}, {}
    for name, seed, fp8 in ((base, args.seed, None), ("fp8", args.seed, recipe),
                            (f"{base}_other_seed", args.seed + 1000, None)):
        t0 = time.perf_counter()
        curves[name] = train_curve(data, args.preset, args.loss_curve, args.batch, args.lr, seed, fp8,
                                   emulate=args.emulate)
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {args.loss_curve} steps in {seconds[name]} s, last loss {curves[name][-1]:.4f}", flush=True)
    tail = max(10, args.loss_curve // 10)
    summary = curve_summary(curves, tail, base)
    print(json.dumps(summary, indent=1))
    print(f"final loss (mean of the last {tail} steps): {base} {summary[f'final_{base}']:.4f}, fp8 {recipe}"
          f"{' (emulated)' if args.emulate else ''} {summary['final_fp8']:.4f} "
          f"({100 * summary['final_rel_diff_fp8']:+.2f} %), {base} with another seed "
          f"{summary[f'final_{base}_other_seed']:.4f} ({100 * summary['final_rel_diff_other_seed']:+.2f} %)")
    stem = (args.out or "fp8.json").removesuffix(".json")
    write_json(f"{stem}_loss.json", {"info": info, "preset": args.preset, "recipe": recipe, "emulated": args.emulate,
                                      "base": base, "steps": args.loss_curve,
                                      "batch": args.batch, "lr": args.lr, "seconds": seconds, "summary": summary,
                                      "curves": curves})
    plot_curves(f"{stem}_loss.png", curves, max(5, tail // 2),
                f"{args.preset} DiT, synthetic world: {base} vs fp8 {recipe}{' (emulated, CPU)' if args.emulate else ''}"
                f", {args.loss_curve} steps", base)
    print(f"wrote {stem}_loss.json and {stem}_loss.png")
    return 0


def attempt(runs: Runs, case: str, fn, *args) -> None:
    """Run one fp8 case; a failure is reported and recorded, and the other cases still run (one device call)."""
    try:
        fn(*args)
    except Exception as err:  # noqa: BLE001
        runs.failed(case, err)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.emulate:
        if not args.loss_curve:
            print("bench/fp8.py: --emulate is for --loss-curve (emulated float8 has no speed to measure)")
            return 2
        import platform

        import torchao

        info = dict(date=time.strftime("%Y-%m-%d"), device="cpu", cpu=platform.processor() or platform.machine(),
                    torch=torch.__version__, torchao=torchao.__version__, python=platform.python_version(),
                    threads=torch.get_num_threads())
        print(json.dumps(info))
        return run_loss_curves(args, info)
    try:
        check_fp8_device()
    except Fp8Unavailable as err:
        print(f"bench/fp8.py: {err}")
        return 2
    info = run_info(args)
    if args.loss_curve:
        return run_loss_curves(args, info)
    # bf16 and fp8 blocks, inference and training shapes: more graphs per code object than Dynamo's default of 8.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    model, _ = build_models(with_port=False)
    with torch.no_grad():  # a trained checkpoint's output gates are not zero: every target GEMM runs in float8
        for name, p in model.named_parameters():
            if name.endswith("attn.output_gate.weight"):
                p.normal_(std=0.02)
    runs, cases = Runs(args, info), args.cases.split(",")
    fwd_recipes = args.fwd_recipes.split(",")
    t0 = time.perf_counter()
    # The first inference recipe, then training, then the other inference recipes: the headline comparisons first,
    # should the call's time run out.
    fp8_fwd = lambda recipe: attempt(runs, f"fwd fp8 {recipe}", forward_fp8, model, runs, recipe)
    if "fwd" in cases:
        forward_baseline(model, runs)
        fp8_fwd(fwd_recipes[0])
    if "train" in cases:
        run_train(model, runs)
    if "fwd" in cases:
        for recipe in fwd_recipes[1:]:
            fp8_fwd(recipe)
    print(f"\n{time.perf_counter() - t0:.0f} s of cases")
    print(markdown_table(runs.rows, COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
