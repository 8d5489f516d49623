"""DiT step benchmark: our SANA-WM vs the diffusers port, same random weights, one GPU, bf16, 704×1280 latents.

Cases (docs/design/flops.md §6, issue 6):
  fwd21    inference forward, 21 latent frames (161 f), B=2 (one CFG step)
  fwd121   inference forward, 121 latent frames (961 f), B=1
  train21  forward+backward with per-block activation checkpointing, 21 latent frames, B=1
  trainmax longest clip whose training step fits (ours only; probes 41/61/81/121 latent frames); on a card bigger
           than the 80 GB H100 of the targets, --cap-gib 79 caps the allocator at what that card offers
  train121 the minute-long clip's training step: 121 latent frames (961 f), B=1, ours only, with each --ac policy
           in turn (compiled with --compile; --ac-blocks applies) under --cap-gib; a row for every policy that fits,
           and the fastest of them named
  profile  breakdown of our fwd21 into linear / GDN / softmax / other (torch.profiler device time)
  kernels  with --compile: the top CUDA kernels of the compiled fwd21, fwd121 and train21 (where the time goes), and
           the GPU's idle time between kernels with the largest gaps (where the host fell behind)
  composite with --compile: fwd21/fwd121/train21 again with every fused GDN kernel off (what they buy in the whole
           model, same process)
  bwd      with --compile: train21 again with the GDN backward kernels off (float32 PyTorch backward)
  cp1      the context-parallel code path at cp_size 1 against the plain model, same weights, same process: fwd21
           (B=1, eager) and the train21 step with the headline's settings (with --compile: compiled, checkpointing
           by the first --ac policy, e.g. `--compile --ac ffn`; without: eager, full checkpointing). `parallelize`
           installs nothing for a one-rank CP group, so this forces the install (`apply_context_parallel(...,
           force=True)`) over a one-rank NCCL group: the frame-slicing pre-hook, the block wrappers and the
           process-wide dispatchers run, and at size 1 the block wrapper runs each block as it is (the plain fused
           ops, no collective). Compile with checkpointing is allowed here because the group has one rank
           (`sana_wm.context_parallel.check_compile_checkpointing`). Prints a table of the overhead in %, the
           outputs' and the gradients' differences; the plain rows also pass through the dispatchers' check (no CP
           block active). Each row's peak has the other copy's weights and gradients subtracted.
train21 runs eager with full checkpointing, then (with --compile) compiled with each --ac policy: "full" recomputes
whole blocks, "selective" keeps GEMM / attention / scan / prologue outputs, "ffn" keeps those and recomputes only the
FFN's wide middle, leaving the rest to the compiler, "attn" recomputes all but the self-attention outputs
(sana_wm.parallel); --ac-blocks K
checkpoints only the first K blocks of the compiled model (the others keep every activation).
Timing: CUDA events, median of --reps after --warmup runs; peak memory = torch.cuda.max_memory_allocated less the
other model's parameters, buffers and gradients (both models live in this process; `resident_gib`).
MFU = model FLOPs (sana_wm.models.flops) / (time × 989.4 TFLOP/s); also reported against the GEMM ceiling measured here.
Prints a table and writes JSON (--out). Never asserts speed.

    python bench/dit_step.py --cases fwd21,fwd121,train21,trainmax,profile --out results.json
    python bench/dit_step.py --cases cp1 --no-port --compile --ac ffn --warmup 1 --reps 3 --out cp1.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from common import cuda_time, idle_gaps, markdown_table

from sana_wm import SanaWM
from sana_wm.camera import action_to_c2w, prepare_camera
from sana_wm.checkpoint import to_diffusers_layout
from sana_wm.models.flops import H100_BF16_PEAK, model_flops
from sana_wm.ops import switch
from sana_wm.parallel import apply_compile, parallelize, plain_name

H, W, TEXT = 22, 40, 300


def gemm_ceiling(n_tokens: int, C: int = 2240) -> float:
    """Measured bf16 GEMM TFLOP/s at the DiT's largest per-token shape (N × C) @ (C × 3C)."""
    a = torch.randn(n_tokens, C, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(C, 3 * C, device="cuda", dtype=torch.bfloat16)
    ms, _ = cuda_time(lambda: a @ b, 3, 10)
    return 2 * n_tokens * C * 3 * C / (ms * 1e-3) / 1e12


def make_inputs(B: int, T: int, dtype=torch.bfloat16, seed: int = 0, *, hw: tuple[int, int] = (H, W), text: int = TEXT,
                in_channels: int = 128, caption_channels: int = 2304, device="cuda"):
    """Random latents (frame 0 clean at t = 0, the rest at t = 812), text (the first 120 tokens, at most, real) and the
    camera inputs of a moving camera (walk forward, then forward + yaw) from our camera code, for a latent grid `hw`
    of a 32×-downsampled image with fx = fy = 25 px per latent column (1000 px at 1280 wide)."""
    g = torch.Generator(device=device).manual_seed(seed)
    h, w = hw
    F = 8 * (T - 1) + 1
    c2w = action_to_c2w(f"w-{F // 2},dl-{F - 1 - F // 2}")[:F]
    K = [25.0 * w, 25.0 * w, 16.0 * w, 16.0 * h]
    cc, pl = prepare_camera(c2w, K, pixel_hw=(32 * h, 32 * w), latent_hw=(h, w))
    x = torch.randn(B, in_channels, T, h, w, device=device, generator=g, dtype=dtype)
    t = torch.full((B, 1, T), 812.0, device=device)
    t[:, :, 0] = 0
    y = torch.randn(B, 1, text, caption_channels, device=device, generator=g, dtype=dtype)
    mask = torch.ones(B, text, device=device, dtype=torch.long)
    mask[:, min(120, text - 1):] = 0
    cc = cc[None].expand(B, -1, -1).to(device, dtype)
    pl = pl[None].expand(B, -1, -1, -1, -1).to(device, dtype)
    return dict(x=x, t=t, y=y, mask=mask, cc=cc, pl=pl)


def ours_fn(model, inp):
    return lambda: model(inp["x"], inp["t"], inp["y"], mask=inp["mask"], camera_conditions=inp["cc"],
                         chunk_plucker=inp["pl"])


def port_fn(model, inp):
    return lambda: model(hidden_states=inp["x"], timestep=inp["t"], encoder_hidden_states=inp["y"], mask=inp["mask"],
                         camera_conditions=inp["cc"], chunk_plucker=inp["pl"], return_dict=False)[0]


@torch.no_grad()
def wake_zero_init_paths(model) -> None:
    """Give the paths our initialisation zeroes (camera output projection, Plücker injection, the FFN's temporal conv)
    random N(0, 0.02²) weights, so that outputs compared between implementations depend on them."""
    for name, p in model.named_parameters():
        if any(s in name for s in ("out_proj_cam", "plucker_proj", "plucker_embedder", "t_conv")):
            p.normal_(std=0.02)


def build_models(with_port: bool):
    torch.manual_seed(0)
    with torch.device("cuda"):
        ours = SanaWM.from_preset("sana_wm_1600m_720p")
    wake_zero_init_paths(ours)
    ours = ours.to(torch.bfloat16).eval()
    port = None
    if with_port:
        from diffusers.models.transformers.transformer_sana_wm import SanaWMTransformer3DModel

        with torch.device("cuda"):
            port = SanaWMTransformer3DModel()
        port.load_state_dict(to_diffusers_layout(ours.state_dict()), strict=True)
        port = port.to(torch.bfloat16).eval()
    return ours, port


def memory_fraction(cap_gib: float, total_bytes: int | None = None) -> float:
    """The allocator fraction of this card that is `cap_gib` GiB (`--cap-gib`); a cap above the card is an error.

    >>> memory_fraction(70.0, 140 * 2**30)
    0.5
    """
    total = torch.cuda.get_device_properties(0).total_memory if total_bytes is None else total_bytes
    if not 0 < cap_gib * 2**30 <= total:
        raise ValueError(f"--cap-gib {cap_gib}: must be positive and at most this card's {total / 2**30:.1f} GiB")
    return cap_gib * 2**30 / total


def resident_gib(model) -> float:
    """GiB held by `model`'s parameters, buffers and gradients: the other model's share of a peak measured here."""
    if model is None:
        return 0.0
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**30


def set_compiled(model, plain_blocks, compiled: bool) -> None:
    """The plain blocks back, with `apply_compile` (blocks, `embed` prologue, final layer) on top when `compiled`;
    otherwise its prologue and final layer undone too, so that eager timings stay eager."""
    model.blocks = torch.nn.ModuleList(plain_blocks)
    for obj, name in (*((b, "forward") for b in plain_blocks), (model.final_layer, "forward"), (model, "embed")):
        vars(obj).pop(name, None)  # the compiled instance attribute (`apply_compile`); the method is underneath
    if compiled:
        apply_compile(model)


def train_step(model, inp, port: bool):
    fn = port_fn(model, inp) if port else ours_fn(model, inp)

    def step():
        model.zero_grad(set_to_none=True)
        out = fn()
        out.float().square().mean().backward()

    return step


def profile_breakdown(ours, inp) -> dict[str, float]:
    """Device ms of one forward split into linear / GDN scans / softmax SDPA / other, via annotated ranges."""
    from torch.profiler import ProfilerActivity, profile, record_function

    import sana_wm.models.attention as attn_mod

    originals = {n: getattr(attn_mod, n) for n in ("bidirectional_gdn", "bidirectional_delta", "_sdpa")}

    def wrap(label, fn):
        def inner(*a, **k):
            with record_function(label):
                return fn(*a, **k)
        return inner

    for n, fn in originals.items():
        setattr(attn_mod, n, wrap({"_sdpa": "bench::softmax"}.get(n, "bench::gdn"), fn))
    try:
        fwd = ours_fn(ours, inp)
        with torch.no_grad():
            fwd()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                fwd()
                torch.cuda.synchronize()
    finally:
        for n, fn in originals.items():
            setattr(attn_mod, n, fn)
    events = prof.key_averages()

    def dev(name):
        return sum(e.device_time_total for e in events if e.key == name) / 1e3

    total = sum(e.self_device_time_total for e in events) / 1e3
    out = {"gdn": dev("bench::gdn"), "softmax": dev("bench::softmax")}
    out["linear"] = dev("aten::linear")
    out["other"] = total - sum(out.values())
    out["total"] = total
    return out


def top_kernels(fn, top: int) -> list[dict]:
    """The `top` CUDA kernels of one call of `fn` by total device time (the `kernels` case), printed and returned."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    # Host time to enqueue one call against its wall time: near-equal means the host, not the GPU, sets the pace.
    t0 = time.perf_counter()
    fn()
    host_ms = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3
    print(f"host enqueue {host_ms:.1f} ms of {wall_ms:.1f} ms wall", flush=True)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    ev = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in ev) / 1e3
    ev.sort(key=lambda e: -e.self_device_time_total)
    rows = [dict(kernel=e.key[:110], ms=round(e.self_device_time_total / 1e3, 2), calls=e.count,
                 share=round(e.self_device_time_total / 1e3 / total, 4)) for e in ev[:top]]
    print(f"device total {total:.1f} ms; top kernels:", flush=True)
    for r in rows:
        print(f"  {r['ms']:9.2f} ms {100 * r['share']:5.1f}% x{r['calls']:<5d} {r['kernel']}", flush=True)
    try:  # kineto's event API is private and has moved between torch releases: a diagnostic must not end the run
        gaps = idle_gaps([(e.start_ns(), e.start_ns() + e.duration_ns(), e.name()[:60])
                          for e in prof.profiler.kineto_results.events()
                          if e.device_type() == torch.autograd.DeviceType.CUDA])
    except Exception as err:  # noqa: BLE001
        print(f"GPU idle-gap analysis unavailable with torch {torch.__version__}: {err!r}", flush=True)
        return [dict(total_ms=round(total, 1), host_ms=round(host_ms, 1), wall_ms=round(wall_ms, 1))] + rows
    # Under the profiler every launch costs the host a little more, so this idle time is an upper bound.
    print(f"GPU idle {gaps['idle_ms']:.1f} ms of a {gaps['span_ms']:.1f} ms span (busy {gaps['busy_ms']:.1f}); "
          f"idle ms by gap size {gaps['by_size_ms']}; largest gaps (µs, at ms, before -> after):", flush=True)
    for g in gaps["largest"]:
        print(f"  {g[0]:9.1f} µs at {g[1]:8.2f} ms  {g[2]} -> {g[3]}", flush=True)
    return [dict(total_ms=round(total, 1), host_ms=round(host_ms, 1), wall_ms=round(wall_ms, 1), idle=gaps)] + rows


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="fwd21,fwd121,train21,trainmax,profile")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-port", action="store_true", help="skip the diffusers baseline")
    ap.add_argument("--compile", action="store_true", help="also time ours with per-block torch.compile")
    ap.add_argument("--no-eager", action="store_true", help="skip timing our eager (uncompiled) model")
    ap.add_argument("--ac", default="full,selective,ffn", help="checkpointing policies for the compiled train21")
    ap.add_argument("--ac-blocks", type=int, default=None,
                    help="checkpoint only the first K blocks in the compiled train21 (default: all)")
    ap.add_argument("--top", type=int, default=30, help="kernels listed by the `kernels` case")
    ap.add_argument("--cap-gib", type=float, default=None,
                    help="cap this process's CUDA allocator at this many GiB, e.g. 79 for what fits on an 80 GB H100 "
                         "when measuring on a bigger card (trainmax, peaks)")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def run_info(args) -> dict:
    """Date, card, versions (and the memory cap, which this applies) of the run, printed as JSON."""
    info = dict(date=time.strftime("%Y-%m-%d"), card=torch.cuda.get_device_name(), torch=torch.__version__,
                python=platform.python_version())
    if args.cap_gib is not None:
        info["cap_gib"] = args.cap_gib
        torch.cuda.set_per_process_memory_fraction(memory_fraction(args.cap_gib))
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    print(json.dumps(info))
    return info


class Bench:
    """One benchmark run: both models, the options, and the rows and results written after every case."""

    def __init__(self, args, ours, port, info: dict):
        self.args, self.ours, self.port = args, ours, port
        self.cases = args.cases.split(",")
        self.plain_blocks = list(ours.blocks)
        self.rows, self.results = [], dict(info=info)

    def time(self, fn, extra_warmup: int = 0) -> tuple[float, float]:
        return cuda_time(fn, self.args.warmup + extra_warmup, self.args.reps)

    def dump(self) -> None:  # after every case, so a run cut short still leaves its numbers
        self.results["rows"] = self.rows
        if self.args.out:
            with open(self.args.out, "w") as f:
                json.dump(self.results, f, indent=2)

    def record(self, case, who, B, T, ms, gib, training) -> dict:
        gib -= resident_gib(self.port if who.startswith("ours") else self.ours)
        flops = model_flops(self.ours.config, (T, H, W), TEXT, batch=B, training=training).total
        row = dict(case=case, impl=who, B=B, T=T, frames=8 * (T - 1) + 1, ms=round(ms, 1), peak_gib=round(gib, 2),
                   mfu=round(flops / (ms * 1e-3) / H100_BF16_PEAK, 4))
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.dump()
        return row

    def drop_port(self) -> None:
        self.port = None
        torch.cuda.empty_cache()

    def set_blocks(self, policy: str | None, compiled: bool) -> None:
        """Fresh per-block wrappers on the same parameters: checkpointing `policy`, then compile (`parallelize`)."""
        set_compiled(self.ours, self.plain_blocks, False)
        parallelize(self.ours, activation_checkpointing=policy is not None, ac_policy=policy or "full",
                    ac_blocks=self.args.ac_blocks if compiled else None, compile=compiled)


FORWARD_CASES = (("fwd21", 2, 21), ("fwd121", 1, 121))


def run_eager_forward(bench: Bench) -> None:
    """fwd21 / fwd121: our eager model and the port, and the relative error between their outputs."""
    ours, port, results = bench.ours, bench.port, bench.results
    if "fwd21" in bench.cases or "fwd121" in bench.cases:
        results["gemm_tflops"] = gemm_ceiling(2 * 21 * H * W)
        print(f"GEMM ceiling: {results['gemm_tflops']:.0f} TFLOP/s", flush=True)
    for case, B, T in FORWARD_CASES:
        if case not in bench.cases:
            continue
        inp = make_inputs(B, T)
        with torch.no_grad():
            ms = None
            if not bench.args.no_eager:
                ms, gib = bench.time(ours_fn(ours, inp))
                bench.record(case, "ours", B, T, ms, gib, False)
            a = ours_fn(ours, inp)().float()
            if port is not None:
                ms_p, gib_p = bench.time(port_fn(port, inp))
                bench.record(case, "port", B, T, ms_p, gib_p, False)
                b = port_fn(port, inp)().float()
                results[f"{case}_rel_err_vs_port"] = ((a - b).norm() / b.norm()).item()
                results[f"{case}_port_ms"] = ms_p
                print(f"{case}: ours vs port rel err {results[f'{case}_rel_err_vs_port']:.2e}", flush=True)
                if ms is not None:
                    results[f"{case}_speedup"] = ms_p / ms
                    print(f"{case}: eager speed-up {ms_p / ms:.2f}x", flush=True)
        del inp
        torch.cuda.empty_cache()


def run_compiled_forward(bench: Bench) -> None:
    """fwd21 / fwd121 with the compiled model, its top kernels (`kernels`) and the composite-GDN A/B (`composite`)."""
    ours, results = bench.ours, bench.results
    set_compiled(ours, bench.plain_blocks, True)  # per-block compile, plus the prologue and the final layer
    for case, B, T in FORWARD_CASES:
        if case not in bench.cases:
            continue
        inp = make_inputs(B, T)
        with torch.no_grad():
            ms, gib = bench.time(ours_fn(ours, inp), 1)
            bench.record(case, "ours+compile", B, T, ms, gib, False)
            if bench.port is not None and f"{case}_port_ms" in results:
                results[f"{case}_speedup_compiled"] = results[f"{case}_port_ms"] / ms
                print(f"{case}: compiled speed-up {results[f'{case}_speedup_compiled']:.3f}x", flush=True)
            if "kernels" in bench.cases:
                results[f"kernels_{case}"] = top_kernels(ours_fn(ours, inp), bench.args.top)
            if "composite" in bench.cases and switch.get("SANA_WM_FUSED_GDN").enabled:
                with switch.override(SANA_WM_FUSED_GDN=False):  # what the fused GDN kernels bought
                    ms, gib = bench.time(ours_fn(ours, inp), 1)
                    bench.record(case, "ours+compile, composite GDN", B, T, ms, gib, False)
    set_compiled(ours, bench.plain_blocks, False)


def run_train21(bench: Bench) -> None:
    """train21: our eager model with full checkpointing, the port, then the compiled model per --ac policy with its
    top kernels (`kernels`) and the A/B rows of the GDN backward (`bwd`) and composite (`composite`) paths."""
    ours, port, results, args = bench.ours, bench.port, bench.results, bench.args
    inp = make_inputs(1, 21)
    ms = None
    if not args.no_eager:
        bench.set_blocks("full", False)
        ms, gib = bench.time(train_step(ours, inp, False))
        bench.record("train21", "ours (full AC)", 1, 21, ms, gib, True)
    if port is not None:
        ms_p, gib_p = bench.time(train_step(port, inp, True))
        bench.record("train21", "port", 1, 21, ms_p, gib_p, True)
        port.zero_grad(set_to_none=True)
        results["train21_port_ms"] = ms_p
        if ms is not None:
            results["train21_speedup"] = ms_p / ms
    for policy in args.ac.split(",") if args.compile else ():
        bench.set_blocks(policy, True)
        torch.cuda.empty_cache()
        try:
            ms, gib = bench.time(train_step(ours, inp, False), 1)
        except torch.OutOfMemoryError:
            print(f"train21: compiled, {policy} AC does not fit", flush=True)
            ours.zero_grad(set_to_none=True)
            continue
        label = policy if args.ac_blocks is None else f"{policy}, first {args.ac_blocks} blocks"
        bench.record("train21", f"ours+compile ({label} AC)", 1, 21, ms, gib, True)
        if "train21_port_ms" in results:
            results[f"train21_speedup_compiled_{policy}"] = results["train21_port_ms"] / ms
            print(f"train21: compiled ({policy} AC) speed-up {results['train21_port_ms'] / ms:.3f}x", flush=True)
        if "kernels" in bench.cases:  # before the A/B rows below, which recompile
            results[f"kernels_train21_{policy}"] = top_kernels(train_step(ours, inp, False), args.top)
        if "bwd" in bench.cases and switch.get("SANA_WM_FUSED_GDN_BWD").enabled:
            with switch.override(SANA_WM_FUSED_GDN_BWD=False):  # fused forward, float32 PyTorch backward
                ms, gib = bench.time(train_step(ours, inp, False), 1)
                bench.record("train21", f"ours+compile ({policy} AC), PyTorch GDN backward", 1, 21, ms, gib, True)
        if "composite" in bench.cases and switch.get("SANA_WM_FUSED_GDN").enabled:
            with switch.override(SANA_WM_FUSED_GDN=False):  # transitions / read-out as float32 GEMMs
                ms, gib = bench.time(train_step(ours, inp, False), 1)
                bench.record("train21", f"ours+compile ({policy} AC), composite GDN", 1, 21, ms, gib, True)
    ours.zero_grad(set_to_none=True)


def time_train_step_if_it_fits(ours, T: int, reps: int, what: str) -> tuple[float, float] | None:
    """(ms, peak GiB) of our training step on T latent frames (B = 1, one warm-up), or None when it runs out of
    memory (said on stdout as "`what` does not fit"); the gradients and the allocator's cache are freed either way."""
    try:
        return cuda_time(train_step(ours, make_inputs(1, T), False), 1, reps)
    except torch.OutOfMemoryError:
        print(f"{what} does not fit", flush=True)
        return None
    finally:
        ours.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


def run_trainmax(bench: Bench) -> None:
    """trainmax: the longest clip whose training step fits (ours only, full checkpointing)."""
    bench.set_blocks("full", bench.args.compile)
    for T in (41, 61, 81, 121):
        timed = time_train_step_if_it_fits(bench.ours, T, 2, f"trainmax: T={T}")
        if timed is None:
            break
        bench.record("trainmax", "ours" + ("+compile" if bench.args.compile else ""), 1, T, *timed, True)
        bench.results["train_longest_T"] = T


def run_train121(bench: Bench) -> None:
    """train121: the 961-frame training step with every --ac policy that fits (see the module docstring)."""
    args = bench.args
    fits = {}
    for policy in args.ac.split(","):
        bench.set_blocks(policy, args.compile)
        torch.cuda.empty_cache()
        timed = time_train_step_if_it_fits(bench.ours, 121, max(2, min(args.reps, 3)), f"train121: {policy} AC")
        if timed is None:
            continue
        label = policy if args.ac_blocks is None or not args.compile else f"{policy}, first {args.ac_blocks} blocks"
        fits[label] = bench.record("train121", f"ours{'+compile' if args.compile else ''} ({label} AC)", 1, 121,
                                   *timed, True)["ms"]
    if fits:
        best = min(fits, key=fits.get)
        bench.results["train121_fastest"] = dict(policy=best, ms=fits[best])
        print(f"train121: fastest policy that fits: {best} ({fits[best]} ms)", flush=True)


def cp1_pair(model, group, policy: str, compiled: bool, ac_blocks: int | None = None):
    """(plain, cp): `model` (its blocks unwrapped) and a deep copy of it, each given checkpointing `policy` and
    (`compiled`) torch.compile by `parallelize`, the copy then with the CP path forced over the one-rank `group`.
    The copy is taken before any wrapper or compiled method exists (a compiled method would still call the
    original's blocks), and CP is installed before anything runs, so that both models' compiled blocks trace the
    same (process-wide) dispatchers."""
    import copy

    from sana_wm.context_parallel import apply_context_parallel

    cp = copy.deepcopy(model)
    for m in (model, cp):
        parallelize(m, activation_checkpointing=True, ac_policy=policy, ac_blocks=ac_blocks, compile=compiled)
    apply_context_parallel(cp, group, force=True)
    return model, cp


def host_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s parameter gradients copied to the host (so that the device holds one model's at a time), by their
    unwrapped names (`sana_wm.parallel.plain_name`: a checkpointed block's parameters keep the plain model's names)."""
    return {plain_name(n): p.grad.to("cpu") for n, p in model.named_parameters() if p.grad is not None}


def max_rel_diff(a: dict, b: dict) -> float:
    """The largest relative L2 difference between same-named tensors of `a` and `b` (e.g. two models' gradients)."""
    if a.keys() != b.keys():
        raise ValueError(f"different tensor names: {sorted(a.keys() ^ b.keys())[:5]}")
    return max(((b[n].float() - a[n].float()).norm() / a[n].float().norm().clamp_min(1e-30)).item() for n in a)


def cp1_table(results: dict) -> str:
    """The cp1 case's rows as a Markdown table: plain ms, CP-path ms, overhead in %.

    >>> print(cp1_table({"cp1_rows": [{"case": "fwd", "plain_ms": 200.0, "cp_ms": 202.0}]}))
    | case | plain ms | CP path at cp_size 1, ms | overhead |
    |---|---|---|---|
    | fwd | 200.0 | 202.0 | +1.00 % |
    """
    rows = [dict(r, overhead=f"{100 * (r['cp_ms'] / r['plain_ms'] - 1):+.2f} %") for r in results["cp1_rows"]]
    return markdown_table(rows, {"case": "case", "plain_ms": "plain ms", "cp_ms": "CP path at cp_size 1, ms",
                                 "overhead": "overhead"})


def run_cp1(bench: Bench) -> None:
    """cp1: the plain model against a copy with the CP path forced at size 1 (see the module docstring), same
    weights, same process: fwd21 (B=1, eager) and the training step of train21 with the headline's checkpointing
    and compile; the overhead in % and the outputs' and gradients' differences."""
    import socket

    import torch.distributed as dist

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                                device_id=torch.device("cuda", torch.cuda.current_device()))
    args, results = bench.args, bench.results
    compiled = args.compile
    policy = args.ac.split(",")[0] if compiled else "full"
    label = f"{policy} AC" + (", compiled" if compiled else "")
    if compiled and args.ac_blocks is not None:
        label += f", first {args.ac_blocks} blocks"
    set_compiled(bench.ours, bench.plain_blocks, False)
    ours, cp = cp1_pair(bench.ours, dist.group.WORLD, policy, compiled, args.ac_blocks if compiled else None)
    inp = make_inputs(1, 21)
    rows = results["cp1_rows"] = []
    # The forward eagerly, as the earlier cp1 forward rows were measured: compiled methods run as plain Python here
    # (no forward graphs to compile), and checkpointing does nothing without gradients.
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        ours.eval(), cp.eval()
        a, b = ours_fn(ours, inp)().float(), ours_fn(cp, inp)().float()
        results["cp1_fwd21_rel_err"] = ((b - a).norm() / a.norm()).item()
        del a, b
        ms_plain, gib = bench.time(ours_fn(ours, inp))
        bench.record("cp1 fwd21", "ours, eager", 1, 21, ms_plain, gib - resident_gib(cp), False)
        ms_cp, gib = bench.time(ours_fn(cp, inp))
        bench.record("cp1 fwd21", "ours, eager, CP path at cp_size 1", 1, 21, ms_cp, gib - resident_gib(ours), False)
    rows.append(dict(case="fwd21 (B=1), eager", plain_ms=round(ms_plain, 1), cp_ms=round(ms_cp, 1)))
    ours.train(), cp.train()
    warm = 1 if compiled else 0  # the first call compiles
    # The gradients of each model's last timed step (same input) go to the host before the other model's step: the
    # `ffn` step takes ≈ 67 GiB, and the other model's weights plus these gradients would not fit beside it.
    ms_plain, gib = bench.time(train_step(ours, inp, False), warm)
    bench.record("cp1 train21", f"ours ({label})", 1, 21, ms_plain, gib - resident_gib(cp), True)
    plain_grads = host_grads(ours)
    ours.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    ms_cp, gib = bench.time(train_step(cp, inp, False), warm)
    bench.record("cp1 train21", f"ours ({label}), CP path at cp_size 1", 1, 21, ms_cp, gib - resident_gib(ours), True)
    rows.append(dict(case=f"train21 step ({label})", plain_ms=round(ms_plain, 1), cp_ms=round(ms_cp, 1)))
    results["cp1_train21_grad_max_rel"] = max_rel_diff(plain_grads, host_grads(cp))
    cp.zero_grad(set_to_none=True)
    print(f"\ncp1: the CP path at cp_size 1 against the plain model (fwd21 outputs rel err "
          f"{results['cp1_fwd21_rel_err']:.1e}, train21 gradients max rel err "
          f"{results['cp1_train21_grad_max_rel']:.1e})\n{cp1_table(results)}", flush=True)
    bench.dump()
    del cp
    set_compiled(ours, bench.plain_blocks, False)
    torch.cuda.empty_cache()
    dist.destroy_process_group()


def print_table(rows: list[dict]) -> None:
    print("\n| case | impl | B | latent T (frames) | ms | peak GiB | MFU |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['impl']} | {r['B']} | {r['T']} ({r['frames']}) | {r['ms']} | {r['peak_gib']} | "
              f"{100 * r['mfu']:.1f}% |")


def main(argv=None) -> int:
    args = parse_args(argv)
    info = run_info(args)
    # One process compiles the blocks for several shapes, grad modes, policies and kernel switches; past Dynamo's
    # default of 8 graphs per code object the blocks would silently run eagerly and the timings would be wrong.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    bench = Bench(args, *build_models(with_port=not args.no_port), info)
    run_eager_forward(bench)
    if args.compile:
        run_compiled_forward(bench)
    if "profile" in bench.cases:
        bench.results["profile_fwd21_ms"] = profile_breakdown(bench.ours, make_inputs(2, 21))
        print("profile fwd21 (device ms):", json.dumps(bench.results["profile_fwd21_ms"]), flush=True)
    if any(c in bench.cases for c in ("train21", "trainmax", "train121")):
        bench.ours.train()
        if bench.port is not None:
            bench.port.train()
            bench.port.enable_gradient_checkpointing()
    if "train21" in bench.cases:
        run_train21(bench)
    if "cp1" in bench.cases:
        run_cp1(bench)
    bench.drop_port()  # trainmax probes the longest clip that fits: the port's memory back first
    if "train121" in bench.cases:
        run_train121(bench)
    if "trainmax" in bench.cases:
        run_trainmax(bench)
    bench.dump()
    print_table(bench.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
